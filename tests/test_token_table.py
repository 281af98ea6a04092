"""Compact token tables: the same items as the lists they replace, at 4 bytes a token."""

from __future__ import annotations

import numpy as np
import pytest

from tunesift.scoring.kernel_job import ids_digest
from tunesift.scoring.logprobs import Continuation
from tunesift.scoring.token_table import ContinuationTable, TokenLists

LISTS = [[5, 9, 2], [], [49151, 0, 7, 7], [1]]


def test_items_slices_and_iteration_equal_the_lists():
    t = TokenLists(iter(LISTS))  # a generator is read once, one item at a time
    assert len(t) == 4
    assert [t[i] for i in range(4)] == LISTS and list(t) == LISTS
    assert t[-1] == [1] and t[1:3] == LISTS[1:3] and t[::-2] == LISTS[::-2]
    assert all(type(x) is int for x in t[2])  # plain ints, as the tokenizer gives
    np.testing.assert_array_equal(t.lengths(), [3, 0, 4, 1])
    assert t.flat.dtype == np.int32 and t.flat.nbytes == 4 * 8
    with pytest.raises(IndexError):
        t[4]
    with pytest.raises(ValueError):
        t.lengths()[0] = 9  # read-only: the kernel plans with it


def test_ids_out_of_int32_range_are_refused():
    with pytest.raises(ValueError, match="int32"):
        TokenLists([[2**31]])
    with pytest.raises(ValueError, match="int32"):
        TokenLists([[-1]])


def test_digest_equals_the_lists_digest():
    # the kernel cache key is built from these digests: caches written before stay valid
    t = TokenLists(LISTS)
    assert ids_digest(t.arrays()) == ids_digest(LISTS)
    assert ids_digest(TokenLists([[1, 2], [3]]).arrays()) != ids_digest(TokenLists([[1], [2, 3]]).arrays())


def test_continuation_table_items():
    c = ContinuationTable((ids, n) for ids, n in zip(LISTS, [2, 0, 4, 1], strict=True))
    assert c[0] == Continuation((5, 9, 2), 2) and c[2].n_response == 4 and c[2].n_prompt == 0
    assert [x.ids for x in c] == [tuple(x) for x in LISTS]
    np.testing.assert_array_equal(c.n_response, [2, 0, 4, 1])
    assert len(ContinuationTable([])) == 0 and TokenLists([]).flat.size == 0
