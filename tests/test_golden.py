"""Behaviour pinned across refactors: every method's selected.jsonl and scores.parquet on a fixed
small set with the tiny model, against tests/golden/selections.json.

Picks, pick order, kept sets and every non-float column must be identical; float scores agree to a
float32 tolerance (they were computed on another CPU or thread count: tiny.assert_close_across_runs).
One exception: a greedy selection may part from the golden at a near tie (gains equal to 1e-5
relative, everything before it the same; :func:`near_tie`), where float noise picks either record.
Regenerate deliberately, only when a change of behaviour is intended and reviewed:

    TUNESIFT_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny import assert_close_across_runs

from tunesift.cli import main
from tunesift_demo import write_demo

GOLDEN = Path(__file__).parent / "golden" / "selections.json"
REGEN = os.environ.get("TUNESIFT_REGEN_GOLDEN") == "1"

# every method, every stage, each option that changes a code path: explicit, so that a change of a
# default does not move the goldens (defaults are tested where they are documented)
CASES = {
    "random": ["--method", "random"],
    "donod": ["--method", "donod", "--reduction", "mean", "--eta", "0.001"],
    "donod-sum": ["--method", "donod", "--reduction", "sum", "--eta", "0.0001", "--weights", "0.7,0.3"],
    "delift-instruction": ["--method", "delift", "--knn", "6"],
    "delift-dense": ["--method", "delift", "--knn", "0"],
    "delift-task": ["--method", "delift", "--knn", "6", "--stage", "task", "--target", "{target}"],
    "delift-continual": ["--method", "delift", "--knn", "6", "--stage", "continual", "--existing", "{existing}"],
    "delift-se": ["--method", "delift-se", "--knn", "0"],
    "delift-se-task": ["--method", "delift-se", "--knn", "0", "--stage", "task", "--target", "{target}"],
    "donod+delift": ["--method", "donod+delift", "--knn", "6", "--reduction", "mean"],
    "ifd": ["--method", "ifd"],
    "loss": ["--method", "loss"],
    "perplexity-hardest": ["--method", "perplexity", "--keep", "hardest"],
    "selectit": ["--method", "selectit"],
    "less": ["--method", "less", "--stage", "task", "--target", "{target}", "--less-dim", "64"],
    "rds": ["--method", "rds"],
    "rds-task": ["--method", "rds", "--stage", "task", "--target", "{target}"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden-data")
    write_demo(d / "pool.jsonl", n=24, corrupt=0.25, seed=11)
    write_demo(d / "target.jsonl", n=10, corrupt=0.0, seed=12)
    write_demo(d / "existing.jsonl", n=10, corrupt=0.0, seed=13)
    return d


def outputs(out: Path) -> dict:
    """What a user gets: the selected rows, and every scores.parquet column."""
    table = pq.read_table(out / "scores.parquet").to_pydict()
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"selected": selected, "column_names": list(table), "columns": table}


def run_case(name: str, data: Path, tiny_dir: Path, tmp: Path) -> dict:
    args = [str(a).format(target=data / "target.jsonl", existing=data / "existing.jsonl") for a in CASES[name]]
    out = tmp / name
    rc = main(["select", str(data / "pool.jsonl"), "--model", str(tiny_dir), "--budget", "8", "--out", str(out),
               "--cache-dir", str(tmp / "cache"), "--token-budget", "512", "-q", *args])
    assert rc == 0, name
    return outputs(out)


def _is_float_column(values: list) -> bool:
    return any(isinstance(v, float) for v in values)


# float columns computed on another CPU or thread count agree to this: float32 noise
FLOAT_TOL = {"rtol": 1e-4, "atol": 1e-5}


def near_tie(got: dict, want: dict, rtol: float = 1e-5) -> bool:
    """Whether two greedy selections part at a near tie: every pick before the first differing
    rank is the same record with the same gain (float32 tolerance), and at that rank the two
    picks' gains agree within ``rtol``. Two candidates whose gains differ by 1e-7 relative (float
    noise of the embeddings or kernel across CPUs and thread counts) may then go either way, and
    everything after that pick follows another path (measured: delift-se on an AMD EPYC picked
    demo-0008 at rank 8, gain 0.44079137, where the golden from a Xeon has demo-0016, 0.44079131).
    False for outputs without a greedy rank and gain."""
    cols = {}
    for side, out in (("got", got), ("want", want)):
        c = out["columns"]
        if "rank" not in c or "gain" not in c:
            return False
        cols[side] = {r: (i, g) for i, r, g in zip(c["id"], c["rank"], c["gain"]) if r is not None}
    ranks = sorted(set(cols["got"]) | set(cols["want"]))
    for r in ranks:
        if r not in cols["got"] or r not in cols["want"]:
            return False
        (gi, gg), (wi, wg) = cols["got"][r], cols["want"][r]
        if gi != wi:
            return bool(np.isclose(gg, wg, rtol=rtol, atol=0.0))
        if not np.isclose(gg, wg, **FLOAT_TOL):
            return False
    return False


def test_near_tie_accepts_only_a_split_at_equal_gains():
    def out(picks):
        ids = ["a", "b", "c", "d"]
        rank = [next((k + 1 for k, (p, _) in enumerate(picks) if p == i), None) for i in ids]
        gain = [next((g for p, g in picks if p == i), None) for i in ids]
        return {"columns": {"id": ids, "rank": rank, "gain": gain}}

    want = out([("a", 2.0), ("b", 0.44079131)])
    assert near_tie(out([("a", 2.0), ("c", 0.44079137)]), want)  # float noise decided the last pick
    assert not near_tie(out([("a", 2.0), ("c", 0.43)]), want)  # a real difference of gains
    assert not near_tie(out([("d", 3.0), ("b", 0.44079131)]), want)  # parted where the gains differ
    assert not near_tie(out([("a", 2.1), ("c", 0.44079137)]), want)  # an earlier gain moved
    assert not near_tie({"columns": {"id": ["a"]}}, want)  # no greedy columns


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_match_the_goldens(name, data, tiny_dir, tmp_path):
    got = run_case(name, data, tiny_dir, tmp_path)
    if REGEN:
        gold = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.exists() else {}
        gold[name] = got
        GOLDEN.write_text(json.dumps(gold, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip("golden regenerated")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))[name]
    if got["selected"] != want["selected"] and near_tie(got, want):
        return  # a greedy step decided by float noise on this CPU: checked up to there by near_tie
    assert got["selected"] == want["selected"]  # the kept rows, untouched, in input order
    assert got["column_names"] == want["column_names"]  # the same columns in the same order
    for col, values in want["columns"].items():
        if _is_float_column(values):
            a = np.array([np.nan if v is None else v for v in got["columns"][col]], dtype=np.float64)
            b = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            assert_close_across_runs(a, b, **FLOAT_TOL)
        else:
            assert got["columns"][col] == values, col  # ids, lines, ranks, kept, covering ids
