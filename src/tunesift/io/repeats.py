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
case folded; n = 8; GPT-3 decontaminated with 13-grams): two prompts are near when at least half of the smaller set's n-grams are in the other. A prompt shorter than n words is
one n-gram, its whole word sequence. A question reworded throughout (a paraphrase) is not caught.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .records import Record

__all__ = ["NGRAM", "near_repeats_of", "repeats_of"]

NGRAM = 8  # words per n-gram of near_repeats_of
COMMON = 64  # an n-gram in more prompts of the other set than this is boilerplate, not evidence


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


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """The word n-grams of a prompt; one n-gram (the whole sequence) when it has fewer than n words."""
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def near_repeats_of(records: Sequence[Record], others: Sequence[Record], *, n: int = NGRAM,
                    share: float = 0.5) -> np.ndarray:
    """(len(records),) bool: the record's prompt (with the non-system turns before it) is near one
    prompt of ``others``: with A, B their word n-gram sets, ``|A & B| >= share * min(|A|, |B|)``.
    Exact repeats (:func:`repeats_of`) are near too. N-grams found in more than ``COMMON`` prompts
    of ``others`` are left out of the overlap (a shared template is not a copy) but count in the
    sizes. Records with a read defect (``Record.error``) are never marked. O(total n-grams) with
    hashing, times at most ``COMMON`` prompts an n-gram."""
    postings: dict[tuple[str, ...], list[int]] = {}
    sizes: list[int] = []
    for j, o in enumerate(others):
        grams = _ngrams(_words(o), n) if o.error is None else set()
        sizes.append(len(grams))
        for g in grams:
            postings.setdefault(g, []).append(j)
    near = np.zeros(len(records), dtype=bool)
    for i, r in enumerate(records):
        grams = _ngrams(_words(r), n) if r.error is None else set()
        hits: Counter[int] = Counter()
        for g in grams:
            js = postings.get(g)
            if js is not None and len(js) <= COMMON:
                hits.update(js)
        near[i] = any(c >= share * min(len(grams), sizes[j]) for j, c in hits.items())
    return near
