"""Pair a grid's selector cells with reference cells rerun on their own machine (issue 17).

A grid that spans machines pairs some selector cells with random cells of the same seed made on
another CPU (and, in a sequential continual bench, from another stage-1 model: stage 1 is not kept
under version control, so a new machine trains it again). Those differences then include the
change of machine. This reruns nothing: given the grid's folder and a folder of reference cells
(``random`` and ``base``) made where the selector cells were, it

- replaces the grid's reference cells with the rerun ones where both exist (same method, budget
  and seed),
- keeps only the selector cells made on the same machine and stage-1 model as their seed's
  rerun random cell (the others would now pair across machines the other way), and
- prints the paired comparison with random (:func:`tunesift.bench_tables.aggregate`) of those
  cells, and each rerun cell against the grid's own of the same method, budget and seed (what the
  change of machine alone moves; a rerun selector cell, made where the references ran, measures
  the same thing the other way round).

    python bench/same_machine.py bench/results/evidence/continual bench/results/continual-epyc-check

Figures and the command are in docs/results.md ("Continual bench").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tunesift.bench import load_cells
from tunesift.bench_stats import REFERENCES, budget_key, by_seed, paired_differences
from tunesift.bench_tables import aggregate, machine_kind


def made_on(cell: dict) -> tuple[str, str | None]:
    """Where a cell was made, as far as pairing is concerned: the machine kind and the stage-1 model."""
    return machine_kind(cell), cell.get("stage1_digest")


def _key(cell: dict) -> tuple:
    return cell["method"], budget_key(cell["budget"]), cell["seed"]


def repaired(grid: list[dict], rerun: list[dict]) -> tuple[list[dict], list[dict]]:
    """(cells, dropped): ``grid`` with its reference cells replaced by ``rerun``'s of the same
    (method, budget, seed), keeping only the selector cells made where their seed's rerun random
    cell of the same budget was (:func:`made_on`); ``dropped``: the selector cells left out
    (including every selector cell whose budget and seed have no rerun random cell)."""
    fresh = {_key(c): c for c in rerun if c["method"] in REFERENCES}
    cells, dropped = [], []
    for c in grid:
        if c["method"] in REFERENCES:
            if _key(c) not in fresh:
                cells.append(c)
            continue
        rand = fresh.get(("random", budget_key(c["budget"]), c["seed"]))
        (cells if rand is not None and made_on(rand) == made_on(c) else dropped).append(c)
    return cells + list(fresh.values()), dropped


def rerun_shift(grid: list[dict], rerun: list[dict]) -> dict[tuple, dict[str, tuple[float, float, int]]]:
    """Each rerun method and budget against the grid's own cells of the same seeds:
    ``{(method, budget): {metric: (mean diff, se, n)}}`` (:func:`paired_differences`, rerun minus
    grid): what the change of machine and stage-1 model alone moves (same method, same seed)."""
    out = {}
    for method, budget in dict.fromkeys((c["method"], c["budget"]) for c in rerun):
        if diffs := paired_differences(by_seed(rerun, method, budget), by_seed(grid, method, budget)):
            out[(method, "all" if budget is None else budget)] = diffs
    return out


def _num(x: float, sign: bool = True) -> str:
    """4 decimals, or 2 significant digits where those would round a non-zero figure to 0."""
    fmt = ("+" if sign else "") + (".1e" if 0 < abs(x) < 5e-5 else ".4f")
    return format(x, fmt)


def _pm(d: float, se: float, p: float | None = None) -> str:
    """"+0.0123 ± 0.0045 (p 0.021)"; "in every seed" where the difference has no spread."""
    if se == 0:
        return f"{_num(d)} in every seed"
    text = _num(d) + (f" ± {_num(se, sign=False)}" if np.isfinite(se) else "")
    if p is None or not np.isfinite(p):
        return text
    return text + (" (p < 0.001)" if p < 0.001 else f" (p {p:.3f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", type=Path, help="the grid's bench folder (cells/*.json)")
    ap.add_argument("rerun", type=Path, help="a bench folder of cells rerun elsewhere: random/base where the selector cells ran, or the reverse")
    ap.add_argument("--metrics", default="loss,loss@gsm8k", help="comma list of metrics to print")
    a = ap.parse_args(argv)
    grid, rerun = load_cells(a.grid), load_cells(a.rerun)
    if not rerun:
        print(f"{a.rerun}: no cells", file=sys.stderr)
        return 2
    metrics = a.metrics.split(",")
    print("Rerun cells against the grid's own, same method and seeds (the change of machine and stage-1 model alone):")
    for (method, budget), diffs in rerun_shift(grid, rerun).items():
        print(f"  {method} @ {budget}: " + "; ".join(f"{m} {_pm(*diffs[m][:2])} over {diffs[m][2]} seed{'' if diffs[m][2] == 1 else 's'}"
                                                    for m in metrics if m in diffs))
    cells, dropped = repaired(grid, rerun)
    print("\nSelectors against the rerun random, same machine and stage-1 model:")
    for r in aggregate(cells):
        if r["method"] in REFERENCES or f"{metrics[0]}_vs_random" not in r:
            continue
        print(f"  {r['method']} @ {r['budget']} ({r['paired_seeds']} seed{'' if r['paired_seeds'] == 1 else 's'}): " + "; ".join(
            f"{m} {_pm(r[f'{m}_vs_random'], r[f'{m}_vs_random_se'], r.get(f'{m}_vs_random_p'))}"
            for m in metrics if f"{m}_vs_random" in r))
    print(f"\nLeft out (made elsewhere than their seed's rerun random cell, or no rerun to pair with): {len(dropped)} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
