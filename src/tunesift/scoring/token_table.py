"""Token id lists of many records in one flat int32 array.

A Python list of token ids costs about 36 bytes a token (an 8-byte pointer and a 28-byte int
object). The DELIFT kernel holds every record twice (as a target and as an example prefix), so
100,000 records of 300 tokens came to over 2 GB, growing with the pool even when a learned run
scores only a few hundred rows. Here a token costs 4 bytes; items are rebuilt on access.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .logprobs import Continuation


class TokenLists(Sequence):
    """``t[i]`` -> list[int], the i-th of ``lists``; stored as ``flat`` (total tokens,) int32 and
    ``offsets`` (n + 1,) int64."""

    def __init__(self, lists: Iterable[Sequence[int]]):
        parts = []
        for ids in lists:
            a = np.asarray(ids, dtype=np.int64)
            if len(a) and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
                raise ValueError("token ids must fit int32")
            parts.append(a.astype(np.int32))
        self.offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=self.offsets[1:])
        self.flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        self._lengths = np.diff(self.offsets)
        self._lengths.flags.writeable = False

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def array(self, i: int) -> np.ndarray:
        """Item ``i`` as an int32 view (no copy)."""
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def arrays(self) -> Iterator[np.ndarray]:
        return (self.array(i) for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        """(n,) tokens per item (read-only)."""
        return self._lengths

    def _item(self, i: int):
        return self.array(i).tolist()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._item(k) for k in range(*i.indices(len(self)))]
        return self._item(int(i))

    def __iter__(self):
        return (self._item(i) for i in range(len(self)))


class ContinuationTable(TokenLists):
    """``t[i]`` -> :class:`Continuation` built from ``items`` ``(ids, n_response)``."""

    def __init__(self, items: Iterable[tuple[Sequence[int], int]]):
        n_response: list[int] = []

        def ids():
            for seq, n in items:
                n_response.append(int(n))
                yield seq

        super().__init__(ids())
        self.n_response = np.array(n_response, dtype=np.int64)  # (n,)

    def _item(self, i: int) -> Continuation:
        return Continuation(tuple(self.array(i).tolist()), int(self.n_response[i]))
