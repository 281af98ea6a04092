"""Records of one set that repeat records of another: a pool record asking a target record's
question (a leak when the target set is what the model is evaluated on), or one already in the
existing data of continual tuning.

Texts are compared with their whitespace normalised (``" ".join(text.split())``): a copy that
differs in a trailing newline or double space is still a copy. A prompt is its text with the
conversation before it (the earlier user, assistant and tool turns; system turns are left out, so
a copy under another system prompt, or an Alpaca record against its chat form, still matches),
so a generic last turn ("Continue.") of two different conversations is not a repeat.

Near repeats (:func:`near_repeats_of`) are prompts that share most of their wording with one prompt
of the other set: the same question with a number changed, a sentence added or punctuation and
case respelled. Prompts are compared as sets of word n-grams (words: runs of letters and digits,
case folded; n = 8; GPT-3 decontaminated with 13-grams): two prompts are near when at least half
of the smaller set's n-grams are in the other, counted exactly. The other set's prompts are kept
as bottom-256 MinHash sketches (exact up to 263 words) that find the candidates; a longer prompt
is then checked on its full n-grams, recomputed from its text, and a record's own n-grams are
always whole, so a long prompt that contains a short target question whole (a few-shot prompt
ending with it) is near. N-grams are hashed stably (CRC-32 per word), the same on every run. An n-gram in more than half of the
other set's prompts (at least 3 of them; more than 64 in a set of 128 or more) is a shared
template and counts for neither. A prompt shorter than n words is one n-gram, its whole word
sequence. A question reworded throughout (a paraphrase) is not caught.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .records import Record

__all__ = ["NGRAM", "near_repeats_of", "repeats_of"]

NGRAM = 8  # words per n-gram of near_repeats_of
COMMON = 64  # an n-gram in more prompts of a large other set than this is boilerplate, not evidence
SKETCH = 256  # n-grams kept a prompt (the smallest hashes): bounded memory, exact up to 263 words
RECHECK_MEMO = 64  # long prompts of the other set whose full n-grams are kept for the next records


def _norm(text: str) -> str:
    return " ".join(text.split())


def _prompt_key(r: Record) -> tuple:
    """The prompt with the conversation before it, system turns left out, whitespace normalised."""
    return (_norm(r.prompt), tuple((role, _norm(text)) for role, text in r.context if role != "system"))


def repeats_of(records: Sequence[Record], others: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """``(same_prompt, same_example)``, two (n,) bool masks over ``records``: the record's prompt
    (with the turns before it) equals that of some record of ``others``; and its response equals
    that record's response too (so ``same_example`` implies ``same_prompt``). Records with a read defect
    (``Record.error``) are never marked. O(n + m) with hashing."""
    prompts: dict[tuple, set[str]] = {}
    for o in others:
        if o.error is None:
            prompts.setdefault(_prompt_key(o), set()).add(_norm(o.response))
    same_prompt = np.zeros(len(records), dtype=bool)
    same_example = np.zeros(len(records), dtype=bool)
    for i, r in enumerate(records):
        responses = prompts.get(_prompt_key(r)) if r.error is None else None
        if responses is not None:
            same_prompt[i] = True
            same_example[i] = _norm(r.response) in responses
    return same_prompt, same_example


def _words(r: Record) -> list[str]:
    """The prompt's words with the non-system turns before it, case folded: runs of letters and digits."""
    text = " ".join([t for role, t in r.context if role != "system"] + [r.prompt])
    return re.findall(r"[^\W_]+", text.casefold())


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the n-gram hash


def _grams(words: list[str], n: int) -> np.ndarray:
    """The prompt's distinct word n-grams as sorted 64-bit hashes (uint64). A prompt shorter than
    n words is one n-gram, its whole word sequence. Stable across processes and machines (each
    word's CRC-32, combined as a polynomial over the window), so counts and warnings do not change
    from run to run."""
    if not words:
        return np.zeros(0, dtype=np.uint64)
    ids = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words))
    width = min(n, len(words))
    h = np.zeros(len(words) - width + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64
        for j in range(width):
            h = h * _MIX + ids[j:j + len(h)] + np.uint64(1)
        if width < n:  # a whole short prompt: marked apart from any window of n words
            h = h * _MIX + np.uint64(width)
    return np.unique(h)


def _sketch(words: list[str], n: int) -> np.ndarray:
    """A bottom-``SKETCH`` MinHash sketch of the prompt's n-grams (:func:`_grams`): their
    ``SKETCH`` smallest hashes (sorted), so memory is bounded per prompt whatever its length."""
    return _grams(words, n)[:SKETCH].copy()


def template_limit(m: int) -> int:
    """An n-gram in more than this many of ``m`` prompts is a shared template: more than half of
    them (so a small target set's common header is one), at least 3 prompts, at most ``COMMON``
    (a large set's boilerplate need not fill half of it)."""
    return min(COMMON, max(2, m // 2))


def near_repeats_of(records: Sequence[Record], others: Sequence[Record], *, n: int = NGRAM,
                    share: float = 0.5) -> np.ndarray:
    """(len(records),) bool: the record's prompt (with the non-system turns before it) is near one
    prompt of ``others``: with A the record's word n-grams and B the other prompt's,
    ``|A & B| >= share * min(|A|, |B|)``, counted exactly. The other set is held as bottom-``SKETCH``
    sketches (exact up to 263 words) to find candidates: a prompt B sharing a sketched n-gram with
    A. A long B (sketched) is then checked on its full n-grams, recomputed from its text (the last
    ``RECHECK_MEMO`` kept), so a long prompt that contains a short one whole is near and a chance
    hit is not. Exact repeats (:func:`repeats_of`) are near too. An n-gram in more than
    :func:`template_limit` prompts of ``others`` (in their sketches) is a shared template, not
    evidence of a copy: left out of the overlap and of the sizes, so a near copy inside a shared
    few-shot header is still found. Records with a read defect (``Record.error``) are never
    marked. Memory: 12 bytes per sketched n-gram of ``others`` (at most ``SKETCH`` a prompt), one
    record's n-grams and a few long prompts' at a time.

    Misses: a short A (under a dozen n-grams) inside a long B whose sketch holds none of A's
    n-grams (each of A's is in B's sketch with probability about ``SKETCH / |B|``)."""
    near = np.zeros(len(records), dtype=bool)
    sk = [_sketch(_words(o), n) if o.error is None else np.zeros(0, dtype=np.uint64) for o in others]
    if not records or not any(len(x) for x in sk):
        return near
    hashes = np.concatenate(sk)
    owner = np.repeat(np.arange(len(sk), dtype=np.int32), [len(x) for x in sk])
    keys, counts = np.unique(hashes, return_counts=True)
    common = keys[counts > template_limit(sum(len(x) > 0 for x in sk))]
    keep = ~np.isin(hashes, common)
    hashes, owner = hashes[keep], owner[keep]
    sized = np.bincount(owner, minlength=len(sk))  # sketched n-grams beyond the shared ones
    sketched = np.array([len(x) == SKETCH for x in sk])  # possibly cut: checked on the full text
    del sk
    order = np.argsort(hashes, kind="stable")
    hashes, owner = hashes[order], owner[order]
    full: OrderedDict[int, np.ndarray] = OrderedDict()

    def full_grams(c: int) -> np.ndarray:  # a long prompt's n-grams beyond the template, recomputed
        got = full.get(c)
        if got is None:
            g = _grams(_words(others[c]), n)
            got = full[c] = g[~np.isin(g, common)]
            if len(full) > RECHECK_MEMO:
                full.popitem(last=False)
        else:
            full.move_to_end(c)
        return got

    for i, r in enumerate(records):
        if r.error is not None:
            continue
        mine = _grams(_words(r), n)
        mine = mine[~np.isin(mine, common)]
        if not len(mine):
            continue
        lo, hi = np.searchsorted(hashes, mine, "left"), np.searchsorted(hashes, mine, "right")
        if not (hi > lo).any():
            continue
        who = np.concatenate([owner[a:b] for a, b in zip(lo, hi) if b > a])
        hits = np.bincount(who, minlength=len(sized))
        for c in np.flatnonzero(hits):
            if not sketched[c]:
                found = hits[c] >= share * min(len(mine), sized[c])
            else:
                theirs = full_grams(int(c))
                found = len(np.intersect1d(mine, theirs, assume_unique=True)) >= share * min(len(mine), len(theirs))
            if found:
                near[i] = True
                break
    return near
