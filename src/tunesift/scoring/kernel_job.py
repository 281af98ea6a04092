"""The DELIFT kernel's problem set-up, shared by the fast and the reference scorer.

A :class:`KernelJob` holds what every piece of a kernel depends on besides the model: the targets'
continuations and the examples' prefixes as compact token tables, the canonical pair pattern, the
diagonal rule and ``max_length``. :func:`cache_key` names its cache folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError
from ..render import fit_example
from ..store import content_key
from .token_table import ContinuationTable, TokenLists

CACHE_KIND = "delift-utility"
CACHE_VERSION = 1


@dataclass
class KernelJob:
    """Everything a kernel piece depends on besides the model: ``n_t`` targets x ``n_e`` examples."""

    header: list[int]
    conts: ContinuationTable  # one per target: prompt_i user_end | response_i end
    prefixes: TokenLists  # one per example: header | example body (before fitting)
    pattern: sp.csc_matrix | None  # canonical boolean pattern, CSC (columns = examples)
    csr_perm: np.ndarray | None  # CSC entry order -> CSR entry order
    csr: sp.csr_matrix | None
    diag: bool  # pairs (i, i) are excluded (NaN)
    max_length: int
    # the no-example arm when its target tokens differ from ``conts`` (renderer.per_arm), else None
    base_header: list[int] | None = None
    base_conts: ContinuationTable | None = None

    @property
    def zero_shot(self) -> tuple[list[int], ContinuationTable]:
        """(header, continuations) of the no-example arm."""
        if self.base_conts is None:
            return self.header, self.conts
        return self.base_header, self.base_conts

    @property
    def n_t(self) -> int:
        return len(self.conts)

    @property
    def n_e(self) -> int:
        return len(self.prefixes)

    def column_rows(self, j: int) -> np.ndarray:
        """All target rows of column j in storage order (the diagonal included)."""
        if self.pattern is None:
            return np.arange(self.n_t)
        return self.pattern.indices[self.pattern.indptr[j] : self.pattern.indptr[j + 1]]

    def n_pairs(self) -> int:
        """Pairs the kernel scores (its pattern, less the excluded diagonal)."""
        return int(self._pairs_before[-1])

    def span_pairs(self, c0: int, c1: int) -> int:
        """Pairs columns ``c0:c1`` score (their pattern rows, less the excluded diagonal)."""
        return int(self._pairs_before[c1] - self._pairs_before[c0])

    @cached_property
    def _pairs_before(self) -> np.ndarray:
        """(n_e + 1,) int64: pairs scored by columns ``0..j-1``."""
        if self.pattern is None:
            per = np.full(self.n_e, self.n_t, dtype=np.int64)
            if self.diag:
                per[: min(self.n_t, self.n_e)] -= 1
        else:
            per = np.diff(self.pattern.indptr).astype(np.int64)
            if self.diag:  # entries (j, j): row index == column index
                cols = np.repeat(np.arange(self.n_e), per)
                per -= np.bincount(cols[self.pattern.indices == cols], minlength=self.n_e)
        return np.concatenate([[0], np.cumsum(per)])


def fit_prefix(job: KernelJob, prefix: list[int], n_cont: int) -> list[int]:
    """Example ``prefix`` cut so that it and a continuation of ``n_cont`` tokens fit ``max_length``
    (:func:`~tunesift.render.fit_example`)."""
    return fit_example(prefix, job.header, n_cont, job.max_length)


def canonical_pattern(pairs, shape: tuple[int, int]) -> sp.csr_matrix:
    """``pairs`` (sparse or array, ``shape``) as a boolean CSR with sorted indices, no duplicates."""
    m = pairs.tocsr(copy=True) if sp.issparse(pairs) else sp.csr_matrix(np.asarray(pairs))
    if m.shape != shape:
        raise OptionError(
            f"pairs pattern has shape {m.shape}, expected {shape} (targets x examples)"
        )
    m = m.astype(bool)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    return m


def is_same(targets, examples) -> bool:
    """True when targets and examples are the same records: same ids and texts (prompt, its role,
    response, earlier turns), in the same order. Ids alone are not enough: two files numbered 0..n-1 share
    every id, and their pairs (i, i) are not a record with itself."""
    if targets is examples:
        return True

    def key(r) -> tuple:
        return r.id, r.prompt, getattr(r, "prompt_role", "user"), r.response, tuple(getattr(r, "context", ()) or ())

    return len(targets) == len(examples) and all(
        key(t) == key(e) for t, e in zip(targets, examples, strict=True)
    )


def pattern_views(pairs, shape: tuple[int, int]):
    """The canonical boolean pattern as (CSC, CSC entry -> CSR entry permutation, CSR)."""
    csr = canonical_pattern(pairs, shape)
    pattern = csr.tocsc()
    pattern.sort_indices()
    # where each CSC entry lands in CSR order
    order = sp.csc_matrix(
        (np.arange(pattern.nnz, dtype=np.int64) + 1, pattern.indices, pattern.indptr),
        shape=pattern.shape,
    ).tocsr()
    order.sort_indices()
    if not (
        np.array_equal(order.indptr, csr.indptr) and np.array_equal(order.indices, csr.indices)
    ):
        raise AssertionError("internal: CSC/CSR pattern mismatch")  # pragma: no cover
    perm = order.data - 1
    return pattern, perm, csr


def prepare_job(renderer, targets, examples, pairs, exclude_diagonal: bool, same: bool | None) -> KernelJob:
    """Render and tokenise every target and example once into a :class:`KernelJob`."""
    # compact tables, filled one record at a time: memory ~4 bytes a token (see token_table)
    conts = ContinuationTable((e.prompt + e.response, len(e.response)) for e in map(renderer.encode, targets))
    header, base_header, base_conts = list(renderer.header), None, None
    if getattr(renderer, "per_arm", False):  # the target reads differently after an example
        base_header, base_conts = header, conts
        conts = ContinuationTable((e.prompt + e.response, len(e.response)) for e in map(renderer.query, targets))
        header = list(renderer.example_header)
    prefixes = TokenLists(renderer.example_prefix(e) for e in examples)
    if same is None:
        same = is_same(targets, examples)
    diag = bool(exclude_diagonal and same)
    pattern = csr = perm = None
    if pairs is not None:
        pattern, perm, csr = pattern_views(pairs, (len(targets), len(examples)))
    return KernelJob(
        header, conts, prefixes, pattern, perm, csr, diag, renderer.max_length, base_header, base_conts
    )


def ids_digest(lists) -> str:
    """sha256 over token id lists (each as its length, then int64 ids): a cache key part."""
    h = hashlib.sha256()
    for ids in lists:
        a = np.asarray(ids, dtype=np.int64)
        h.update(len(a).to_bytes(8, "little"))
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(job: KernelJob, lm, pattern: bool = True) -> str:
    """The cache folder of a job; ``pattern=False``: of every job on the same records and model
    (the shared pair store)."""
    pat = None
    if job.csr is not None and pattern:
        pat = [list(job.csr.shape), ids_digest([job.csr.indptr, job.csr.indices])]
    return content_key(
        CACHE_KIND,
        CACHE_VERSION,
        job.header,
        ids_digest(job.conts.arrays()),
        job.conts.n_response.tolist(),
        ids_digest(job.prefixes.arrays()),
        str(lm.fingerprint),
        str(lm.dtype),
        job.max_length,
        pat,
        job.diag,
        # per-arm renderers (--template paper): "empty-v2", an example cut to nothing scored in the
        # example arm's wording (session 16; before, UF 0 exactly), so older blocks are not reused
        *([] if job.base_conts is None
          else [job.base_header, ids_digest(job.base_conts.arrays()), "empty-v2"]),
    )
