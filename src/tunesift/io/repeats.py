"""Records of one set that repeat records of another: a pool record asking a target record's
question (a leak when the target set is what the model is evaluated on), or one already in the
existing data of continual tuning.

Texts are compared with their whitespace normalised (``" ".join(text.split())``): a copy that
differs in a trailing newline or double space is still a copy. A prompt is its text with the
conversation before it (the earlier user, assistant and tool turns; system turns are left out, so
a copy under another system prompt, or an Alpaca record against its chat form, still matches),
so a generic last turn ("Continue.") of two different conversations is not a repeat.
Near-duplicates (a reworded question) are not caught.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .records import Record

__all__ = ["repeats_of"]


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
