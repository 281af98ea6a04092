"""Tests for tunesift.selection.submodular (objectives in selection.objectives, optimisers in
selection.optimizers): greedy FL / FLMI / FLCG against plain references."""

from __future__ import annotations

import itertools
import math
import zlib

import numpy as np
import pytest
import scipy.sparse as sp

from tunesift.errors import OptionError
from tunesift.selection import optimizers
from tunesift.selection.submodular import (
    GreedyResult,
    facility_location,
    fl_conditional_gain,
    fl_mutual_information,
)

# --------------------------------------------------------------------------------------------
# plain definitions and a plain reference greedy


def f_fl(S: np.ndarray, A: list[int], c: np.ndarray | None = None) -> float:
    """sum_i max(0, max_{j in A} S[i, j] - c_i) (c = 0: plain FL)."""
    c = np.zeros(S.shape[0]) if c is None else c
    best = S[:, A].max(axis=1) if A else np.zeros(S.shape[0])
    return float(np.maximum(best - c, 0.0).sum())


def f_mi_min(S: np.ndarray, Q: np.ndarray, eta: float, A: list[int]) -> float:
    best = S[:, A].max(axis=1) if A else np.zeros(S.shape[0])
    return float(np.minimum(best, eta * Q.max(axis=1)).sum())


def f_mi_add(S: np.ndarray, T: np.ndarray, eta: float, A: list[int]) -> float:
    """T: (n_query, n), queries as targets: the bonus of j is max_q T[q, j]."""
    return f_fl(S, A) + eta * float(T.max(axis=0)[A].sum())


def f_cg(S: np.ndarray, E: np.ndarray, nu: float, A: list[int]) -> float:
    return f_fl(S, A, nu * E.max(axis=1))


def ref_greedy(f, m: int, k: int) -> tuple[list[int], list[float]]:
    """Recompute f(A + [j]) - f(A) for every j each step; first (lowest) index wins ties."""
    A: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        base = f(A)
        best_j, best_g = -1, -math.inf
        for j in range(m):
            if j in A:
                continue
            g = f(A + [j]) - base
            if g > best_g:
                best_j, best_g = j, g
        A.append(best_j)
        gains.append(best_g)
    return A, gains


def rand_kernel(rng: np.random.Generator, n: int, m: int, density: float = 1.0) -> np.ndarray:
    S = rng.random((n, m))
    if density < 1.0:
        S *= rng.random((n, m)) < density
    return S


CASES = ["fl", "fl_init", "mi_min", "mi_add", "cg"]


def run_case(case: str, Sx, S: np.ndarray, aux: dict, k: int, **kw) -> GreedyResult:
    if case == "fl":
        return facility_location(Sx, k, **kw)
    if case == "fl_init":
        return facility_location(Sx, k, init=aux["c"], **kw)
    if case == "mi_min":
        return fl_mutual_information(Sx, aux["Q"], k, eta=aux["eta"], **kw)
    if case == "mi_add":
        return fl_mutual_information(Sx, aux["T"], k, eta=aux["eta"], form="additive", **kw)
    return fl_conditional_gain(Sx, aux["E"], k, nu=aux["nu"], **kw)


def objective_fn(case: str, S: np.ndarray, aux: dict):
    return {
        "fl": lambda A: f_fl(S, A),
        "fl_init": lambda A: f_fl(S, A, aux["c"]),
        "mi_min": lambda A: f_mi_min(S, aux["Q"], aux["eta"], A),
        "mi_add": lambda A: f_mi_add(S, aux["T"], aux["eta"], A),
        "cg": lambda A: f_cg(S, aux["E"], aux["nu"], A),
    }[case]


def make_aux(rng: np.random.Generator, n: int) -> dict:
    return {
        "c": 0.6 * rng.random(n),
        "Q": rng.random((n, 4)),
        "eta": 0.7,
        "E": rng.random((n, 3)),
        "nu": 0.8,
        "T": rng.random((4, n)),  # additive FLMI: queries x pool
    }


# --------------------------------------------------------------------------------------------
# (a) + (b): pick sequence equals the plain reference greedy; objective equals the definition


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["dense64", "dense32", "csr"])
@pytest.mark.parametrize("optimizer", ["lazy", "naive"])
def test_matches_reference_greedy(case: str, kind: str, optimizer: str) -> None:
    # a seed stable across processes (hash() of strings is salted per process)
    rng = np.random.default_rng(zlib.crc32(f"{case}/{kind}".encode()))
    n = 40
    m = n if case == "mi_add" else 150  # m > 2 * 64: several blocks of the running maximum
    if case == "mi_add":
        n = m = 150
    S = rand_kernel(rng, n, m, density=0.3 if kind == "csr" else 1.0)
    if kind == "dense32":
        S = S.astype(np.float32).astype(np.float64)  # the reference sees the same values
        Sx = S.astype(np.float32)
    elif kind == "csr":
        Sx = sp.csr_matrix(S)
    else:
        Sx = S
    aux = make_aux(rng, n)
    k = 25
    f = objective_fn(case, S, aux)
    res = run_case(case, Sx, S, aux, k, optimizer=optimizer)
    order, gains = ref_greedy(f, m, k)
    assert res.order.dtype == np.int64 and res.gains.dtype == np.float64
    assert res.order.tolist() == order
    np.testing.assert_allclose(res.gains, gains, rtol=1e-9, atol=1e-9)
    # (b) the reported objective is f(A) recomputed from the definition
    assert res.objective == pytest.approx(f(res.order.tolist()), rel=1e-10, abs=1e-10)
    assert res.objective == pytest.approx(float(res.gains.sum()), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
@pytest.mark.parametrize("case", CASES)
def test_dense_row_paths(monkeypatch: pytest.MonkeyPatch, case: str, fraction: float) -> None:
    """Rows kept dense for ever (0.0) or moved to the live-entry store at first touch (1.0)."""
    monkeypatch.setattr(optimizers, "CONVERT_FRACTION", fraction)
    rng = np.random.default_rng(7)
    n = m = 90
    S = rand_kernel(rng, n, m).astype(np.float32).astype(np.float64)
    aux = make_aux(rng, n)
    f = objective_fn(case, S, aux)
    res = run_case(case, S.astype(np.float32), S, aux, 30)
    assert res.order.tolist() == ref_greedy(f, m, 30)[0]
    assert res.objective == pytest.approx(f(res.order.tolist()), rel=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_full_budget_through_zero_gain_plateau(case: str) -> None:
    """budget = m: once every gain is 0 the remaining candidates follow in index order."""
    rng = np.random.default_rng(11)
    n = m = 24
    S = rand_kernel(rng, n, m, density=0.15)
    aux = make_aux(rng, n)
    f = objective_fn(case, S, aux)
    order, _ = ref_greedy(f, m, m)
    for Sx in (S, sp.csr_matrix(S)):
        lazy = run_case(case, Sx, S, aux, m)
        naive = run_case(case, Sx, S, aux, m, optimizer="naive")
        assert lazy.order.tolist() == order
        assert naive.order.tolist() == order
        assert sorted(lazy.order.tolist()) == list(range(m))


# --------------------------------------------------------------------------------------------
# (c) greedy is within 1 - 1/e of the brute-force optimum


@pytest.mark.parametrize("case", CASES)
def test_approximation_bound_brute_force(case: str) -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(40):
        n = int(rng.integers(2, 11))
        S = rand_kernel(rng, n, n, density=0.6)
        aux = make_aux(rng, n)
        f = objective_fn(case, S, aux)
        for k in range(1, min(3, n) + 1):
            opt = max(f(list(A)) for A in itertools.combinations(range(n), k))
            res = run_case(case, S, S, aux, k)
            assert res.objective <= opt + 1e-12
            assert res.objective >= (1 - 1 / math.e) * opt - 1e-12
            assert res.objective == pytest.approx(f(res.order.tolist()), abs=1e-12)
            checked += opt > 0
    assert checked > 50


# --------------------------------------------------------------------------------------------
# (d) identical picks to submodlib


def _submodlib_order(obj, k: int) -> tuple[list[int], np.ndarray]:
    out = obj.maximize(
        budget=k,
        optimizer="LazyGreedy",
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    return [int(j) for j, _ in out], np.array([g for _, g in out])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [200, 350])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_matches_submodlib(seed: int, n: int) -> None:
    submodlib = pytest.importorskip("submodlib")
    rng = np.random.default_rng(100 + seed)
    k = 30
    S = rng.random((n, n)).astype(np.float32)
    S64 = S.astype(np.float64)

    ref = submodlib.FacilityLocationFunction(n, mode="dense", sijs=S, separate_rep=False)
    order, gains = _submodlib_order(ref, k)
    ours = facility_location(S, k)
    assert ours.order.tolist() == order
    np.testing.assert_allclose(ours.gains, gains, rtol=1e-5, atol=1e-5)

    # eta = 1.2 keeps saturated rows (min(., eta * q_i) binding) rare: once several rows
    # saturate, FL1MI has exact ties, which submodlib breaks differently (see the next test).
    Q = rng.random((n, 5))
    ref = submodlib.FacilityLocationMutualInformationFunction(
        n, 5, data_sijs=S64, query_sijs=Q, magnificationEta=1.2
    )
    order, gains = _submodlib_order(ref, k)
    ours = fl_mutual_information(S64, Q, k, eta=1.2)
    assert ours.order.tolist() == order
    np.testing.assert_allclose(ours.gains, gains, rtol=1e-5, atol=1e-5)

    E = rng.random((n, 4))
    ref = submodlib.FacilityLocationConditionalGainFunction(
        n, 4, data_sijs=S64, private_sijs=E, privacyHardness=0.6
    )
    order, gains = _submodlib_order(ref, k)
    ours = fl_conditional_gain(S64, E, k, nu=0.6)
    assert ours.order.tolist() == order
    np.testing.assert_allclose(ours.gains, gains, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_submodlib_differs_only_on_exact_ties() -> None:
    """With eta = 0.9 saturation creates exact ties; where the orders first differ both picks
    have exactly the same gain, and ours is the lower index."""
    submodlib = pytest.importorskip("submodlib")
    n, k = 200, 30
    rng = np.random.default_rng(100)
    S = rng.random((n, n)).astype(np.float32).astype(np.float64)
    Q = rng.random((n, 5))
    ref = submodlib.FacilityLocationMutualInformationFunction(
        n, 5, data_sijs=S, query_sijs=Q, magnificationEta=0.9
    )
    theirs, _ = _submodlib_order(ref, k)
    ours = fl_mutual_information(S, Q, k, eta=0.9).order.tolist()
    if ours == theirs:
        pytest.skip("no tie on this data")
    t = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
    A = ours[:t]
    g_ours = f_mi_min(S, Q, 0.9, A + [ours[t]]) - f_mi_min(S, Q, 0.9, A)
    g_theirs = f_mi_min(S, Q, 0.9, A + [theirs[t]]) - f_mi_min(S, Q, 0.9, A)
    assert g_ours == pytest.approx(g_theirs, rel=1e-12)
    assert ours[t] < theirs[t]


# --------------------------------------------------------------------------------------------
# (e) lazy == naive; stochastic


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["dense32", "csr"])
def test_lazy_equals_naive(case: str, kind: str) -> None:
    rng = np.random.default_rng(21)
    n = m = 300
    S = rand_kernel(rng, n, m, density=0.05 if kind == "csr" else 1.0)
    Sx = sp.csr_matrix(S) if kind == "csr" else S.astype(np.float32)
    aux = make_aux(rng, n)
    lazy = run_case(case, Sx, S, aux, 120)
    naive = run_case(case, Sx, S, aux, 120, optimizer="naive")
    assert lazy.order.tolist() == naive.order.tolist()
    np.testing.assert_allclose(lazy.gains, naive.gains, rtol=1e-12, atol=1e-12)
    assert lazy.objective == pytest.approx(naive.objective, rel=1e-12)


def test_lazy_equals_naive_large_sparse() -> None:
    """Many candidates, few entries: blocked maximum and scatter updates are exercised."""
    rng = np.random.default_rng(5)
    n, m, k = 3000, 4000, 400
    S = sp.random(n, m, density=0.002, random_state=rng, format="csr")
    lazy = facility_location(S, k)
    naive = facility_location(S, k, optimizer="naive")
    assert lazy.order.tolist() == naive.order.tolist()
    np.testing.assert_allclose(lazy.gains, naive.gains, rtol=1e-12)


def test_stochastic_deterministic_distinct_and_sized() -> None:
    rng = np.random.default_rng(8)
    S = rng.random((200, 500)).astype(np.float32)
    a = facility_location(S, 40, optimizer="stochastic", seed=3, epsilon=0.1)
    b = facility_location(S, 40, optimizer="stochastic", seed=3, epsilon=0.1)
    c = facility_location(S, 40, optimizer="stochastic", seed=4, epsilon=0.1)
    assert a.order.tolist() == b.order.tolist()
    np.testing.assert_array_equal(a.gains, b.gains)
    assert a.order.tolist() != c.order.tolist()
    for r in (a, c):
        assert len(r.order) == 40 and len(set(r.order.tolist())) == 40
        assert r.order.min() >= 0 and r.order.max() < 500
        assert r.objective == pytest.approx(f_fl(S.astype(np.float64), r.order.tolist()))
    lazy = facility_location(S, 40)
    assert a.objective <= lazy.objective * (1 + 1e-12)
    assert a.objective >= 0.9 * lazy.objective


def test_stochastic_rejection_sampling_path() -> None:
    """Large m with a small sample: rejection sampling; still distinct, sized, deterministic."""
    rng = np.random.default_rng(9)
    S = sp.random(500, 20000, density=0.002, random_state=rng, format="csr")
    a = facility_location(S, 200, optimizer="stochastic", seed=1)
    b = facility_location(S, 200, optimizer="stochastic", seed=1)
    assert a.order.tolist() == b.order.tolist()
    assert len(set(a.order.tolist())) == 200


@pytest.mark.parametrize("case", CASES)
def test_stochastic_with_full_sample_equals_lazy(case: str) -> None:
    """ln(1/epsilon) >= k makes every sample the whole remaining set: exact greedy."""
    rng = np.random.default_rng(13)
    n = m = 80
    S = rand_kernel(rng, n, m)
    aux = make_aux(rng, n)
    k = 10
    sto = run_case(case, S, S, aux, k, optimizer="stochastic", epsilon=math.exp(-k - 1))
    lazy = run_case(case, S, S, aux, k)
    assert sto.order.tolist() == lazy.order.tolist()


# --------------------------------------------------------------------------------------------
# (f) dense and CSR agree


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("optimizer", ["lazy", "naive", "stochastic"])
def test_dense_and_csr_agree(case: str, optimizer: str) -> None:
    rng = np.random.default_rng(17)
    n = m = 250
    S = rand_kernel(rng, n, m, density=0.1)
    csr = sp.csr_matrix(S)
    csr.eliminate_zeros()
    aux = make_aux(rng, n)
    d = run_case(case, S, S, aux, 60, optimizer=optimizer, seed=2)
    s = run_case(case, csr, S, aux, 60, optimizer=optimizer, seed=2)
    assert d.order.tolist() == s.order.tolist()
    np.testing.assert_allclose(d.gains, s.gains, rtol=1e-10, atol=1e-12)


def test_rectangular_targets_and_sparse_aux() -> None:
    """S is (targets x candidates); Q / E may be sparse."""
    rng = np.random.default_rng(23)
    S = rand_kernel(rng, 70, 130)
    Q = rand_kernel(rng, 70, 6, density=0.5)
    E = rand_kernel(rng, 70, 3, density=0.5)
    a = fl_mutual_information(S, sp.csr_matrix(Q), 15, eta=0.5)
    b = fl_mutual_information(S, Q, 15, eta=0.5)
    assert a.order.tolist() == b.order.tolist()
    assert a.order.tolist() == ref_greedy(lambda A: f_mi_min(S, Q, 0.5, A), 130, 15)[0]
    c = fl_conditional_gain(S, sp.csr_matrix(E), 15, nu=1.0)
    assert c.order.tolist() == ref_greedy(lambda A: f_cg(S, E, 1.0, A), 130, 15)[0]


# --------------------------------------------------------------------------------------------
# ties, stopping, reductions, inputs untouched


def test_ties_go_to_lowest_index() -> None:
    rng = np.random.default_rng(29)
    S = rng.random((30, 12)) * 0.5
    S[:, 9] = 1.0
    S[:, 4] = 1.0  # two identical best columns
    for opt in ("lazy", "naive"):
        for Sx in (S, sp.csr_matrix(S)):
            r = facility_location(Sx, 3, optimizer=opt)
            assert r.order[0] == 4
            assert r.order[1] != 9 or r.gains[1] == 0.0


def test_lazy_equals_naive_when_a_change_is_one_ulp() -> None:
    """A row's one-ulp change used to round away in the column sum, leaving a stale, too-high gain
    marked exact: lazy then picked column 2 where naive picked column 0."""
    u = 2.0**-53
    S = np.array([[0, 0.75, 0.5 + u], [0, 1 + 2 * u, 1.0], [0.25, 0, 0.25]])
    c = np.array([0.5, 1.0, 0.0])
    for opt in ("naive", "lazy"):
        assert facility_location(S, 2, init=c, optimizer=opt).order.tolist() == [1, 0]
        assert fl_conditional_gain(S, c[:, None], 2, optimizer=opt).order.tolist() == [1, 0]


def test_no_target_rows_means_no_gain() -> None:
    for opt in ("lazy", "naive", "stochastic"):
        for S in (np.zeros((0, 5)), sp.csr_matrix((0, 5))):
            r = facility_location(S, 2, optimizer=opt, epsilon=1e-9)
            assert r.order.tolist() == [0, 1] and r.objective == 0.0


def test_all_zero_kernel_picks_in_index_order() -> None:
    S = np.zeros((5, 7))
    for opt in ("lazy", "naive", "stochastic"):
        r = facility_location(S, 4, optimizer=opt, epsilon=1e-9)
        assert r.order.tolist() == [0, 1, 2, 3]
        assert r.gains.tolist() == [0.0] * 4 and r.objective == 0.0
        assert len(facility_location(S, 4, optimizer=opt, stop_if_zero_gain=True).order) == 0


@pytest.mark.parametrize("optimizer", ["lazy", "naive", "stochastic"])
def test_stop_if_zero_gain(optimizer: str) -> None:
    S = np.zeros((6, 10))
    S[0, 3] = 0.9
    S[1, 3] = 0.2
    S[2, 7] = 0.5
    S[1, 8] = 0.4  # after 3 is picked, 8 adds 0.4 - 0.2
    eps = 1e-9  # full samples, so stochastic is exact here too
    r = facility_location(S, 6, optimizer=optimizer, stop_if_zero_gain=True, epsilon=eps)
    assert r.order.tolist() == [3, 7, 8]
    np.testing.assert_allclose(r.gains, [1.1, 0.5, 0.2])
    full = facility_location(S, 6, optimizer=optimizer, epsilon=eps)
    assert full.order.tolist() == [3, 7, 8, 0, 1, 2]
    assert full.objective == pytest.approx(1.8)


def test_reductions_between_objectives() -> None:
    rng = np.random.default_rng(31)
    S = rand_kernel(rng, 60, 60)
    fl = facility_location(S, 12)
    assert fl_conditional_gain(S, np.zeros((60, 2)), 12).order.tolist() == fl.order.tolist()
    assert fl_conditional_gain(S, np.zeros((60, 0)), 12).order.tolist() == fl.order.tolist()
    big = fl_mutual_information(S, np.ones((60, 1)), 12, eta=10.0)
    assert big.order.tolist() == fl.order.tolist()
    assert big.objective == pytest.approx(fl.objective)
    c = rng.random(60) * 0.8
    a = facility_location(S, 12, init=c)
    b = fl_conditional_gain(S, c[:, None], 12, nu=1.0)
    assert a.order.tolist() == b.order.tolist()
    assert a.objective == pytest.approx(b.objective)


def test_inputs_not_modified() -> None:
    rng = np.random.default_rng(37)
    S = rng.random((50, 50)).astype(np.float32)
    Q, E, c = rng.random((50, 3)), rng.random((50, 2)), rng.random(50) * 0.5
    csr = sp.csr_matrix(S * (S > 0.7))
    copies = [S.copy(), Q.copy(), E.copy(), c.copy(), csr.toarray()]
    facility_location(S, 20, init=c)
    fl_mutual_information(S, Q, 20)
    fl_conditional_gain(csr, E, 20)
    facility_location(csr, 20)
    for before, after in zip(copies, [S, Q, E, c, csr.toarray()], strict=True):
        np.testing.assert_array_equal(before, after)


def test_other_dtypes_are_accepted() -> None:
    S = np.array([[1, 0, 2], [0, 3, 1]], dtype=np.int32)
    r = facility_location(S, 2)  # columns 1 and 2 tie at 3: lowest index first
    assert r.order.tolist() == [1, 2] and r.objective == pytest.approx(5.0)
    assert facility_location(S.astype(bool), 1).order.tolist() == [2]
    assert facility_location(sp.csr_matrix(S.astype(bool)), 1).order.tolist() == [2]  # as the dense
    assert facility_location(np.asfortranarray(S.astype(np.float32)), 2).order.tolist() == [1, 2]


# --------------------------------------------------------------------------------------------
# (g) validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda S: facility_location(-S, 2), "negative"),
        (lambda S: facility_location(np.where(S > 0.5, np.nan, S), 2), "NaN"),
        (lambda S: facility_location(np.where(S > 0.5, np.inf, S), 2), "infinite"),
        (lambda S: facility_location(S[0], 2), "2-D"),
        (lambda S: facility_location(S, 0), "budget"),
        (lambda S: facility_location(S, 11), "budget"),
        (lambda S: facility_location(S, 2.0), "budget"),
        (lambda S: facility_location(S, True), "budget"),
        (lambda S: facility_location(S, 2, optimizer="fast"), "optimizer"),
        (lambda S: facility_location(S, 2, epsilon=0.0), "epsilon"),
        (lambda S: facility_location(S, 2, epsilon=1.5), "epsilon"),
        (lambda S: facility_location(S, 2, seed=1.5), "seed"),
        (lambda S: facility_location(S, 2, init=np.ones(3)), "init"),
        (lambda S: facility_location(S, 2, init=-np.ones(8)), "init"),
        (lambda S: facility_location(sp.csr_matrix(-S), 2), "negative"),
        (lambda S: facility_location(sp.csr_matrix(S * np.nan), 2), "NaN"),
        (lambda S: facility_location(S.astype(complex), 2), "real"),
        (lambda S: fl_mutual_information(S, np.ones((7, 2)), 2), "rows"),
        (lambda S: fl_mutual_information(S, -np.ones((8, 2)), 2), "negative"),
        (lambda S: fl_mutual_information(S, np.ones((8, 2)), 2, eta=-1.0), "eta"),
        (lambda S: fl_mutual_information(S, np.ones((8, 2)), 2, form="max"), "form"),
        (lambda S: fl_mutual_information(S, np.ones((8, 2)), 2, form="additive"), "square"),
        (lambda S: fl_conditional_gain(S, np.ones((9, 2)), 2), "rows"),
        (lambda S: fl_conditional_gain(S, np.ones((8, 2)), 2, nu=float("nan")), "nu"),
    ],
)
def test_validation(call, match: str) -> None:
    S = np.random.default_rng(0).random((8, 10))
    with pytest.raises(OptionError, match=match):
        call(S)


def test_error_messages_are_one_line() -> None:
    with pytest.raises(OptionError) as info:
        facility_location(np.ones((3, 3)), 4)
    assert "\n" not in str(info.value) and "3" in str(info.value)


def test_lazy_equals_naive_on_float32_kernels_with_a_wide_value_range() -> None:
    """The float32 update subtracted each row's old maximum in float32: with a tiny old maximum a
    term rounded by 2^-24 of its size, far outside the error window, and lazy picked a worse set
    (and broke ties away from the lowest index)."""
    t = 2.0**-25
    S = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0], [0, .5 + 2**-24, 0], [0, 0, .5]],
                 np.float32)
    E = np.array([[0], [0], [t], [t], [t], [0], [0]], np.float32)
    assert fl_conditional_gain(S, E, 2, optimizer="naive").order.tolist() == [0, 1]
    assert fl_conditional_gain(S, E, 2, optimizer="lazy").order.tolist() == [0, 1]
    rng = np.random.default_rng(0)
    for trial in range(60):  # min-max scaled float32 kernels with plateaus of zero gain
        n = int(rng.integers(8, 40))
        K = rng.random((n, n)).astype(np.float32) ** 3
        K[K < 0.3] = 0.0
        np.fill_diagonal(K, 1.0)
        k = int(rng.integers(2, n))
        assert facility_location(K, k, optimizer="lazy").order.tolist() == \
            facility_location(K, k, optimizer="naive").order.tolist(), trial


def test_a_negative_seed_or_a_kernel_too_large_to_sum_is_an_option_error() -> None:
    """seed=-1 crashed lazy greedy (numpy refused it in a generator lazy never uses); entries of
    1e307 overflowed the rounding bound to inf and indexed past the candidates (IndexError)."""
    from tunesift.selection.partitioned import partitioned_facility_location

    with pytest.raises(OptionError, match="seed must be >= 0"):
        facility_location(np.eye(3), 2, seed=-1)
    with pytest.raises(OptionError, match="seed must be >= 0"):
        partitioned_facility_location(np.eye(4), 2, partitions=2, seed=-1)
    with pytest.raises(OptionError, match=r"has an entry of 1e\+307; kernels must be <= 1e\+200"):
        facility_location(np.full((4, 3), 1e307), 2)
    assert list(facility_location(np.full((4, 3), 1e200), 2).order) == [0, 1]


@pytest.mark.parametrize("sparse", [False, True])
def test_set_value_scores_any_pick_on_each_objective(sparse: bool) -> None:
    """set_value(objective, A) is the plain definition of FL, FL1MI, additive FLMI and FLCG at A,
    for picks the greedy did not make, in any order, and the greedy's own reported objective."""
    from tunesift.selection.objectives import (
        fl_objective,
        flcg_objective,
        flmi_objective,
        set_value,
    )

    rng = np.random.default_rng(7)
    n, m = 12, 12
    S = rng.random((n, m)) * (rng.random((n, m)) < 0.6)
    Q = rng.random((n, 3))
    T = rng.random((3, n))
    E = rng.random((n, 4)) * 0.8
    K = sp.csr_matrix(S) if sparse else S
    cases = [
        (fl_objective(K), lambda A: f_fl(S, A)),
        (flmi_objective(K, Q, eta=0.7), lambda A: f_mi_min(S, Q, 0.7, A)),
        (flmi_objective(K, T, eta=0.5, form="additive"), lambda A: f_mi_add(S, T, 0.5, A)),
        (flcg_objective(K, E, nu=0.9), lambda A: f_cg(S, E, 0.9, A)),
    ]
    for obj, plain in cases:
        for A in ([], [3], [5, 0, 9], [11, 2, 2, 7]):
            assert set_value(obj, np.array(A, dtype=np.int64)) == pytest.approx(plain(sorted(set(A))), abs=1e-12)
    res = fl_conditional_gain(K, E, 4, nu=0.9)
    assert set_value(flcg_objective(K, E, nu=0.9), res.order[::-1]) == pytest.approx(res.objective, abs=1e-12)
    with pytest.raises(ValueError, match="columns must lie in"):
        set_value(fl_objective(K), np.array([m]))
