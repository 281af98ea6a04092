"""Approximate kNN patterns (faiss IVF / HNSW) against the exact blocked kNN."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import tiny

from tunesift.errors import OptionError, TunesiftError
from tunesift.scoring import embedding as emb


@pytest.fixture
def faiss():
    return pytest.importorskip("faiss")


def clustered(n: int, d: int = 32, centres: int = 30, spread: float = 0.6, seed: int = 0):
    """(n, d) float32 unit rows drawn around random centres."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(approx: sp.csr_matrix, exact: sp.csr_matrix) -> float:
    return approx.multiply(exact).nnz / exact.nnz


def check_format(p: sp.csr_matrix, n_a: int, n_b: int, k: int) -> None:
    assert p.shape == (n_a, n_b) and p.dtype == bool and p.has_sorted_indices
    assert (np.diff(p.indptr) == k).all()
    for i in range(0, n_a, max(1, n_a // 17)):  # distinct columns per row
        row = p.indices[p.indptr[i] : p.indptr[i + 1]]
        assert len(np.unique(row)) == len(row)


def test_ivf_recall_self_and_exclude_self(faiss):
    x = clustered(3000)
    exact = emb.knn_pattern(x, x, 10)
    # 64 lists, 6 scanned per query (~9% of the pool): a genuine approximation
    ivf = emb.ann_knn_pattern(x, x, 10, method="ivf", nlist=64, nprobe=6)
    check_format(ivf, 3000, 3000, 10)
    assert recall(ivf, exact) >= 0.9
    assert ivf.diagonal().all()  # each record finds itself (its own list is always scanned)

    ex = emb.knn_pattern(x, x, 10, exclude_self=True)
    ivf_ex = emb.ann_knn_pattern(x, x, 10, exclude_self=True, method="ivf", nlist=64, nprobe=6)
    check_format(ivf_ex, 3000, 3000, 10)
    assert not ivf_ex.diagonal().any()
    assert recall(ivf_ex, ex) >= 0.9


def test_the_list_scan_returns_each_row_most_similar_first(faiss):
    """_drop_self drops a row's last entry when the row did not find itself: the weakest only if
    the rows are sorted (they came in argpartition order)."""
    x = clustered(600, seed=4)
    index = emb._ivf_trained(faiss, x, 12, 3, None, 0)
    got = emb._ivf_scan(index.quantizer, x, x, index.nlist, index.nprobe, 9)
    sims = np.einsum("id,ijd->ij", x, x[got])
    assert (got >= 0).all() and (np.diff(sims, axis=1) <= 1e-6).all()
    # a row that did not find itself loses its least similar neighbour
    row = np.array([[5, 9, 2]])
    np.testing.assert_array_equal(emb._drop_self(row, 0), [[5, 9]])


def test_cross_pattern_and_hnsw(faiss):
    a, b = clustered(400, seed=1), clustered(2500, seed=2)
    exact = emb.knn_pattern(a, b, 8)
    ivf = emb.ann_knn_pattern(a, b, 8, method="ivf", nlist=50, nprobe=5)
    check_format(ivf, 400, 2500, 8)
    assert recall(ivf, exact) >= 0.9
    hnsw = emb.ann_knn_pattern(a, b, 8, method="hnsw", hnsw_m=16)
    check_format(hnsw, 400, 2500, 8)
    assert recall(hnsw, exact) >= 0.9


def test_list_major_scan_finds_faiss_candidates(faiss):
    # "ivf" scans the same lists as faiss's IndexIVFFlat.search, list by list with BLAS
    x = clustered(2500, seed=8)
    for exclude_self in (False, True):
        ours = emb.ann_knn_pattern(
            x, x, 9, exclude_self=exclude_self, method="ivf", nlist=40, nprobe=4
        )
        ref = emb.ann_knn_pattern(
            x, x, 9, exclude_self=exclude_self, method="ivf-faiss", nlist=40, nprobe=4
        )
        check_format(ours, 2500, 2500, 9)
        assert ours.multiply(ref).nnz >= 0.999 * ref.nnz  # equal up to float ties
    # lists smaller than k: rows hold what their probed lists contain (-1 = none, skipped)
    small = emb.ann_knn_pattern(x[:200], x[:200], 60, method="ivf", nlist=5, nprobe=1)
    sizes = np.diff(small.indptr)
    assert sizes.max() <= 60 and sizes.min() < 60 and small.diagonal().all()
    assert small.has_sorted_indices and small.dtype == bool


def test_deterministic_for_a_seed(faiss):
    x = clustered(2000, seed=3)
    p1 = emb.ann_knn_pattern(x, x, 6, method="ivf", nlist=40, nprobe=3, seed=5)
    p2 = emb.ann_knn_pattern(x.copy(), x.copy(), 6, method="ivf", nlist=40, nprobe=3, seed=5)
    assert (p1 != p2).nnz == 0


def test_default_parameters_and_caps(faiss):
    assert emb.default_ivf_params(1_000_000) == (4000, 32)
    assert emb.default_ivf_params(1000) == (25, 25)  # 39 training points per list
    assert emb.default_ivf_params(10) == (1, 1)
    x = clustered(300, seed=4)
    # default nlist/nprobe, k capped at the columns available (one list: exact)
    p = emb.ann_knn_pattern(x[:5], x[:5], 50, method="ivf")
    assert (p.toarray() == np.ones((5, 5), bool)).all()
    p = emb.ann_knn_pattern(x[:5], x[:5], 50, method="ivf", exclude_self=True)
    assert (p.toarray() == ~np.eye(5, dtype=bool)).all()
    assert emb.ann_knn_pattern(x, x, 0, method="ivf").nnz == 0
    # train_size below nlist, unknown method, negative k
    with pytest.raises(OptionError, match="train_size"):
        emb.ann_knn_pattern(x, x, 3, method="ivf", nlist=5, train_size=2)
    with pytest.raises(OptionError, match="method"):
        emb.ann_knn_pattern(x, x, 3, method="annoy")
    with pytest.raises(OptionError, match="k must be"):
        emb.ann_knn_pattern(x, x, -1, method="ivf")


def test_exact_and_auto_are_knn_pattern():
    x = clustered(500, seed=6)
    ref = emb.knn_pattern(x, x, 7, exclude_self=True)
    for method in ("exact", "auto"):  # 500 x 500 is far below AUTO_EXACT_MAX_PAIRS
        p = emb.ann_knn_pattern(x, x, 7, exclude_self=True, method=method)
        assert (p != ref).nnz == 0


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    x = clustered(50)
    with pytest.raises(TunesiftError, match=r"tunesift\[scale\]"):
        emb.ann_knn_pattern(x, x, 3, method="ivf")
    # the exact path never needs faiss
    assert emb.ann_knn_pattern(x, x, 3, method="auto").nnz == 150


def test_pattern_csr_skips_missing_neighbours():
    cols = np.array([[3, -1, 0], [2, 1, 4], [-1, -1, -1]], dtype=np.int64)
    p = emb._pattern_csr(cols, 5)
    assert p.dtype == bool and p.has_sorted_indices
    np.testing.assert_array_equal(p.indptr, [0, 2, 5, 5])
    np.testing.assert_array_equal(p.indices, [0, 3, 1, 2, 4])


def test_sparse_cosine_kernel_is_blocked_and_unchanged(monkeypatch):
    x = clustered(300, d=16, seed=7)
    pattern = emb.knn_pattern(x, x, 9)
    whole = emb.cosine_similarity_kernel(x, x, pattern)
    monkeypatch.setattr(emb, "_BLOCK_ELEMS", 16 * 7)  # 7 entries per block
    blocked = emb.cosine_similarity_kernel(x, x, pattern)
    # the same entries in the same places; the values up to float32 rounding (other block shapes)
    assert blocked.dtype == np.float32
    np.testing.assert_array_equal(blocked.indptr, whole.indptr)
    np.testing.assert_array_equal(blocked.indices, whole.indices)
    tiny.assert_close_across_runs(blocked.data, whole.data)
    dense = emb.cosine_similarity_kernel(x, x)
    tiny.assert_close_across_runs(blocked.toarray()[pattern.toarray()], dense[pattern.toarray()])
