"""Records of one set that repeat records of another: a pool record asking a target record's
question (a leak when the target set is what the model is evaluated on), or one already in the
existing data of continual tuning.

Texts are compared with their whitespace normalised (``" ".join(text.split())``): a copy that
differs in a trailing newline or double space is still a copy. Near-duplicates (a reworded
question) are not caught.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .records import Record

__all__ = ["repeats_of"]


def _norm(text: str) -> str:
    return " ".join(text.split())


def repeats_of(records: Sequence[Record], others: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """``(same_prompt, same_example)``, two (n,) bool masks over ``records``: the record's prompt
    equals the prompt of some record of ``others``; and its response equals that record's response
    too (so ``same_example`` implies ``same_prompt``). Records with a read defect
    (``Record.error``) are never marked. O(n + m) with hashing."""
    prompts: dict[str, set[str]] = {}
    for o in others:
        if o.error is None:
            prompts.setdefault(_norm(o.prompt), set()).add(_norm(o.response))
    same_prompt = np.zeros(len(records), dtype=bool)
    same_example = np.zeros(len(records), dtype=bool)
    for i, r in enumerate(records):
        responses = prompts.get(_norm(r.prompt)) if r.error is None else None
        if responses is not None:
            same_prompt[i] = True
            same_example[i] = _norm(r.response) in responses
    return same_prompt, same_example
