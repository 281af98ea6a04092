"""A learned surrogate of DELIFT's utility kernel: score a share of the candidate pairs exactly
and predict the rest.

Why this shape (measured, docs/results.md "Learned utility"): about half of UF's variance is a
per-target offset, and what moves a facility-location pick is a per-example "helpfulness": on a
1,000-record Alpaca kNN kernel, picking on the exact column means alone closes 85% of the
random-to-exact gap (budget 30%), a constant fill of the same pattern 54%. So the model is
additive::

    UF[i, j] ~ mu + a_i + h_j (+ x_ij . w)
    a_i = u_i + phi_i . alpha      target offset:        a free effect + target features
    h_j = v_j + psi_j . beta       example helpfulness:  a free effect + example features
    x_ij                           optional pair features (cosine of the two embeddings)

``phi_i`` / ``psi_j``: the record's log token counts and the first principal components of its
embedding (its no-example distance d0 can be added; it did not earn its place). Fitted by ridge
regression on the labelled pairs: a free effect with m labels keeps m / (m + lambda) of its mean
residual (lambda = 20: example effects are small next to the per-pair noise), the rest comes from
the feature prediction, so an example with no label still gets h_j from its features. On the
Alpaca sweeps the features helped at small label budgets and the pair term did not, so
:data:`DEFAULT_PARTS` leaves it out; on the GSM8K noise kernel (session 17) the pair term is ahead
at a 30% pick budget with 2-5% labels and the features are within 0.03 either way: one choice among
near-equals (docs/results.md).

Which pairs get labels: :func:`nearest_pairs` (the default, ``--labels nearest``: each target's
most similar candidates, round by round, so the exact values land where a row's facility-location
maximum most likely is), :func:`row_pairs` (``--labels rows``: all candidates of a seeded sample of
targets, so each labelled target pays one no-example pass for all its labels; the cheapest at tiny
label fractions on big pools), :func:`uniform_pairs` (NN-CIFT's sampling) or :func:`balanced_pairs`
(every example column labelled before any twice). Measured, uniform and balanced labels picked no
better than nearest ones; they are kept for that comparison. With row labels, fidelity is measured
on whole held-out rows (``fill_kernel(holdout_rows=True)``): a held-out pair whose row has other
labels would have its target offset estimated from them, which an unlabelled target never has.

Everything here is numpy/scipy on arrays; the LM work (the labels) is
:func:`tunesift.scoring.utility.utility_kernel` on the labelled pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

PARTS = ("offset", "helpfulness", "features", "pair")  # every term; ablations drop some
DEFAULT_PARTS = ("offset", "helpfulness", "features")  # chosen on Alpaca; not confirmed on GSM8K (docs/results.md)
DEFAULT_HOLDOUT = 0.2
# ridge penalties, in label counts: example effects are small next to the per-pair noise (column
# means explain ~7% of UF's variance), so a free effect needs ~20 labels to keep half its residual;
# chosen by the sweep in docs/results.md (1, 5 and 20; 10 and 100)
LAM_FREE = 20.0
LAM_FEAT = 100.0
PCA_DIMS = 16
ROW_CHUNK = 1 << 14  # rows per float64 block in the feature code (~50 MB at d = 384)


# -- which pairs to label -----------------------------------------------------------------------


def balanced_pairs(pattern: sp.csr_matrix, n_labels: int, seed: int = 0) -> sp.csr_matrix:
    """Choose ``n_labels`` entries of the boolean candidate ``pattern`` (n_t, n_e), spread evenly.

    Rounds over the example columns in a seeded random order; in each round every column that
    still has an unlabelled candidate takes one, from the candidate target row with the fewest
    labels so far (ties: seeded random). So column label counts differ by at most one (while
    candidates last) and row counts stay close. Deterministic for a given pattern and seed.
    Returns a boolean CSR (n_t, n_e) with ``min(n_labels, nnz)`` entries.
    """
    csc = pattern.tocsc().astype(bool)
    csc.sort_indices()
    n_t, n_e = csc.shape
    n_labels = int(min(max(n_labels, 0), csc.nnz))
    rng = np.random.default_rng(seed)
    # each column's candidates in a seeded random order; the per-round pick takes the least-used row
    cand = [rng.permutation(csc.indices[csc.indptr[j]:csc.indptr[j + 1]]) for j in range(n_e)]
    row_load = np.zeros(n_t, dtype=np.int64)
    rows, cols = [], []
    order = rng.permutation(n_e)
    live = [j for j in order if len(cand[j])]
    while len(rows) < n_labels and live:
        nxt = []
        for j in live:
            if len(rows) >= n_labels:
                break
            c = cand[j]
            k = int(np.argmin(row_load[c]))  # first minimum: the random order breaks ties
            i = int(c[k])
            rows.append(i)
            cols.append(j)
            row_load[i] += 1
            cand[j] = np.delete(c, k)
            if len(cand[j]):
                nxt.append(j)
        live = nxt
    return _pattern(rows, cols, (n_t, n_e))


def uniform_pairs(pattern: sp.csr_matrix, n_labels: int, seed: int = 0) -> sp.csr_matrix:
    """``n_labels`` entries of ``pattern`` drawn uniformly at random (NN-CIFT's sampling)."""
    coo = pattern.tocoo()
    n = int(min(max(n_labels, 0), coo.nnz))
    pick = np.random.default_rng(seed).choice(coo.nnz, size=n, replace=False)
    return _pattern(coo.row[pick], coo.col[pick], pattern.shape)


def row_pairs(pattern: sp.csr_matrix, n_labels: int, seed: int = 0) -> sp.csr_matrix:
    """Whole candidate rows of seeded random targets until ``n_labels`` entries of ``pattern``
    (n_t, n_e) are chosen (the last row cut short, its entries in seeded random order).

    ``--labels rows`` (the default is :func:`nearest_pairs`): a labelled target pays its no-example
    pass once for all its candidates, so f n k labels cost about f n no-example passes instead of
    about n (1 - e^(-f k)) for pairs spread over the targets; the pick is as good as nearest labels'
    at a 10% pick budget and tiny label shares, worse at a 30% budget (docs/results.md).
    Returns a boolean CSR (n_t, n_e) with ``min(n_labels, nnz)`` entries; deterministic for a
    given pattern and seed.
    """
    csr = pattern.tocsr().astype(bool)
    csr.sort_indices()
    n = int(min(max(n_labels, 0), csr.nnz))
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for i in rng.permutation(csr.shape[0]):
        if n <= 0:
            break
        c = csr.indices[csr.indptr[i]:csr.indptr[i + 1]]
        if len(c) > n:
            c = rng.permutation(c)[:n]
        rows.append(np.full(len(c), i, dtype=np.int64))
        cols.append(c)
        n -= len(c)
    if not rows:
        return _pattern([], [], csr.shape)
    return _pattern(np.concatenate(rows), np.concatenate(cols), csr.shape)


def nearest_pairs(pattern: sp.csr_matrix, rank: sp.csr_matrix, n_labels: int, seed: int = 0) -> sp.csr_matrix:
    """Labels spent on each target's nearest candidates: per row, the entries of ``pattern``
    (n_t, n_e) with the highest ``rank`` values (e.g. cosine; CSR on the pattern), round by
    round, so every row gets its nearest candidate before any row gets its second. Within a round
    that the budget cuts short, rows go in a seeded random order (not file order).

    What ``--utility learned --labels nearest`` ships: the exact values land where a row's
    facility-location maximum most likely is, and the surrogate fills the rest of the row. Returns
    a boolean CSR (n_t, n_e) with ``min(n_labels, nnz)`` entries.
    """
    pat = pattern.tocsr().astype(bool)
    pat.sort_indices()
    # rank values on the pattern's entries (an explicit 0 rank stays a candidate)
    r = rank.tocsr()
    c = pat.tocoo()
    val = np.asarray(r[c.row, c.col]).ravel().astype(np.float64)
    n = int(min(max(n_labels, 0), pat.nnz))
    # each entry's depth in its row (0 = the row's nearest): sort by (row, -rank), stable
    order = np.lexsort((-val, c.row))
    depth = np.empty(pat.nnz, dtype=np.int64)
    starts = pat.indptr[c.row[order]]
    depth[order] = np.arange(pat.nnz) - starts
    # take whole rounds while they fit, then the cut round's rows in a seeded order
    tie = np.random.default_rng(seed).permutation(pat.shape[0])[c.row]
    take = np.lexsort((tie, depth))[:n]
    return _pattern(c.row[take], c.col[take], pat.shape)


def _pattern(rows, cols, shape) -> sp.csr_matrix:
    rows = np.asarray(rows, dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, np.asarray(cols, dtype=np.int64))), shape=shape)
    m.sort_indices()
    return m


# -- features -----------------------------------------------------------------------------------


def record_features(embeddings: np.ndarray | None, d0: np.ndarray | None, n_tokens: np.ndarray | None,
                    basis: np.ndarray | None = None, chunk: int = ROW_CHUNK) -> np.ndarray:
    """Per-record features (n, f): [d0, log(1 + tokens), embedding projected on ``basis``].

    ``embeddings`` (n, 384) unit rows; ``basis`` (384, p) principal directions (see
    :func:`pca_basis`); ``d0`` (n,) no-example distance; ``n_tokens`` (n,) counts. Any part may be
    None (left out). Columns are not standardised here (the model does it). The projection runs
    in float64 over ``chunk`` rows at a time (no float64 copy of the whole matrix).
    """
    parts = []
    if d0 is not None:
        parts.append(np.asarray(d0, dtype=np.float64)[:, None])
    if n_tokens is not None:
        parts.append(np.log1p(np.asarray(n_tokens, dtype=np.float64))[:, None])
    if embeddings is not None and basis is not None:
        proj = np.empty((len(embeddings), basis.shape[1]))
        for s in range(0, len(embeddings), chunk):
            proj[s:s + chunk] = np.asarray(embeddings[s:s + chunk], dtype=np.float64) @ basis
        parts.append(proj)
    n = next((len(p) for p in parts), 0)
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))


def pca_basis(embeddings: np.ndarray, dims: int = PCA_DIMS, chunk: int = ROW_CHUNK) -> np.ndarray:
    """The top ``dims`` principal directions (d, dims) of ``embeddings`` (n, d), sign-fixed so
    that the largest-magnitude loading of each is positive (deterministic up to float noise).

    Eigenvectors of the covariance ``C = (X - mu)^T (X - mu) / n`` (d, d), accumulated over
    ``chunk`` rows at a time in float64: memory O(d^2 + chunk d), not the O(n d) float64 copies
    and left singular vectors of an SVD of X (about 1 GB at 100,000 x 384).
    """
    x = np.asarray(embeddings)
    n, d = x.shape
    dims = int(min(dims, n, d))
    if dims == 0:
        return np.zeros((d, 0))
    mu = np.zeros(d)
    for s in range(0, n, chunk):
        mu += x[s:s + chunk].sum(axis=0, dtype=np.float64)
    mu /= n
    cov = np.zeros((d, d))
    for s in range(0, n, chunk):
        b = x[s:s + chunk].astype(np.float64) - mu  # two passes: no E[x^2] - mu^2 cancellation
        cov += b.T @ b
    w, v = np.linalg.eigh(cov / n)  # ascending eigenvalues
    v = v[:, np.argsort(w)[::-1][:dims]]
    sign = np.sign(v[np.abs(v).argmax(axis=0), np.arange(dims)])
    return v * np.where(sign == 0, 1.0, sign)


def shipped_features(e_rows: np.ndarray, n_rows: np.ndarray, e_cols: np.ndarray | None = None,
                     n_cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The record features the learned utility ships with, for targets and examples:
    [log(1 + tokens), embedding on the targets' top :data:`PCA_DIMS` principal directions].

    ``e_rows`` (n_t, 384), ``n_rows`` (n_t,) for the targets; ``e_cols`` (n_e, 384), ``n_cols`` (n_e,)
    for the examples, projected on the targets' basis (None: the examples are the targets).
    The no-example distance d0 is left out: it is known only for labelled targets and did not
    earn its place (docs/results.md). Returns (row features (n_t, f), column features (n_e, f)).
    """
    basis = pca_basis(e_rows)
    rows = record_features(e_rows, None, n_rows, basis)
    cols = rows if e_cols is None else record_features(e_cols, None, n_cols, basis)
    return rows, cols


def pair_cosine(e_t: np.ndarray, e_e: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                chunk: int = 1 << 16) -> np.ndarray:
    """cos(e_t[rows[k]], e_e[cols[k]]) for each pair k, (m,); rows of e_* are unit vectors."""
    out = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        out[s:s + chunk] = np.einsum("kd,kd->k", e_t[r].astype(np.float64), e_e[c].astype(np.float64))
    return out


# -- the model ----------------------------------------------------------------------------------


@dataclass
class Surrogate:
    """A fitted additive utility model (see the module docstring); ``predict`` for any pairs."""

    mu: float
    u: np.ndarray  # (n_t,) free target effects
    v: np.ndarray  # (n_e,) free example effects
    alpha: np.ndarray  # (f_t,) on standardised target features
    beta: np.ndarray  # (f_e,) on standardised example features
    w: np.ndarray  # (f_p,) on standardised pair features
    row_x: np.ndarray  # (n_t, f_t) standardised
    col_x: np.ndarray  # (n_e, f_e) standardised
    pair_scale: tuple[np.ndarray, np.ndarray]  # mean, std of the raw pair features
    parts: tuple[str, ...] = PARTS

    def offsets(self) -> np.ndarray:
        """a_i (n_t,)."""
        return self.u + self.row_x @ self.alpha

    def helpfulness(self) -> np.ndarray:
        """h_j (n_e,): the model's per-example helpfulness."""
        return self.v + self.col_x @ self.beta

    def predict(self, rows: np.ndarray, cols: np.ndarray, pair_x: np.ndarray | None = None) -> np.ndarray:
        """UF estimates (m,) for pairs (rows[k], cols[k]); ``pair_x`` (m, f_p) raw pair features."""
        y = self.mu + self.offsets()[rows] + self.helpfulness()[cols]
        if len(self.w) and pair_x is not None:
            y = y + ((pair_x - self.pair_scale[0]) / self.pair_scale[1]) @ self.w
        return y


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    m = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    s = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    s = np.where(s > 1e-12, s, 1.0)
    return (x - m) / s, m, s


def fit_surrogate(rows: np.ndarray, cols: np.ndarray, y: np.ndarray, *, shape: tuple[int, int],
                  row_feats: np.ndarray | None = None, col_feats: np.ndarray | None = None,
                  pair_x: np.ndarray | None = None, parts: tuple[str, ...] = PARTS,
                  lam_free: float = LAM_FREE, lam_feat: float = LAM_FEAT) -> Surrogate:
    """Ridge fit of the additive model on labelled pairs.

    Args:
        rows, cols: (m,) labelled pair indices; ``y`` (m,) their exact UF.
        shape: (n_t, n_e) of the kernel.
        row_feats (n_t, f_t), col_feats (n_e, f_e), pair_x (m, f_p): raw features (see
            :func:`record_features`, :func:`pair_cosine`).
        parts: which terms to fit: "offset" (free u_i), "helpfulness" (free v_j), "features"
            (alpha, beta), "pair" (w). Dropping all gives a constant fill (mu only).
        lam_free: ridge penalty on each free effect (in label counts: a row with m labels keeps
            m / (m + lam_free) of its mean residual). lam_feat: penalty on the feature weights.

    Minimises ``sum_k (y_k - yhat_k)^2 + lam_free (|u|^2 + |v|^2) + lam_feat (|alpha|^2 +
    |beta|^2 + |w|^2)`` with LSQR on a sparse design (mu unpenalised: it is the mean of y
    removed first). Deterministic: no random state.
    """
    n_t, n_e = shape
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    m = len(y)
    use = set(parts)
    row_x, _, _ = _standardise(row_feats if row_feats is not None and "features" in use else np.zeros((n_t, 0)))
    col_x, _, _ = _standardise(col_feats if col_feats is not None and "features" in use else np.zeros((n_e, 0)))
    if pair_x is not None and "pair" in use:
        px, pm, ps = _standardise(pair_x)
    else:
        px, pm, ps = np.zeros((m, 0)), np.zeros(0), np.ones(0)
    mu = float(y.mean()) if m else 0.0
    blocks, sizes = [], []
    k = np.arange(m)
    # each block is scaled by 1/sqrt(lambda) so that one damp=1 LSQR applies the ridge penalties
    if "offset" in use:
        blocks.append(sp.csr_matrix((np.ones(m), (k, rows)), shape=(m, n_t)) / np.sqrt(lam_free))
    sizes.append(n_t if "offset" in use else 0)
    if "helpfulness" in use:
        blocks.append(sp.csr_matrix((np.ones(m), (k, cols)), shape=(m, n_e)) / np.sqrt(lam_free))
    sizes.append(n_e if "helpfulness" in use else 0)
    for x in (row_x[rows], col_x[cols], px):
        if x.shape[1]:
            blocks.append(sp.csr_matrix(x) / np.sqrt(lam_feat))
        sizes.append(x.shape[1])
    coef = np.zeros(sum(sizes))
    if blocks and m:
        design = sp.hstack(blocks, format="csr")
        coef = lsqr(design, y - mu, damp=1.0, atol=1e-10, btol=1e-10, iter_lim=20 * design.shape[1] + 100)[0]
    scale = np.concatenate([np.full(sizes[0], lam_free), np.full(sizes[1], lam_free),
                            np.full(sum(sizes[2:]), lam_feat)]) if len(coef) else np.zeros(0)
    coef = coef / np.sqrt(scale) if len(coef) else coef
    cut = np.cumsum(sizes)[:-1]
    u, v, alpha, beta, w = np.split(coef, cut)
    return Surrogate(mu, u if len(u) else np.zeros(n_t), v if len(v) else np.zeros(n_e), alpha, beta, w,
                     row_x, col_x, (pm, ps), tuple(parts))


# -- fidelity -----------------------------------------------------------------------------------


def fidelity(y: np.ndarray, pred: np.ndarray, rows: np.ndarray) -> dict[str, float | None]:
    """How well ``pred`` matches exact ``y`` on held-out pairs (m,) of target rows ``rows``.

    ``spearman`` (rank correlation over all pairs), ``r2`` (1 - SSE / SST) and
    ``within_row_spearman``: Spearman of the row-centred values over rows with at least 2
    held-out pairs (what a per-target pick sees: the target offset removed); None when no row
    has 2 pairs.
    """
    import warnings

    from scipy.stats import spearmanr

    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    out: dict[str, float | None] = {"spearman": None, "r2": None, "within_row_spearman": None}
    if len(y) < 3:
        return out
    with warnings.catch_warnings():  # a constant prediction (the constant fill) has no rank correlation
        warnings.simplefilter("ignore")
        return _fidelity(y, pred, np.asarray(rows), out, spearmanr)


def _fidelity(y, pred, rows, out, spearmanr):
    out["spearman"] = _finite(spearmanr(y, pred).statistic)
    sst = float(((y - y.mean()) ** 2).sum())
    out["r2"] = _finite(1.0 - float(((y - pred) ** 2).sum()) / sst) if sst > 0 else None
    cnt = np.bincount(rows)
    keep = cnt[rows] >= 2
    if keep.sum() >= 3:
        r = rows[keep]
        yc = y[keep] - (np.bincount(r, weights=y[keep]) / np.maximum(np.bincount(r), 1))[r]
        pc = pred[keep] - (np.bincount(r, weights=pred[keep]) / np.maximum(np.bincount(r), 1))[r]
        out["within_row_spearman"] = _finite(spearmanr(yc, pc).statistic)
    return out


def _finite(x) -> float | None:
    x = float(x)
    return round(x, 4) if np.isfinite(x) else None


@dataclass
class FilledKernel:
    """The candidate kernel with exact values where labelled and predictions elsewhere."""

    values: sp.csr_matrix  # (n_t, n_e) UF on the candidate pattern
    labelled: sp.csr_matrix  # (n_t, n_e) bool: which entries are exact
    report: dict = field(default_factory=dict)  # the manifest's "surrogate" entry


def fill_kernel(candidates: sp.csr_matrix, exact: sp.csr_matrix, *, row_feats=None, col_feats=None,
                pair_fn=None, parts: tuple[str, ...] = PARTS, holdout: float = DEFAULT_HOLDOUT,
                holdout_rows: bool = False, seed: int = 0, lam_free: float = LAM_FREE,
                lam_feat: float = LAM_FEAT) -> FilledKernel:
    """Fit on the exact labels, report held-out fidelity, predict every other candidate pair.

    Args:
        candidates: boolean CSR (n_t, n_e), the pairs the selection uses.
        exact: CSR (n_t, n_e) of exact UF on the labelled pairs (a subset of ``candidates``;
            NaN entries, if any, are ignored).
        pair_fn: ``pair_fn(rows, cols) -> (m, f_p)`` raw pair features, or None.
        holdout: share of the labels held out (seeded) to measure fidelity; the final model is
            then refitted on all labels.
        holdout_rows: hold out whole target rows (seeded, until the share is reached) instead of
            single pairs: the honest test for row labels (:func:`row_pairs`), where an
            unlabelled target's offset comes from its features alone.

    Returns a :class:`FilledKernel` whose ``report`` has ``labelled_pairs``, ``heldout_pairs``,
    ``candidate_pairs``, ``spearman``, ``r2``, ``within_row_spearman`` and ``parts``.
    """
    shape = candidates.shape
    ex = exact.tocoo()
    ok = ~np.isnan(ex.data)
    rows, cols, y = ex.row[ok].astype(np.int64), ex.col[ok].astype(np.int64), ex.data[ok].astype(np.float64)

    def fit(sel: np.ndarray) -> Surrogate:
        px = pair_fn(rows[sel], cols[sel]) if pair_fn else None
        return fit_surrogate(rows[sel], cols[sel], y[sel], shape=shape, row_feats=row_feats, col_feats=col_feats,
                             pair_x=px, parts=parts, lam_free=lam_free, lam_feat=lam_feat)

    n_hold = int(round(holdout * len(y))) if len(y) >= 10 else 0
    metrics: dict = {"spearman": None, "r2": None, "within_row_spearman": None}
    if n_hold:
        test = _heldout(rows, n_hold, seed, by_row=holdout_rows)
        train = np.setdiff1d(np.arange(len(y)), test)
        n_hold = len(test)
        model = fit(train)
        px = pair_fn(rows[test], cols[test]) if pair_fn else None
        metrics = fidelity(y[test], model.predict(rows[test], cols[test], px), rows[test])
    model = fit(np.arange(len(y)))
    cand = candidates.tocsr().astype(bool)
    cand.sort_indices()
    c = cand.tocoo()  # row-major: the CSR data order
    c_rows, c_cols = c.row.astype(np.int64), c.col.astype(np.int64)
    px = pair_fn(c_rows, c_cols) if pair_fn else None
    data = model.predict(c_rows, c_cols, px)
    # exact values where labelled (labels outside the candidates are ignored)
    keys = c_rows * shape[1] + c_cols  # sorted, unique
    pos = np.searchsorted(keys, rows * shape[1] + cols)
    hit = pos < len(keys)
    hit[hit] = keys[pos[hit]] == (rows * shape[1] + cols)[hit]
    data[pos[hit]] = y[hit]
    is_lab = np.zeros(len(keys), dtype=bool)
    is_lab[pos[hit]] = True
    vals = sp.csr_matrix((data, cand.indices.copy(), cand.indptr.copy()), shape=shape)
    lab = sp.csr_matrix((is_lab, cand.indices.copy(), cand.indptr.copy()), shape=shape)
    lab.eliminate_zeros()
    report = {"candidate_pairs": int(cand.nnz), "labelled_pairs": int(lab.nnz), "heldout_pairs": n_hold,
              "heldout_by": "row" if holdout_rows else "pair", **metrics, "parts": list(parts)}
    return FilledKernel(vals, lab, report)


def _heldout(rows: np.ndarray, n_hold: int, seed: int, *, by_row: bool) -> np.ndarray:
    """Sorted indices of the held-out labels: ``n_hold`` seeded pairs, or whole rows in seeded
    order until at least ``n_hold`` pairs (never every row: one row stays for training)."""
    rng = np.random.default_rng(seed)
    if not by_row:
        return np.sort(rng.permutation(len(rows))[:n_hold])
    uniq, counts = np.unique(rows, return_counts=True)
    order = rng.permutation(len(uniq))
    take = np.searchsorted(np.cumsum(counts[order]), n_hold) + 1  # rows until the share is reached
    take = min(take, len(uniq) - 1)
    return np.flatnonzero(np.isin(rows, uniq[order[:take]]))

