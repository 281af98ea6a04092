"""Greedy maximisation of facility-location objectives (DELIFT's selection step), numpy only.

The public face of three modules that keep the parts apart (as apricot keeps functions apart
from optimizers):

* :mod:`tunesift.selection.kernels`: validation of kernels and scalar options;
* :mod:`tunesift.selection.objectives`: FL, FL mutual information (FLMI) and FL conditional gain
  (FLCG) as one :class:`~tunesift.selection.objectives.FLObjective`, with the formulas and
  conventions (kernel ``S`` of shape (n targets, m candidates), dense or CSR, entries >= 0);
* :mod:`tunesift.selection.optimizers`: naive, lazy and stochastic greedy over any of them
  (ties to the lowest index; lazy is pick-for-pick identical to naive), with the memory costs.

Each function here validates its arguments (errors in argument order, as
:class:`~tunesift.errors.OptionError`), builds the objective and runs the optimiser::

    facility_location(S, k)           = maximize(fl_objective(S), k)
    fl_mutual_information(S, Q, k)    = maximize(flmi_objective(S, Q, eta=, form=), k)
    fl_conditional_gain(S, E, k)      = maximize(flcg_objective(S, E, nu=), k)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tunesift.selection.objectives import FLObjective, fl_objective, flcg_objective, flmi_objective
from tunesift.selection.optimizers import GreedyResult, check_options, maximize

__all__ = [
    "GreedyResult",
    "facility_location",
    "fl_conditional_gain",
    "fl_mutual_information",
]


def _maximize(obj: FLObjective, budget: int, opts: tuple[str, float, int], stop: bool) -> GreedyResult:
    optimizer, epsilon, seed = opts
    return maximize(obj, budget, optimizer=optimizer, epsilon=epsilon, seed=seed, stop_if_zero_gain=stop)


def facility_location(
    S: np.ndarray | sp.spmatrix,
    budget: int,
    *,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    init: np.ndarray | None = None,
    stop_if_zero_gain: bool = False,
) -> GreedyResult:
    """Greedily maximise ``f(A) = sum_i max_{j in A} S[i, j]`` with ``|A| <= budget``.

    ``S``: (n_targets, n_candidates) non-negative kernel, dense or sparse (CSR; missing = 0).
    ``init``: optional (n_targets,) non-negative starting maxima ``c``; the maximised function is
    then ``sum_i max(0, max_{j in A} S[i, j] - c_i)``, which is also the reported objective.
    ``optimizer``: "lazy" (exact, fast), "naive" (exact, from scratch) or "stochastic"
    (``epsilon`` and ``seed`` apply). Ties go to the lowest candidate index.
    """
    opts = check_options(optimizer, epsilon, seed)
    return _maximize(fl_objective(S, init, budget=budget), budget, opts, stop_if_zero_gain)


def fl_mutual_information(
    S: np.ndarray | sp.spmatrix,
    Q: np.ndarray | sp.spmatrix,
    budget: int,
    *,
    eta: float = 1.0,
    form: str = "min",
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    stop_if_zero_gain: bool = False,
) -> GreedyResult:
    """Greedily maximise facility-location mutual information with a query set.

    ``form="min"`` (submodlib's FL1MI): ``I(A; Q) = sum_i min(max_{j in A} S[i, j], eta * q_i)``
    with ``q_i = max_q Q[i, q]``; ``S``: (n, m), ``Q``: (n, n_query).
    ``form="additive"`` (DELIFT's printed form): ``f(A) = sum_i max_{j in A} S[i, j] + eta *
    sum_{j in A} max_q Q[q, j]``; ``S`` must be square (n, n) with rows and columns the same pool
    and ``Q``: (n_query, n), the queries as targets: ``Q[q, j]`` is how much candidate ``j`` helps
    query ``q`` (the paper's ``max_{i in D_T} s_ij``). The objective reported is ``I(A; Q)``
    resp. ``f(A)``.
    """
    opts = check_options(optimizer, epsilon, seed)
    return _maximize(flmi_objective(S, Q, eta=eta, form=form, budget=budget), budget, opts, stop_if_zero_gain)


def fl_conditional_gain(
    S: np.ndarray | sp.spmatrix,
    E: np.ndarray | sp.spmatrix,
    budget: int,
    *,
    nu: float = 1.0,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    stop_if_zero_gain: bool = False,
) -> GreedyResult:
    """Greedily maximise the FL conditional gain ``f(A | E)`` (submodlib's FLCG).

    ``f(A | E) = sum_i max(0, max_{j in A} S[i, j] - nu * max_k E[i, k])``; ``S``: (n, m),
    ``E``: (n, n_existing) similarities of each target to the already-held data (n_existing may
    be 0). The objective reported is ``f(A | E)``.
    """
    opts = check_options(optimizer, epsilon, seed)
    return _maximize(flcg_objective(S, E, nu=nu, budget=budget), budget, opts, stop_if_zero_gain)
