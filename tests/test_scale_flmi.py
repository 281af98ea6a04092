"""--scale joint|separate (one min-max for all of a stage's kernels, or one per kernel) and the
additive FLMI term in the paper's orientation (how much each candidate helps the target set)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import tiny

from tunesift.errors import OptionError
from tunesift.methods.delift import scaled, selection_kernel, self_covering
from tunesift.methods.options import Options
from tunesift.pipeline import as_records, select
from tunesift.render import renderer_for
from tunesift.scoring.utility import utility_kernel
from tunesift.selection.submodular import fl_conditional_gain, fl_mutual_information

# -- the additive FLMI term ------------------------------------------------------------------------


def test_additive_term_is_how_much_the_candidate_helps_the_targets():
    """Two readings of eta * max_q s(., .) for candidate j: the paper's s[q, j] (j as the example,
    target q predicted) and its transpose s[j, q] (q as the example). They pick differently here."""
    S = np.full((3, 3), 0.5)  # the pool kernel gives no candidate an edge
    helps_target = np.array([[0.0, 0.9, 0.1]])  # (1 target, 3 pool): pool record 1 helps the target most
    helped_by_target = np.array([[0.9], [0.0], [0.1]])  # (3 pool, 1 target): the target helps record 0 most
    paper = fl_mutual_information(S, helps_target, 1, eta=1.0, form="additive")
    assert paper.order.tolist() == [1]
    assert paper.objective == pytest.approx(1.5 + 0.9)
    transposed = fl_mutual_information(S, helped_by_target.T, 1, eta=1.0, form="additive")
    assert transposed.order.tolist() == [0]  # the other reading, for contrast
    # sparse targets x pool (kNN): missing entries are 0, the bonus is the column maximum
    sparse = fl_mutual_information(S, sp.csr_matrix(helps_target), 2, eta=1.0, form="additive")
    assert sparse.order.tolist() == [1, 2]
    # the min form (submodlib FL1MI, the default) keeps pool rows x queries
    assert fl_mutual_information(S, helped_by_target, 1).order.tolist() == [0]


def test_additive_term_shape_is_checked():
    S = np.full((3, 3), 0.5)
    with pytest.raises(OptionError, match="3 columns"):
        fl_mutual_information(S, np.ones((3, 2)), 1, form="additive")
    assert Options().mi_form == "min"


# -- --scale -----------------------------------------------------------------------------------


def uf_pair():
    rng = np.random.default_rng(3)
    pool = rng.uniform(-0.2, 0.6, (5, 5))
    np.fill_diagonal(pool, np.nan)
    return pool, rng.uniform(0.0, 0.1, (5, 2))  # the second kernel spans a much smaller range


def test_joint_and_separate_scaling():
    pool, cross = uf_pair()
    joint = scaled([pool, cross], Options(scale="joint"))
    separate = scaled([pool, cross], Options(scale="separate"))
    lo, hi = min(np.nanmin(pool), cross.min()), max(np.nanmax(pool), cross.max())
    np.testing.assert_allclose(joint[1], (cross - lo) / (hi - lo), rtol=1e-6)
    np.testing.assert_allclose(separate[1], (cross - cross.min()) / (cross.max() - cross.min()), rtol=1e-6)
    assert separate[1].min() == 0 and separate[1].max() == pytest.approx(1)
    assert joint[1].max() < 0.5  # on the joint scale the small kernel stays small
    # the pool kernel holds both extremes, so it is the same either way; the cross kernel is not
    np.testing.assert_array_equal(joint[0], separate[0])
    assert not np.allclose(joint[1], separate[1])
    # one kernel (instruction stage): the two are the same map
    np.testing.assert_array_equal(scaled([cross], Options(scale="joint"))[0],
                                  scaled([cross], Options(scale="separate"))[0])
    with pytest.raises(OptionError, match="unknown scale 'both': use joint or separate"):
        Options(method="delift", scale="both").validate()


def test_scaling_changes_the_continual_picks():
    """FLCG subtracts nu * max_k E[i, k]: separately scaled, the weak existing kernel is stretched to
    [0, 1] and blocks the rows it barely helps (the reference's behaviour), joint it does not."""
    pool = np.array([[0.0, 0.7], [0.6, 0.0], [0.6, 0.0]])  # candidate 0 helps rows 1, 2; candidate 1 row 0
    existing = np.array([[0.0], [0.2], [0.2]])  # the existing data already helps rows 1 and 2 a little
    picks = {}
    for mode in ("joint", "separate"):
        sim, ext = scaled([pool, existing], Options(scale=mode))
        picks[mode] = fl_conditional_gain(sim, ext, 1).order.tolist()
    # joint: gains 2 (0.6 - 0.2) / 0.7 = 1.14 vs 0.7 / 0.7 = 1; separate: rows 1, 2 blocked (E -> 1)
    assert picks == {"joint": [0], "separate": [1]}


# -- end to end (tiny model) ----------------------------------------------------------------------


POOL = [{"instruction": t, "output": tiny.CORPUS[(3 * i + 1) % 11]} for i, t in enumerate(tiny.CORPUS[:8])]
TARGET = [{"instruction": tiny.CORPUS[9], "output": tiny.CORPUS[10]},
          {"instruction": tiny.CORPUS[4], "output": tiny.CORPUS[6]}]


def test_instruction_stage_is_the_same_under_both_scales(tiny_lm, tmp_path):
    runs = [select(POOL, method="delift", budget=3, lm=tiny_lm, cache_dir=str(tmp_path), scale=s)
            for s in ("joint", "separate")]
    assert runs[0].order.tolist() == runs[1].order.tolist()
    np.testing.assert_allclose(runs[0].columns["gain"], runs[1].columns["gain"], rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("knn", [0, 3])
def test_task_stage_additive_uses_the_targets_x_pool_kernel(tiny_lm, tmp_path, knn, monkeypatch):
    from tunesift.methods import delift as dm
    from tunesift.scoring import embedding as emb
    from tunesift.selection import submodular as sm

    seen = []
    real = dm.stage_objective
    monkeypatch.setattr(dm, "stage_objective", lambda S, Q, *a, **k: seen.append(Q) or real(S, Q, *a, **k))
    sel = select(POOL, target=TARGET, method="delift", stage="task", mi_form="additive", budget=3, knn=knn,
                 lm=tiny_lm, cache_dir=str(tmp_path), token_budget=4096)
    [Q] = seen
    assert Q.shape == (2, 8)
    # recomputed by hand: UF(targets = target set, examples = pool), scaled jointly with the pool kernel
    r = renderer_for(tiny_lm, "auto", 2048)
    pool, tgt = sel.records, as_records(TARGET, source="<target>")
    pattern = cross_pattern = None
    if knn:
        e_pool, e_tgt = emb.embed_records(pool, cache_dir=str(tmp_path)), emb.embed_records(tgt, cache_dir=str(tmp_path))
        pattern = emb.ann_knn_pattern(e_pool, e_pool, knn, exclude_self=True, method="auto", seed=0)
        cross_pattern = emb.ann_knn_pattern(e_tgt, e_pool, knn, exclude_self=False, method="auto", seed=0)
        assert Q.nnz == 2 * knn
    uf = utility_kernel(tiny_lm, r, pool, pool, pairs=pattern, cache_dir=False).values()
    uf_t = utility_kernel(tiny_lm, r, tgt, pool, pairs=cross_pattern, same=False, exclude_diagonal=False,
                          cache_dir=False).values()
    sim, t_sim = scaled([uf, uf_t], Options(knn=knn))  # a kNN kernel is clipped, a dense one min-maxed
    want = sm.fl_mutual_information(self_covering(sim), t_sim, 3, form="additive")  # each pick covers itself
    assert sel.order.tolist() == want.order.tolist()
    got = Q.toarray() if sp.issparse(Q) else Q
    np.testing.assert_allclose(got, t_sim.toarray() if sp.issparse(t_sim) else t_sim, atol=1e-5)


def test_selection_kernel_scales_as_select_does():
    """The benchmarks' selection_kernel must ship select's scaling: a kNN kernel clipped at 0, a
    learned kernel over every pair (sparse, --knn 0) min-maxed like a dense one."""
    rng = np.random.default_rng(0)
    uf = rng.normal(size=(6, 6))
    np.fill_diagonal(uf, np.nan)
    dense = np.nan_to_num(uf)
    full = sp.csr_matrix(dense)  # every off-diagonal pair held: a learned kernel with --knn 0
    want = self_covering(scaled([uf], Options(knn=0))[0])
    np.testing.assert_allclose(selection_kernel(uf), want, atol=1e-6)
    np.testing.assert_allclose(selection_kernel(full, knn=False).toarray(), want, atol=1e-6)
    clipped = self_covering(scaled([full], Options(knn=3))[0]).toarray()
    np.testing.assert_allclose(selection_kernel(full).toarray(), clipped, atol=1e-6)  # sparse: kNN
    assert not np.allclose(clipped, want)  # the two scalings differ here: the test can tell them apart


@pytest.mark.parametrize("knn,copies", [(0, 1), (3, 1), (3, 2)])
def test_a_repeated_record_is_never_scored_as_its_copys_example(tiny_lm, tmp_path, knn, copies, monkeypatch):
    """Only i == j was excluded: a row repeated in the file had its copy among its nearest (cosine 1)
    and was scored as "copy the answer", the largest utility there is, which set the kernel's scale
    and put every repeated record into the first picks. Copies are now left out like the diagonal
    and cover each other as a record covers itself."""
    import scipy.sparse as sp

    from tunesift.methods import delift as dm
    from tunesift.scoring import utility as ut

    pool = POOL + [dict(POOL[2]) for _ in range(copies)]  # records 8 (and 9) repeat record 2
    n, group = len(pool), [2, *range(8, len(pool))]
    seen, sims = [], []
    real_kernel, real_objective = ut.utility_kernel, dm.stage_objective
    monkeypatch.setattr(ut, "utility_kernel", lambda *a, **k: seen.append(k.get("pairs")) or real_kernel(*a, **k))
    monkeypatch.setattr(dm, "stage_objective", lambda S, *a, **k: sims.append(S) or real_objective(S, *a, **k))
    select(pool, method="delift", budget=3, knn=knn, lm=tiny_lm, cache_dir=str(tmp_path), token_budget=4096)
    [pairs], [sim] = seen, sims
    sim = sim.toarray() if sp.issparse(sim) else sim
    if knn:  # the pattern leaves out each record's copies and still gives it k others
        pairs = sp.csr_matrix(pairs)
        assert not any(pairs[i, j] for i in group for j in group)
        np.testing.assert_array_equal(np.diff(pairs.indptr), np.full(n, knn))
    else:  # dense: scored, then NaN like the diagonal, so 0 after scaling unless linked below
        assert pairs is None
    others = [j for j in range(n) if j not in group]
    best = max(sim[2, j] for j in others)
    assert sim[2, 2] == best and all(sim[2, c] == best for c in group[1:])  # a pick of 2 covers its copies
    assert all(sim[c, 2] == sim[c, c] == max(sim[c, j] for j in others) for c in group[1:])
    assert all(sim[i, j] == 0 for i in group[1:] for j in group[1:] if i != j)  # copies link to the first only


def test_the_learned_utility_never_labels_a_copy_pair(tiny_lm, tmp_path, monkeypatch):
    """Labels on copy pairs would teach the surrogate "copy the answer"; with every pair a candidate
    (--knn 0) they were candidates too."""
    import scipy.sparse as sp

    from tunesift.scoring import utility as ut

    pool = POOL + [dict(POOL[2])]
    seen = []
    real = ut.utility_kernel
    monkeypatch.setattr(ut, "utility_kernel", lambda *a, **k: seen.append(k.get("pairs")) or real(*a, **k))
    select(pool, method="delift", budget=3, knn=0, utility="learned", label_fraction=0.5, lm=tiny_lm,
           cache_dir=str(tmp_path), token_budget=4096)
    [labels] = seen
    labels = sp.csr_matrix(labels)
    assert labels.nnz > 25 and not labels[2, 8] and not labels[8, 2] and not labels.diagonal().any()
