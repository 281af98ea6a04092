"""How far does each pick of an evidence experiment get on exact DELIFT's own objective? (issue 17)

Learned and exact DELIFT train worse than random in the continual bench; the cells alone do not
say whether a pick is a poor maximiser of DELIFT's objective or the objective itself rewards
records the test does not. This reads exact DELIFT's kernels for one seed from the grid's kept
score cache (nothing is scored where the cache holds them; ``python bench/evidence.py precompute
EXP --only delift`` fills it), rebuilds the objective the stage maximises
(:func:`tunesift.methods.delift.stage_objective`: FL, FLMI against the target set, FLCG against
the existing data) and scores every cell's pick of that seed and budget on it
(:func:`tunesift.selection.objectives.set_value`), beside the mean of ``--draws`` uniform random
picks, and next to each pick's loss against random's cell of the same seed (with their rank
correlation over the picks). A pick's share of the random-to-exact gap, ``(f(A) - f(random)) / (f(exact) - f(random))``,
is issue 14's measure for the learned surrogate; exact DELIFT's own cell is 1 by construction (the
script checks that its greedy reproduces the cell's pick).

    python bench/pick_objective.py continual --seed 0

Figures and the command are in docs/results.md (the Continual bullet of "What each experiment says").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evidence as ev  # noqa: E402

from tunesift.machine import banner  # noqa: E402
from tunesift.selection.objectives import set_value  # noqa: E402


def gap_share(value: float, random_mean: float, exact: float) -> float:
    """``(value - random_mean) / (exact - random_mean)``: 0 at random's mean, 1 at the exact pick
    (NaN where the exact pick does no better than random)."""
    gap = exact - random_mean
    return (value - random_mean) / gap if gap > 0 else float("nan")


def random_values(objective, n: int, k: int, draws: int, seed: int = 0) -> np.ndarray:
    """The objective at ``draws`` uniform random picks of ``k`` of ``n`` candidates, (draws,)."""
    rng = np.random.default_rng(seed)
    return np.array([set_value(objective, rng.choice(n, size=k, replace=False)) for _ in range(draws)])


def pick_rows(objective, picks: dict[str, np.ndarray], exact: np.ndarray, n: int, draws: int) -> list[dict]:
    """One row per pick (``picks``: name -> (k,) pool indices, all of the exact pick's size):
    its objective and share of the random-to-exact gap, exact greedy and random's mean first."""
    k = len(exact)
    rand = random_values(objective, n, k, draws)
    f_exact, f_rand = set_value(objective, exact), float(rand.mean())
    rows = [{"pick": "exact greedy", "value": f_exact, "share": 1.0},
            {"pick": f"random ({draws} draws, sd {rand.std():.3f})", "value": f_rand, "share": 0.0}]
    for name, cols in picks.items():
        f = set_value(objective, cols)
        rows.append({"pick": name, "value": f, "share": gap_share(f, f_rand, f_exact)})
    return rows


def loss_vs_random(cells: list[dict]) -> dict[str, dict[str, float]]:
    """Each cell's loss (and GSM8K loss, where every cell has it) minus random's cell among
    ``cells`` (one seed and budget): method -> metric -> difference; {} without a random cell."""
    metrics = [m for m in ("loss", "loss@gsm8k") if all(m in c["metrics"] for c in cells)]
    ref = next((c["metrics"] for c in cells if c["method"] == "random"), None)
    return {c["method"]: {m: c["metrics"][m] - ref[m] for m in metrics} for c in cells} if ref else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", choices=("instruction", "task", "noise", "continual"))
    ap.add_argument("--seed", type=int, default=0, help="the cells' seed (continual: its stage-1 model scores)")
    ap.add_argument("--draws", type=int, default=200, help="random picks averaged for the gap's origin")
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--shared", default="../shared/datasets")
    ap.add_argument("--knn", type=int, default=16)
    a = ap.parse_args(argv)
    print(banner(), flush=True)
    import tunesift.methods.delift as dm
    from tunesift.bench import select_for_cell

    # the CPU grid's settings for exact DELIFT, seeds 0..seed, from evidence.py's own command line
    args = ev.arg_parser().parse_args(["run", a.experiment, "--only", "delift", "--seeds", str(a.seed + 1),
                                       "--knn", str(a.knn), "--device", "cpu", "--work", a.work,
                                       "--results", a.results, "--shared", a.shared])
    data, root, caches, kept = ev.folders(args)
    ev.prepared(args, data)
    cfg = ev.config(a.experiment, data, caches, args, kept)
    cfg.select_options["dtype"] = "float32"  # as the CPU grid's cells and precompute score
    sets = ev.selection_sets(cfg)
    seen: dict = {}
    greedy = dm.submodular_pick

    def keep_kernels(sim, cross, k, opt):  # the kernels exact DELIFT's selection maximises over
        seen.update(sim=sim, cross=cross, opt=opt)
        return greedy(sim, cross, k, opt)

    dm.submodular_pick = keep_kernels
    try:
        _, _, counts = select_for_cell(cfg, "delift", cfg.budgets[0], a.seed, sets, None, out=root / a.experiment)
    finally:
        dm.submodular_pick = greedy
    print(f"exact DELIFT's kernels: cache blocks read {counts['cached']}, scored {counts['written']}", flush=True)
    ids = [r.id for r in sets["train"]]
    index = {rid: i for i, rid in enumerate(ids)}
    objective = dm.stage_objective(seen["sim"], seen["cross"], seen["opt"])
    cells = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((root / a.experiment / "cells").glob("*.json"))]
    for budget in cfg.budgets:
        k = ev.resolve_budget(budget, len(ids))
        mine = [c for c in cells if c["seed"] == a.seed and c["budget"] == budget and len(c.get("selected_ids") or ()) == k]
        if not mine:
            continue
        exact = np.sort(greedy(seen["sim"], seen["cross"], k, seen["opt"]).order)
        picks = {c["method"]: np.array([index[i] for i in c["selected_ids"]]) for c in mine}
        if "delift" in picks and not np.array_equal(np.sort(picks["delift"]), exact):
            print(f"warning: the greedy's {k} differ from exact DELIFT's cell at {budget}", flush=True)
        print(f"\n{a.experiment}, seed {a.seed}, budget {budget} ({k} of {len(ids)}), objective "
              f"{seen['opt'].stage} (f of each pick; share of the random-to-exact gap)")
        trained = loss_vs_random(mine)
        metrics = list(next(iter(trained.values()), {}))
        print(f"  {'pick':<32} {'f(A)':>10}   share" + "".join(f"   {m + ' vs random':>22}" for m in metrics))
        rows = pick_rows(objective, {m: p for m, p in picks.items() if m != "delift"}, exact, len(ids), a.draws)
        for row in rows:
            name = "delift" if row["pick"] == "exact greedy" else row["pick"]
            diffs = "".join(f"   {trained[name][m]:+22.4f}" if name in trained else "" for m in metrics)
            print(f"  {row['pick']:<32} {row['value']:10.3f}   {row['share']:+.2f}{diffs}")
        named = [r for r in rows if (r["pick"] == "exact greedy" and "delift" in trained) or r["pick"] in trained]
        for m in metrics:  # does a higher objective go with a lower loss than random's, over these picks?
            x = [r["share"] for r in named]
            y = [trained["delift" if r["pick"] == "exact greedy" else r["pick"]][m] for r in named]
            if len(x) > 2:
                print(f"  Spearman(share, {m} vs random) over {len(x)} picks: {spearmanr(x, y).statistic:+.2f}"
                      " (negative: a pick DELIFT's objective rates higher trains to a lower loss)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
