"""Partitioned greedy (GreeDi) against the full greedy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tunesift.errors import OptionError
from tunesift.scoring.embedding import cosine_similarity_kernel, knn_pattern
from tunesift.selection.partitioned import (
    PartitionedResult,
    _assign,
    _gains_along,
    fl_value,
    fl_value_blocked,
    partitioned_facility_location,
)
from tunesift.selection.submodular import GreedyResult, facility_location


def clustered(n: int, d: int = 16, centres: int = 25, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.7 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


E = clustered(1200)
K = cosine_similarity_kernel(E, E)  # (1200, 1200) float32: small enough for the full greedy


def check_valid(res: PartitionedResult, n: int, k: int) -> None:
    assert isinstance(res, GreedyResult)
    assert res.order.dtype == np.int64 and res.gains.dtype == np.float64
    assert len(res.order) == k and len(np.unique(res.order)) == k
    assert res.order.min() >= 0 and res.order.max() < n
    assert np.isin(res.order, res.union).all()
    assert res.objective == pytest.approx(res.gains.sum(), rel=1e-9)


def test_one_partition_is_the_full_greedy():
    full = facility_location(K, 60)
    for data in (E, lambda r, c: K[np.ix_(r, c)]):
        res = partitioned_facility_location(data, 60, partitions=1, n=1200)
        np.testing.assert_array_equal(res.order, full.order)
        np.testing.assert_array_equal(res.gains, full.gains)
        assert res.objective == full.objective and res.winner == 0


@pytest.mark.parametrize("m", [2, 4, 8])
def test_close_to_the_full_greedy(m):
    k = 60
    full = facility_location(K, k)
    res = partitioned_facility_location(E, k, partitions=m, seed=1)
    check_valid(res, 1200, k)
    assert len(res.union) <= m * k
    # objective on the whole pool: measured ratios are > 0.99 here; the guarantee is far lower
    assert fl_value(K, res.order) >= 0.97 * full.objective
    # float32 kernels from matrix products of other shapes: equal up to rounding, not bit for bit
    assert fl_value_blocked(E, res.order, block_rows=257) == pytest.approx(
        fl_value(K, res.order), rel=1e-5
    )
    # the reported objective is f on the union's records
    KU = K[np.ix_(res.union, res.union)]
    assert res.objective == pytest.approx(fl_value(KU, np.searchsorted(res.union, res.order)), rel=1e-5)
    assert res.objective >= res.part_objectives.max() - 1e-9
    assert res.final_objective <= res.objective + 1e-9


def test_kernel_fn_never_builds_the_full_kernel():
    shapes = []

    def kernel_fn(rows, cols):
        # computed as the embeddings path does (a part's own product, not a slice of the pool's
        # K): then the picks below must be identical on any CPU, not just up to float ties
        shapes.append((len(rows), len(cols)))
        sub = E[rows]
        return cosine_similarity_kernel(sub, sub if cols is rows else E[cols])

    res = partitioned_facility_location(kernel_fn, 40, partitions=4, n=1200, local_budget=50)
    check_valid(res, 1200, 40)
    assert max(max(s) for s in shapes) <= 300 and len(shapes) == 5
    # same kernel from the embeddings: the same answer
    same = partitioned_facility_location(E, 40, partitions=4, local_budget=50)
    np.testing.assert_array_equal(same.order, res.order)
    np.testing.assert_array_equal(same.parts, res.parts)


def test_deterministic_under_a_seed():
    a = partitioned_facility_location(E, 50, partitions=3, seed=7)
    b = partitioned_facility_location(E.copy(), 50, partitions=3, seed=7)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.gains, b.gains)
    c = partitioned_facility_location(E, 50, partitions=3, seed=8)
    assert not np.array_equal(a.parts, c.parts)
    sizes = np.bincount(a.parts)
    assert sizes.tolist() == [400, 400, 400]


def test_knn_kernels_inside_parts():
    k = 50
    Ks = cosine_similarity_kernel(E, E, knn_pattern(E, E, 10))  # the global sparse kernel
    full = facility_location(Ks, k)
    res = partitioned_facility_location(
        E, k, partitions=4, knn=10, ann_method="exact", weighted=True
    )
    check_valid(res, 1200, k)
    # kNN graphs inside parts of n/m records differ from the pool's: a weaker approximation
    # (measured 0.82 here, 0.73 unweighted; see docs/scaling.md)
    assert fl_value(Ks, res.order) >= 0.75 * full.objective
    assert fl_value(Ks, full.order) == pytest.approx(full.objective)


def test_weighted_union():
    k = 40
    full = facility_location(K, k)
    res = partitioned_facility_location(E, k, partitions=4, weighted=True, local_budget=30)
    check_valid(res, 1200, k)
    assert len(res.union) == 120
    assert fl_value(K, res.order) >= 0.97 * full.objective
    # the weighted union objective estimates the pool's objective (up to the parts' error)
    assert res.objective == pytest.approx(fl_value(K, res.order), rel=0.1)
    # every record of a part is assigned to its most similar pick (lowest position on ties)
    S = np.array([[0.9, 0.1, 0.9], [0.0, 0.0, 0.0], [0.2, 0.7, 0.1]], dtype=np.float32)
    np.testing.assert_array_equal(_assign(S, np.array([2, 0, 1])), [0, -1, 2])
    np.testing.assert_array_equal(_assign(sp.csr_matrix(S), np.array([2, 0, 1])), [0, -1, 2])


def test_helpers_agree_with_the_greedy():
    full = facility_location(K[:300, :300], 20)
    np.testing.assert_allclose(_gains_along(K[:300, :300], full.order), full.gains, rtol=1e-9)
    Ks = sp.csr_matrix(np.where(K[:300, :300] > 0.8, K[:300, :300], 0))
    fs = facility_location(Ks, 20)
    np.testing.assert_allclose(_gains_along(Ks, fs.order), fs.gains, rtol=1e-9)
    assert fl_value(Ks, fs.order) == pytest.approx(fs.objective)
    assert fl_value(K, []) == 0.0


def test_bad_options():
    with pytest.raises(OptionError, match="n .the pool size"):
        partitioned_facility_location(lambda r, c: K[np.ix_(r, c)], 5, partitions=2)
    with pytest.raises(OptionError, match="budget"):
        partitioned_facility_location(E, 1201, partitions=2)
    with pytest.raises(OptionError, match="partitions"):
        partitioned_facility_location(E, 5, partitions=0)
    with pytest.raises(OptionError, match="union"):
        partitioned_facility_location(E, 100, partitions=4, local_budget=20)
    with pytest.raises(OptionError, match="union of 1 parts x local_budget 2 holds fewer than budget 12"):
        partitioned_facility_location(E, 12, partitions=1, local_budget=2)  # was ignored: 12 picks
    with pytest.raises(OptionError, match="knn"):
        partitioned_facility_location(lambda r, c: K[np.ix_(r, c)], 5, partitions=2, n=1200, knn=5)
    with pytest.raises(OptionError, match="does not match"):
        partitioned_facility_location(E, 5, partitions=2, n=10)


def test_a_round_one_set_wins_when_round_two_is_worse(monkeypatch):
    import tunesift.selection.partitioned as part

    calls = []

    def spoiled(S, budget, **kw):  # round 2 (the 4th call) picks the last columns instead
        calls.append(S.shape)
        if len(calls) == 4:
            order = np.arange(S.shape[1] - budget, S.shape[1], dtype=np.int64)
            gains = _gains_along(S, order)
            return GreedyResult(order=order, gains=gains, objective=float(gains.sum()))
        return facility_location(S, budget, **kw)

    monkeypatch.setattr(part, "facility_location", spoiled)
    res = part.partitioned_facility_location(E, 30, partitions=3, seed=2)
    check_valid(res, 1200, 30)
    assert res.winner >= 0 and res.objective == res.part_objectives.max() > res.final_objective
    np.testing.assert_array_equal(
        np.sort(res.order), np.sort(res.order[res.parts[res.order] == res.winner])
    )
    # a smaller local budget: round-1 sets of fewer than k picks never compete
    calls.clear()
    res = part.partitioned_facility_location(E, 30, partitions=3, local_budget=20, seed=2)
    assert res.winner == -1 and len(res.order) == 30


def test_greedi_limits_are_checked_before_anything_is_embedded(monkeypatch):
    """--partitions beyond the records (error rows can shrink the pool) or parts whose local picks
    cannot hold the budget were refused only after the whole pool was embedded."""
    import tunesift
    from tunesift.errors import OptionError
    from tunesift.scoring import embedding

    monkeypatch.setattr(embedding, "embed_records", lambda *a, **k: pytest.fail("embedded before the check"))
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]
    with pytest.raises(OptionError, match="partitions must be between 1 and 6, got 8"):
        tunesift.select(rows, method="delift-se", budget=2, partitions=8)
    with pytest.raises(OptionError, match="the union of 3 parts x local_budget 1 holds fewer than budget 4"):
        tunesift.select(rows, method="delift-se", budget=4, partitions=3, local_budget=1)


def test_the_weighted_merge_round_holds_one_union_kernel(monkeypatch):
    """The weights were applied to a copy: two |U| x |U| kernels at once, twice the documented peak."""
    import tracemalloc

    import tunesift.selection.partitioned as part

    monkeypatch.setattr(part, "_GATHER_BYTES", 1 << 20)  # f's row chunks: small beside the kernel
    X = np.random.default_rng(3).standard_normal((2000, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        res = partitioned_facility_location(X, 1000, partitions=2, weighted=True, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    kernel = 4 * len(res.union) ** 2  # the union is the whole pool here: 16 MB
    assert len(res.union) == 2000 and peak < 1.4 * kernel, peak / kernel
    # a user's kernel_fn keeps its own array as it was: scaled on a copy
    K2 = cosine_similarity_kernel(X[:300], X[:300])
    before = K2.copy()
    partitioned_facility_location(lambda r, c: K2 if len(r) == 300 else K2[np.ix_(r, c)], 100, partitions=2,
                                  n=300, weighted=True, local_budget=150)
    np.testing.assert_array_equal(K2, before)
