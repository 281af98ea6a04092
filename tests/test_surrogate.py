"""The learned DELIFT utility surrogate: label sampling, the additive model, fidelity, the filled
kernel, and `--utility learned` through select for all three stages."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp

from tunesift.scoring import surrogate as sg


def knn_like(n: int, k: int, seed: int = 0) -> sp.csr_matrix:
    """A random k-regular-by-row candidate pattern without the diagonal."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for i in range(n):
        c = rng.choice(np.delete(np.arange(n), i), size=k, replace=False)
        rows += [i] * k
        cols += list(c)
    return sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, n))


def test_balanced_pairs_spread_labels_over_every_column_first():
    cand = knn_like(60, 8)
    lab = sg.balanced_pairs(cand, 90, seed=3)
    assert lab.nnz == 90
    assert (lab.astype(int) - lab.multiply(cand).astype(int)).nnz == 0  # a subset of the candidates
    per_col = np.asarray(lab.sum(axis=0)).ravel()
    has = np.asarray(cand.sum(axis=0)).ravel() > 0
    assert per_col[has].min() >= 1 and per_col.max() - per_col[has].min() <= 1  # 90 labels / <= 60 columns
    per_row = np.asarray(lab.sum(axis=1)).ravel()
    assert per_row.max() - per_row.min() <= 3
    # deterministic for a seed, different for another
    assert (sg.balanced_pairs(cand, 90, seed=3) != lab).nnz == 0
    assert (sg.balanced_pairs(cand, 90, seed=4) != lab).nnz > 0
    # uniform sampling (NN-CIFT's) leaves columns unlabelled at the same budget
    uni = sg.uniform_pairs(cand, 90, seed=3)
    assert uni.nnz == 90 and (np.asarray(uni.sum(axis=0)).ravel()[has] == 0).sum() > 0


def test_balanced_pairs_caps_at_the_candidates():
    cand = knn_like(10, 3)
    assert sg.balanced_pairs(cand, 10_000).nnz == cand.nnz
    assert sg.balanced_pairs(cand, 0).nnz == 0


def test_row_pairs_label_whole_rows_of_seeded_targets():
    cand = knn_like(40, 6, seed=2)
    lab = sg.row_pairs(cand, 45, seed=3)
    assert lab.nnz == 45
    assert (lab.astype(int) - lab.multiply(cand).astype(int)).nnz == 0  # a subset of the candidates
    per_row = np.asarray(lab.sum(axis=1)).ravel()
    # 7 whole rows of 6 and one row cut to 3: one no-example pass per labelled target
    assert sorted(per_row[per_row > 0].tolist()) == [3] + [6] * 7
    assert (sg.row_pairs(cand, 45, seed=3) != lab).nnz == 0
    other = sg.row_pairs(cand, 45, seed=4)
    assert set(np.flatnonzero(other.getnnz(axis=1))) != set(np.flatnonzero(lab.getnnz(axis=1)))
    # uniform sampling touches many more targets at the same budget
    assert np.count_nonzero(sg.uniform_pairs(cand, 45, seed=3).getnnz(axis=1)) > 8
    assert sg.row_pairs(cand, 10_000).nnz == cand.nnz and sg.row_pairs(cand, 0).nnz == 0


def test_fill_kernel_holds_out_whole_rows_for_row_labels():
    n = 60
    a, h, x = additive_truth(n, seed=7)
    cand = knn_like(n, 5, seed=7)
    lab = sg.row_pairs(cand, 100, seed=0).tocoo()
    exact = sp.csr_matrix((a[lab.row] + h[lab.col], (lab.row, lab.col)), shape=(n, n))
    test = sg._heldout(lab.row.astype(np.int64), 20, 0, by_row=True)
    held_rows = set(lab.row[test].tolist())
    assert len(test) == 20 and len(held_rows) == 4  # whole rows: 4 of the 20 labelled targets
    assert not held_rows & set(np.delete(lab.row, test).tolist())  # no held-out row is in the fit
    by_row = sg.fill_kernel(cand, exact, col_feats=x, holdout_rows=True, seed=0)
    by_pair = sg.fill_kernel(cand, exact, col_feats=x, seed=0)
    assert by_row.report["heldout_by"] == "row" and by_pair.report["heldout_by"] == "pair"
    assert by_row.report["heldout_pairs"] == 20
    # the free target offsets cannot be learned for unseen rows: the row hold-out is the harder test
    assert by_row.report["r2"] < by_pair.report["r2"]
    np.testing.assert_array_equal(by_row.values.toarray(), by_pair.values.toarray())  # same final refit


def test_nearest_pairs_gives_every_row_its_nearest_first():
    cand = knn_like(20, 5, seed=1)
    rank = cand.astype(float).multiply(np.random.default_rng(0).random((20, 20))).tocsr()
    got = sg.nearest_pairs(cand, rank, 30)
    per_row = np.asarray(got.sum(axis=1)).ravel()
    assert got.nnz == 30 and per_row.min() == 1 and per_row.max() == 2
    for i in range(20):  # each row's first label is its highest-ranked candidate
        r = rank.getrow(i)
        best = r.indices[np.argmax(r.data)]
        assert got[i, best]
    # a round cut short by the budget: a seeded sample of rows, not the first rows of the file
    cut = sg.nearest_pairs(cand, rank, 8, seed=0)
    rows_cut = set(np.flatnonzero(cut.getnnz(axis=1)))
    assert len(rows_cut) == 8 and rows_cut != set(range(8))
    assert rows_cut != set(np.flatnonzero(sg.nearest_pairs(cand, rank, 8, seed=1).getnnz(axis=1)))
    assert (sg.nearest_pairs(cand, rank, 8, seed=0) != cut).nnz == 0
    assert sg.nearest_pairs(cand, rank, 10_000).nnz == cand.nnz and sg.nearest_pairs(cand, rank, 0).nnz == 0


def additive_truth(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.05, n)  # target offsets
    x = rng.normal(size=(n, 3))  # example features
    h = x @ np.array([0.03, -0.02, 0.01]) + rng.normal(0, 0.005, n)  # helpfulness, mostly from features
    return a, h, x


def test_the_additive_model_recovers_offsets_and_helpfulness():
    n = 80
    a, h, x = additive_truth(n)
    cand = knn_like(n, 10)
    c = cand.tocoo()
    y = 0.01 + a[c.row] + h[c.col]
    lab = sg.balanced_pairs(cand, 300, seed=0)
    lc = lab.tocoo()
    model = sg.fit_surrogate(lc.row, lc.col, 0.01 + a[lc.row] + h[lc.col], shape=(n, n), row_feats=None,
                             col_feats=x, lam_free=0.1, lam_feat=0.1)
    pred = model.predict(c.row, c.col)
    assert np.corrcoef(pred, y)[0, 1] > 0.97
    assert np.corrcoef(model.helpfulness(), h)[0, 1] > 0.95
    # the constant fill (no parts) predicts the labels' mean everywhere
    const = sg.fit_surrogate(lc.row, lc.col, 0.01 + a[lc.row] + h[lc.col], shape=(n, n), parts=())
    assert np.allclose(const.predict(c.row, c.col), (0.01 + a[lc.row] + h[lc.col]).mean())


def test_features_carry_helpfulness_to_unlabelled_columns():
    n = 60
    a, h, x = additive_truth(n, seed=2)
    cand = knn_like(n, 8, seed=2)
    lab = sg.balanced_pairs(cand, 240, seed=0)
    lc = lab.tocoo()
    keep = lc.col >= 20  # columns 0..19 get no label at all
    rows, cols = lc.row[keep], lc.col[keep]
    y = a[rows] + h[cols]
    with_f = sg.fit_surrogate(rows, cols, y, shape=(n, n), col_feats=x, lam_free=0.1, lam_feat=0.1)
    free_only = sg.fit_surrogate(rows, cols, y, shape=(n, n), parts=("offset", "helpfulness"), lam_free=0.1)
    unl = np.arange(20)
    assert np.corrcoef(with_f.helpfulness()[unl], h[unl])[0, 1] > 0.9
    assert np.allclose(free_only.helpfulness()[unl], 0.0)  # nothing to go on without features


def test_pca_basis_is_the_svd_directions_in_bounded_memory():
    """Covariance eigenvectors accumulated over row chunks = the top right singular vectors of
    the centred matrix (same sign rule), whatever the chunk; the projection too."""
    rng = np.random.default_rng(0)
    scales = np.linspace(3.0, 0.2, 12)  # distinct variances: each direction well defined
    x = (rng.normal(size=(500, 12)) * scales) @ np.linalg.qr(rng.normal(size=(12, 12)))[0] + 0.7
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    ref = vt[:5].T
    ref = ref * np.sign(ref[np.abs(ref).argmax(axis=0), np.arange(5)])
    for chunk in (7, 64, 1 << 14):
        b = sg.pca_basis(x, dims=5, chunk=chunk)
        assert b.shape == (12, 5)
        np.testing.assert_allclose(b, ref, atol=1e-9)
        f = sg.record_features(x, None, None, b, chunk=chunk)
        np.testing.assert_allclose(f, x @ ref, atol=1e-9)
    assert sg.pca_basis(x[:3], dims=16).shape == (12, 3)  # no more directions than records
    assert sg.pca_basis(x[:0], dims=16).shape == (12, 0)


def test_shipped_features_put_examples_on_the_targets_basis():
    """[log1p(tokens), embedding on the targets' PCA basis] for both sides; examples are projected
    on the targets' directions (not their own), and no d0 column."""
    rng = np.random.default_rng(1)
    e_t = rng.normal(size=(40, 384)).astype(np.float32)
    e_e = (rng.normal(size=(25, 384)) * np.linspace(5, 0.1, 384)).astype(np.float32)  # other directions
    n_t, n_e = rng.integers(5, 300, 40), rng.integers(5, 300, 25)
    rows, cols = sg.shipped_features(e_t, n_t, e_e, n_e)
    basis = sg.pca_basis(e_t)
    assert rows.shape == (40, 1 + basis.shape[1]) and cols.shape == (25, 1 + basis.shape[1])
    np.testing.assert_allclose(rows[:, 0], np.log1p(n_t))
    np.testing.assert_allclose(cols[:, 0], np.log1p(n_e))
    np.testing.assert_allclose(cols[:, 1:], e_e.astype(np.float64) @ basis, atol=1e-8)
    assert not np.allclose(cols[:, 1:], e_e.astype(np.float64) @ sg.pca_basis(e_e), atol=1e-3)
    same_rows, same_cols = sg.shipped_features(e_t, n_t)
    assert same_cols is same_rows and np.array_equal(same_rows, rows)


def test_fidelity_metrics():
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(30), 3)
    y = rng.normal(size=90)
    perfect = sg.fidelity(y, y, rows)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["r2"] == pytest.approx(1.0)
    assert perfect["within_row_spearman"] == pytest.approx(1.0)
    # a per-row offset added to the prediction leaves the within-row ranking intact, not R^2
    off = sg.fidelity(y, y + rng.normal(size=30)[rows] * 5, rows)
    assert off["within_row_spearman"] == pytest.approx(1.0) and off["r2"] < 0
    assert sg.fidelity(y, -y, rows)["spearman"] == pytest.approx(-1.0)
    assert sg.fidelity(y[:2], y[:2], rows[:2]) == {"spearman": None, "r2": None, "within_row_spearman": None}


def test_fill_kernel_keeps_exact_labels_and_the_candidate_pattern():
    n = 50
    a, h, x = additive_truth(n, seed=5)
    cand = knn_like(n, 6, seed=5)
    lab = sg.balanced_pairs(cand, 120, seed=1)
    lc = lab.tocoo()
    exact = sp.csr_matrix((a[lc.row] + h[lc.col] + 0.001, (lc.row, lc.col)), shape=(n, n))
    f = sg.fill_kernel(cand, exact, col_feats=x, seed=0, lam_free=0.1, lam_feat=0.1)  # noiseless: little shrinkage
    assert np.array_equal(f.values.indptr, cand.tocsr().indptr)
    assert np.array_equal(f.values.indices, cand.tocsr().indices) and np.array_equal(f.labelled.toarray(),
                                                                                       lab.toarray())
    got = np.asarray(f.values[lc.row, lc.col]).ravel()
    assert np.array_equal(got, a[lc.row] + h[lc.col] + 0.001)  # exact where labelled, bit for bit
    rep = f.report
    assert rep["candidate_pairs"] == cand.nnz and rep["labelled_pairs"] == 120 and rep["heldout_pairs"] == 24
    assert rep["spearman"] > 0.8 and rep["r2"] > 0.5
    json.dumps(rep)  # manifest-ready


def rows(n: int) -> list[dict]:
    return [{"instruction": f"Add {i} and {i + 1}.", "output": f"The sum is {2 * i + 1}."} for i in range(n)]


@pytest.mark.parametrize("stage,labels", [("instruction", "nearest"), ("instruction", "rows"), ("task", "nearest"),
                                          ("task-additive", "rows"), ("continual", "nearest")])
def test_select_with_the_learned_utility(stage, labels, tiny_lm, tmp_path):
    from tunesift.pipeline import select

    other = [{"instruction": f"Subtract {i} from {3 * i}.", "output": f"{2 * i}"} for i in range(6)]
    kw = {"task": {"target": other}, "continual": {"existing": other},
          "task-additive": {"target": other, "mi_form": "additive"}}.get(stage, {})
    stage = stage.split("-")[0]
    sel = select(rows(24), method="delift", stage=stage, utility="learned", label_fraction=0.3, knn=6, budget=6,
                 labels=labels, lm=tiny_lm, cache_dir=str(tmp_path), **kw)
    assert sel.kept.sum() == 6
    rep = sel.extra["surrogate"]
    assert rep["pool"]["candidate_pairs"] == 24 * 6 and rep["pool"]["labelled_pairs"] == round(0.3 * 144)
    # nearest: every target has labels (pairs held out); rows: whole target rows held out
    assert rep["pool"]["heldout_by"] == {"nearest": "pair", "rows": "row"}[labels]
    assert ("cross" in rep) == (stage != "instruction")
    # seeded and deterministic; labels come from the cache the second time
    again = select(rows(24), method="delift", stage=stage, utility="learned", label_fraction=0.3, knn=6, budget=6,
                   labels=labels, lm=tiny_lm, cache_dir=str(tmp_path), **kw)
    assert again.ids == sel.ids and again.extra["surrogate"] == rep


def test_learned_with_every_pair_labelled_is_the_exact_pick(tiny_lm, tmp_path):
    from tunesift.pipeline import select

    exact = select(rows(16), method="delift", knn=5, budget=5, lm=tiny_lm, cache_dir=str(tmp_path))
    full = select(rows(16), method="delift", knn=5, budget=5, utility="learned", label_fraction=1.0, lm=tiny_lm,
                  cache_dir=str(tmp_path))
    assert full.ids == exact.ids
    np.testing.assert_allclose(full.columns["helpfulness"], exact.columns["helpfulness"], rtol=1e-5, atol=1e-7)


def test_learned_utility_is_in_the_manifest(tiny_dir, tmp_path):
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(20)))
    out = tmp_path / "out"
    code = main(["select", str(data), "--method", "delift", "--utility", "learned", "--label-fraction", "0.25",
                 "--knn", "5", "--budget", "5", "--model", str(tiny_dir), "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out), "-q"])
    assert code == 0
    man = json.loads((out / "manifest.json").read_text())
    s = man["surrogate"]["pool"]
    assert s["labelled_pairs"] == 25 and s["heldout_pairs"] == 5 and s["candidate_pairs"] == 100
    assert {"spearman", "r2", "within_row_spearman"} <= set(s)
    assert man["options"]["utility"] == "learned" and man["options"]["label_fraction"] == 0.25


@pytest.mark.parametrize("utility", ["exact", "learned"])
def test_kernel_command_writes_what_select_computes(utility, tiny_dir, tmp_path):
    from tunesift.cli import main
    from tunesift.models import load_lm
    from tunesift.pipeline import select

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", **r}) + "\n" for i, r in enumerate(rows(12))))
    out = tmp_path / "k"
    args = ["kernel", str(data), "--knn", "4", "--model", str(tiny_dir), "--cache-dir", str(tmp_path / "c"),
            "--out", str(out), "-q", "--utility", utility, "--label-fraction", "0.5"]
    assert main(args) == 0
    uf = sp.load_npz(out / "utility.npz")
    assert uf.shape == (12, 12) and uf.nnz == 48 and uf.diagonal().sum() == 0
    assert (out / "rows.txt").read_text().split() == [f"r{i}" for i in range(12)]
    assert (out / "cols.txt").read_text() == (out / "rows.txt").read_text()
    meta = json.loads((out / "kernel.json").read_text())
    assert meta["shape"] == [12, 12] and meta["pairs"] == 48 and meta["options"]["utility"] == utility
    assert np.load(out / "base.npy").shape == (12,)
    assert set(meta["files"]) == {p.name for p in out.iterdir()} - {"kernel.json"}
    # the exact kernel is the one select's DELIFT picks from (same cache, same values)
    sel = select(str(data), method="delift", knn=4, budget=4, utility=utility, label_fraction=0.5,
                 lm=load_lm(str(tiny_dir), device="cpu", dtype="float32"), cache_dir=str(tmp_path / "c"))
    counts = np.asarray((uf != 0).sum(axis=0)).ravel()
    col_mean = np.asarray(uf.sum(axis=0)).ravel() / np.maximum(counts, 1)
    ok = counts > 0
    np.testing.assert_allclose(col_mean[ok], sel.columns["helpfulness"][ok], rtol=1e-5, atol=1e-9)
    if utility == "learned":
        lab = sp.load_npz(out / "labelled.npz")
        assert lab.nnz == 24 and meta["surrogate"]["labelled_pairs"] == 24
        # --labels nearest (the default): each target's 2 most similar of its 4 candidates
        from tunesift.io.records import read_records
        from tunesift.scoring.embedding import embed_records

        e = embed_records(read_records(str(data), None), cache_dir=str(tmp_path / "c"))
        cand = (uf != 0).tocsr()
        for i in range(12):
            c = cand.indices[cand.indptr[i]:cand.indptr[i + 1]]
            top2 = set(c[np.argsort(-(e[c] @ e[i]))[:2]].tolist())
            assert set(lab.getrow(i).indices.tolist()) == top2
    else:
        assert not (out / "labelled.npz").exists() and meta["surrogate"] is None
    # a rerun replaces the folder; a folder holding foreign files, or a file edited since, is refused
    assert main(args) == 0
    with open(out / "rows.txt", "a") as fh:
        fh.write("mine\n")
    assert main(args) == 2 and (out / "rows.txt").read_text().endswith("mine\n")
    (out / "mine.txt").write_text("x")
    assert main(args) == 2


def test_kernel_dense_with_examples(tiny_dir, tmp_path):
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(6)))
    ex = tmp_path / "e.jsonl"
    ex.write_text("".join(json.dumps(r) + "\n" for r in rows(9)[6:]))
    out = tmp_path / "k"
    assert main(["kernel", str(data), "--examples", str(ex), "--knn", "0", "--model", str(tiny_dir), "--cache-dir",
                 str(tmp_path / "c"), "--out", str(out), "-q"]) == 0
    uf = np.load(out / "utility.npy")
    assert uf.shape == (6, 3) and np.isfinite(uf).all()  # no diagonal rule across two sets
    # what the rows and columns were read from (ids alone match any file numbered the same way)
    inputs = json.loads((out / "kernel.json").read_text())["inputs"]
    assert inputs == {"data": {"path": str(data.resolve()), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()},
                      "examples": {"path": str(ex.resolve()), "sha256": hashlib.sha256(ex.read_bytes()).hexdigest()}}


def test_kernel_leaves_a_repeated_records_copy_pairs_out_as_select_does(tiny_dir, tmp_path):
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    pool = rows(5)
    data.write_text("".join(json.dumps(r) + "\n" for r in pool + [pool[1]]))  # record 5 repeats record 1
    out = tmp_path / "k"
    assert main(["kernel", str(data), "--knn", "0", "--model", str(tiny_dir), "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out), "-q"]) == 0
    uf = np.load(out / "utility.npy")
    assert np.isnan(uf[1, 5]) and np.isnan(uf[5, 1]) and np.isnan(np.diag(uf)).all()
    assert np.isfinite(uf).sum() == 6 * 5 - 2  # every other pair scored
    # the pool given again as --examples is the pool: the same rule, the same kernel
    again = tmp_path / "k2"
    assert main(["kernel", str(data), "--examples", str(data), "--knn", "0", "--model", str(tiny_dir), "--cache-dir",
                 str(tmp_path / "c"), "--out", str(again), "-q"]) == 0
    np.testing.assert_array_equal(np.load(again / "utility.npy"), uf)
    # another file whose ids happen to be the same (both numbered 0..n-1) is another set: every pair scored
    numbered = [{"id": i, **r} for i, r in enumerate(pool)]
    other = [{"id": i, **r} for i, r in enumerate(rows(12)[6:])]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in numbered))
    b.write_text("".join(json.dumps(r) + "\n" for r in other[:5]))
    assert main(["kernel", str(a), "--examples", str(b), "--knn", "0", "--model", str(tiny_dir), "--cache-dir",
                 str(tmp_path / "c"), "--out", str(tmp_path / "k3"), "-q"]) == 0
    assert np.isfinite(np.load(tmp_path / "k3" / "utility.npy")).all()  # no diagonal left out


def test_kernel_errors_do_not_suggest_an_option_it_lacks(tiny_dir, tmp_path, capsys):
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": ""}) + "\n")
    assert main(["kernel", str(data), "--model", str(tiny_dir), "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "k"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "the response is empty" in err and "--on-error" not in err, err


def test_report_states_the_surrogate_fidelity(tiny_dir, tmp_path):
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(20)))
    out = tmp_path / "out"
    assert main(["select", str(data), "--method", "delift", "--utility", "learned", "--label-fraction", "0.25",
                 "--knn", "5", "--budget", "5", "--model", str(tiny_dir), "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out), "-q", "--report"]) == 0
    page = (out / "report.html").read_text()
    assert "Learned utility (pool x pool): 25 of 100 candidate pairs scored exactly" in page
    # --labels nearest: single pairs held out, near where the model was fitted, and said so
    assert "held-out exact pairs (single pairs among the labelled ones: an optimistic reading of the predicted " \
           "pairs): Spearman" in page


def test_learned_utility_refuses_keep_diagonal():
    """With the diagonal kept, each record's own pair ranks first among its nearest: every label went
    to a self-pair and the surrogate learned only how well a record predicts itself."""
    from tunesift.errors import OptionError
    from tunesift.methods.options import Options

    for method in ("delift", "donod+delift"):
        with pytest.raises(OptionError, match="--keep-diagonal cannot be combined with --utility learned"):
            Options(method=method, utility="learned", keep_diagonal=True).validate()
        Options(method=method, utility="exact", keep_diagonal=True).validate()
        Options(method=method, utility="learned").validate()


def test_less_dim_is_checked_before_anything_is_read():
    """--less-dim 100 passed the option check and failed only after the model was loaded."""
    from tunesift.errors import OptionError
    from tunesift.methods.options import Options

    with pytest.raises(OptionError, match="less-dim must be a positive multiple of 8"):
        Options(method="less", stage="task", less_dim=100).validate()
    Options(method="less", stage="task", less_dim=96).validate()


def test_kernel_reads_custom_fields_and_a_recipe_like_select(tiny_dir, tmp_path):
    """kernel had no --prompt-field/--response-field nor --config: a pool select reads with a field
    map could not be exported."""
    from tunesift.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"key": f"r{i}", "q": r["instruction"], "a": r["output"]}) + "\n"
                            for i, r in enumerate(rows(8))))
    recipe = tmp_path / "k.yaml"
    recipe.write_text(f"knn: 3\nmodel: {tiny_dir}\nprompt_field: q\nresponse_field: a\nid_field: key\n")
    out = tmp_path / "k"
    assert main(["kernel", str(data), "--config", str(recipe), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                 "-q"]) == 0
    assert (out / "rows.txt").read_text().split() == [f"r{i}" for i in range(8)]
    meta = json.loads((out / "kernel.json").read_text())
    assert sp.load_npz(out / "utility.npz").nnz == 24 and meta["options"]["knn"] == 3
    assert meta["fields"] == {"prompt": "q", "response": "a", "id": "key"}, meta["fields"]


def test_kernel_id_lines_read_back_one_id_a_line_whatever_the_id(tmp_path):
    """rows.txt / cols.txt: a lone surrogate in an id raised UnicodeEncodeError (a traceback after
    the whole kernel); a line break str.splitlines knows (U+2028, U+0085) split an id in two."""
    import json
    from types import SimpleNamespace

    from tunesift.kernel_export import id_lines

    ids = ["a", "b\nc", '"q', "x\u2028y", "p\x85q", "i\udfff", "中文", "7"]
    path = tmp_path / "rows.txt"
    path.write_text(id_lines([SimpleNamespace(id=i) for i in ids]), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(ids) and "中文\n" in text  # plain ids stay as they are
    # the reader docs/delift-kernel.md gives
    rows = [json.loads(x) if x.startswith('"') else x for x in open(path, encoding="utf-8").read().split("\n")[:-1]]
    assert rows == ids
