"""The evidence bench (issue 17): selection cost against fine-tuning cost, the lines that say which
differences from random are beyond the seed spread, the data-efficiency curve's data and axes,
further held-out sets, method variants, stages per method, and the sequential continual stage."""

import copy
import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from tunesift import bench as bm
from tunesift import bench_tables as bt
from tunesift.bench import BenchConfig, selection_stage
from tunesift.bench_plots import curve_data, curve_limits, plot_results
from tunesift.bench_stats import holm, metric_names
from tunesift.bench_tables import (
    PARTLY_CACHED,
    add_costs,
    aggregate,
    beyond_noise_lines,
    family_lines,
    glance_table,
    markdown_table,
)
from tunesift.errors import OptionError, TunesiftError
from tunesift.finetune import TrainConfig
from tunesift.methods.catalogue import get_method
from tunesift.store import umask


def cell(method, budget, seed, metrics, *, n=3, select_s=1.0, train_s=2.0):
    return {"method": method, "budget": budget, "seed": seed, "n_train": n, "n_selected": n,
            "select_s": select_s, "train_s": train_s, "metrics": metrics}


def test_selection_cost_next_to_fine_tuning_cost():
    rows = add_costs([
        {"method": "base", "budget": "all", "select_s": 0.0, "train_s": 0.0},
        {"method": "random", "budget": 0.3, "select_s": 0.0, "train_s": 30.0},
        {"method": "delift", "budget": 0.3, "select_s": 120.0, "train_s": 40.0},
        {"method": "full", "budget": "all", "select_s": 0.0, "train_s": 100.0},
    ])
    by = {r["method"]: r for r in rows}
    assert np.isnan(by["base"]["cost_ratio"])  # nothing trained: no ratio
    assert by["random"]["cost_ratio"] == 0.0 and by["delift"]["cost_ratio"] == pytest.approx(3.0)
    assert by["delift"]["total_vs_full"] == pytest.approx(1.6)  # (120 + 40) / 100: dearer than all data
    assert by["random"]["total_vs_full"] == pytest.approx(0.3)
    no_full = add_costs([{"method": "donod", "budget": 0.1, "select_s": 5.0, "train_s": 20.0}])
    assert "total_vs_full" not in no_full[0] and no_full[0]["cost_ratio"] == pytest.approx(0.25)
    cells = [cell("random", 0.3, 0, {"loss": 1.0}, select_s=0.001, train_s=10.0),
             cell("delift", 0.3, 0, {"loss": 0.9}, select_s=25.0, train_s=10.0)]
    table = markdown_table(aggregate(cells))
    assert "select / train" in table.splitlines()[0]
    # the scores are computed by a method's first cell and read back by the others, budgets included
    two = aggregate([cell("rds", 0.1, 0, {"loss": 1.0}, select_s=20.0), cell("rds", 0.3, 0, {"loss": 1.0}, select_s=0.1)])
    assert [r["select_s"] for r in two] == [20.0, 20.0]
    lines = {ln.split(" | ")[0][2:]: ln for ln in table.splitlines() if ln.startswith("| ")}
    assert lines["delift"].endswith("| 25.0 | 10.0 | 2.50 |") and lines["random"].endswith("| < 0.01 |")


def test_lines_name_the_differences_beyond_the_seed_spread():
    cells = []
    for s, r in enumerate([1.00, 1.10, 0.95]):  # random's loss and ROUGE-L per seed
        cells += [cell("random", 0.3, s, {"loss": r, "rougeL": 0.30}),
                  cell("good", 0.3, s, {"loss": r - 0.050 - 0.001 * s, "rougeL": 0.30 + 0.002 * (s - 1)}),
                  cell("bad", 0.3, s, {"loss": r + 0.020 + 0.0005 * s, "rougeL": 0.30}),
                  cell("random", 0.1, s, {"loss": r, "rougeL": 0.30}),
                  cell("good", 0.1, s, {"loss": r - 0.05 * (1 - 2 * (s % 2)), "rougeL": 0.30})]  # noise
    lines = beyond_noise_lines(aggregate(cells))
    assert len(lines) == 2
    # rows of methods outside the registry sort by name, whatever the order of the cell files
    assert lines[0].startswith("- bad at budget 0.3: loss worse than random by 0.0205")
    assert lines[1].startswith("- good at budget 0.3: loss better than random by 0.0510")
    assert "3 paired seeds" in lines[1]
    # higher is better for ROUGE-L: +0.01 on every seed is "better"
    up = [cell("random", 0.3, s, {"rougeL": 0.3}) for s in range(3)] + \
         [cell("m", 0.3, s, {"rougeL": 0.31 + 0.001 * s}) for s in range(3)]
    assert beyond_noise_lines(aggregate(up))[0].startswith("- m at budget 0.3: rougeL better than random")


def curve_rows():
    cells = [cell("base", None, 0, {"loss": 2.0, "rougeL": 0.2}, n=0, train_s=0.0)]
    for s in range(3):
        cells.append(cell("full", None, s, {"loss": 1.5 + 0.01 * s, "rougeL": 0.4}, n=100))
        for budget, n, lo in ((0.3, 30, 1.7), (0.1, 10, 1.9)):
            cells.append(cell("random", budget, s, {"loss": lo + 0.02 * s, "rougeL": 0.3}, n=n))
            cells.append(cell("rds", budget, s, {"loss": lo - 0.05, "rougeL": 0.31}, n=n))
    return aggregate(cells)


def test_curve_data_lines_bands_and_references():
    data = curve_data(curve_rows(), "loss")
    assert set(data["lines"]) == {"random", "rds"}
    rnd = data["lines"]["random"]
    assert rnd["x"] == [10.0, 30.0]  # records picked, increasing
    assert rnd["mean"] == pytest.approx([1.92, 1.72])
    assert rnd["lo"] == pytest.approx([1.92 - 0.02, 1.72 - 0.02]) and rnd["hi"] == pytest.approx([1.94, 1.74])
    assert data["lines"]["rds"]["lo"] == pytest.approx(data["lines"]["rds"]["mean"])  # no spread: no band
    assert rnd["seeds"] == [3, 3]
    assert data["base"] == 2.0 and data["full"]["x"] == 100.0 and data["full"]["mean"] == pytest.approx(1.51)
    lo, hi = curve_limits(data, "loss")
    assert lo < 1.50 and hi > 2.0  # the loss axis spans the whole pool's value and the untuned model's
    assert curve_limits(curve_data(curve_rows(), "rougeL"), "rougeL")[0] == 0.0  # bounded metric: from zero
    assert curve_limits(curve_data(curve_rows(), "rougeL@eval"), "rougeL@eval") == pytest.approx((0.0, 1.05))
    # a seed without the metric makes its row NaN: the axis ignores it instead of failing to draw
    holed = curve_data(curve_rows(), "loss")
    next(iter(holed["lines"].values()))["lo"][0] = float("nan")  # the first value min() and max() see
    assert curve_limits(holed, "loss") == pytest.approx((lo, hi))


def test_curve_png_is_written_with_several_budgets(tmp_path):
    plot_results(tmp_path, curve_rows())
    assert (tmp_path / "curve.png").stat().st_size > 0 and (tmp_path / "results.png").stat().st_size > 0


def test_metrics_of_further_held_out_sets_are_named_and_ordered():
    cells = [cell("random", 0.3, s, {"loss": 1.0 + s, "rougeL@eval": 0.2, "loss@eval": 2.0, "exact_match": 0.1,
                                     "loss@old": 3.0}) for s in range(2)]
    rows = aggregate(cells)
    assert metric_names(rows) == ["loss", "exact_match", "loss@eval", "rougeL@eval", "loss@old"]
    head = markdown_table(rows).splitlines()[0]
    assert "loss@eval ↓" in head and "rougeL@eval ↑" in head
    assert bm.also_metrics(["loss", "exact_match"], [type("R", (), {"response": "hello there"})()]) == ["loss"]
    assert bm.also_metrics(["loss", "exact_match"], [type("R", (), {"response": "#### 4"})()]) == \
        ["loss", "exact_match"]
    assert bm.also_metrics(None, []) is None


def test_each_method_keeps_its_own_options_as_a_bench_grows(tmp_path):
    """Adding a variant to a bench leaves the methods already run valid; rerunning a method with
    other options is refused (its cells would mix two settings under one name)."""
    plain = BenchConfig(train="a", test="b", methods=["base", "random"])
    variant = BenchConfig(train="a", test="b", methods=["balanced-random"],
                          method_options={"balanced-random": {"by": "meta.source"}})
    assert bm._config_key(plain, {}) == bm._config_key(variant, {})
    # a bench pinned before (options in its key when given) still resumes: its key is accepted
    assert bm._config_key(variant, {}, legacy=True) != bm._config_key(variant, {})
    assert bm._config_key(plain, {}, legacy=True) == bm._config_key(plain, {})
    lean = copy.deepcopy(plain)
    lean.training.checkpointing = not plain.training.checkpointing  # memory only: the same cells
    assert bm._config_key(lean, {}) == bm._config_key(plain, {})
    lean.training.token_budget = 512  # micro-batches change float summation order: another bench
    assert bm._config_key(lean, {}) != bm._config_key(plain, {})
    # a bench.json from before the per-method map: its last run's methods, with their options
    old = {"key": "k", "config": {"methods": ["base", "random"], "method_options": {}}}
    grown = bm.pin_method_options(old, variant, tmp_path)
    assert grown == {"base": {}, "random": {}, "balanced-random": {"by": "meta.source", "revision": 1}}
    assert bm.pin_method_options({"method_options": grown}, plain, tmp_path) == {**grown, "random": {"revision": 1}}
    other = BenchConfig(train="a", test="b", methods=["balanced-random"],
                        method_options={"balanced-random": {"by": "meta.category"}})
    with pytest.raises(OptionError, match="'balanced-random' ran here with options"):
        bm.pin_method_options({"method_options": grown}, other, tmp_path)
    bare = BenchConfig(train="a", test="b", methods=["balanced-random"])  # the same name, now without options
    with pytest.raises(OptionError, match="'balanced-random'"):
        bm.pin_method_options({"method_options": grown}, bare, tmp_path)
    # where a method keeps its scores changes no result: a cache of its own later keeps its cells
    moved = BenchConfig(train="a", test="b", methods=["random"], method_options={"random": {"cache_dir": "c/random"}})
    assert bm.pin_method_options({"method_options": grown}, moved, tmp_path)["random"] == {"cache_dir": "c/random",
                                                                                            "revision": 1}


def test_a_method_revision_never_joins_cells_of_another(tmp_path):
    """delift is revision 2 (session 16's kNN scaling picks differently): cells of revision 1
    (pinned before revisions were recorded: no ``revision``) are not extended with revision 2
    cells; without cells of it the new revision is pinned; a variant inherits its method's."""
    assert get_method("delift").revision == get_method("donod+delift").revision == 2
    assert get_method("random").revision == 1
    cfg = BenchConfig(train="a", test="b", methods=["base", "delift", "dl"], method_options={"dl": {"method": "delift"}})
    old = {"method_options": {"base": {}, "delift": {}, "random": {}}}
    assert bm.pin_method_options(old, cfg, tmp_path) == {  # no cells yet: revision 2 pinned
        "base": {}, "delift": {"revision": 2}, "random": {}, "dl": {"method": "delift", "revision": 2}}
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "random__b0.3__s0.json").write_text("{}")
    (tmp_path / "cells" / "dl__b0.3__s0.json").write_text(json.dumps({"ran_with": {"revision": 2}}))
    assert bm.pin_method_options(old, cfg, tmp_path)["delift"] == {"revision": 2}  # another method's cells
    (tmp_path / "cells" / "delift__b0.3__s0.json").write_text("{}")
    with pytest.raises(OptionError, match=r"the cells of 'delift' here were selected by its revision 1, this is "
                                          r"revision 2, which picks differently .*delete .*delift__\*\.json"):
        bm.pin_method_options(old, cfg, tmp_path)
    pinned = {"method_options": {"delift": {"revision": 2}, "dl": {"method": "delift", "revision": 2}}}
    assert bm.pin_method_options(pinned, cfg, tmp_path)["delift"] == {"revision": 2}
    with pytest.raises(OptionError, match="revision 3"):
        bm.pin_method_options({"method_options": {"delift": {"revision": 3}}}, cfg, tmp_path)
    # a bench.json from before the per-method map names only its last run's methods: the cells say
    legacy = {"key": "k", "config": {"methods": ["base"], "method_options": {}}}
    with pytest.raises(OptionError, match="selected by its revision 1, this is revision 2"):
        bm.pin_method_options(legacy, cfg, tmp_path)
    (tmp_path / "cells" / "delift__b0.3__s0.json").write_text(json.dumps({"ran_with": {"revision": 2}}))
    assert bm.pin_method_options(legacy, cfg, tmp_path)["delift"] == {"revision": 2}
    # a method whose name has a "+" is found under its cells' file name (donod-plus-delift__...)
    both = BenchConfig(train="a", test="b", methods=["donod+delift"])
    (tmp_path / "cells" / "donod-plus-delift__b0.3__s0.json").write_text("{}")
    with pytest.raises(OptionError, match=r"'donod\+delift' here were selected by its revision 1.*donod-plus-delift__"):
        bm.pin_method_options({"method_options": {"donod+delift": {}}}, both, tmp_path)


def test_new_settings_leave_the_key_of_older_benches_alone():
    cfg = BenchConfig(train="a.jsonl", test="b.jsonl")
    d = asdict(cfg)
    for k in ("methods", "budgets", "seeds", *bm.LATER_FIELDS):
        d.pop(k)
    d["inputs"] = {"train": "x"}
    before = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert bm._config_key(cfg, {"train": "x"}) == before  # what a bench run before these fields pinned
    assert bm._config_key(BenchConfig(train="a.jsonl", test="b.jsonl", continual="sequential"),
                          {"train": "x"}) != before


def test_each_method_selects_in_a_stage_it_has():
    cont = BenchConfig(train="a", test="b", stage="continual", existing="e")
    assert selection_stage(cont, get_method("rds")) == "instruction"  # its pool-only variant
    assert selection_stage(cont, get_method("delift")) == "continual"
    assert selection_stage(cont, get_method("random")) == "instruction"
    assert selection_stage(BenchConfig(train="a", test="b", stage="task", target="t"), get_method("rds")) == "task"
    with pytest.raises(OptionError, match="less does not select in the instruction stage"):
        selection_stage(BenchConfig(train="a", test="b"), get_method("less"))


@pytest.mark.parametrize("kw, message", [
    ({"methods": ["random", "less"]}, "less does not select in the instruction stage"),
    ({"methods": ["balanced-random"]}, "balanced-random needs --by"),
    ({"methods": ["x"], "method_options": {"x": {"method": "nope"}}}, "unknown method 'nope'"),
    ({"methods": ["y"], "method_options": {"y": {"knn": 4}}}, "unknown bench method 'y'"),
    ({"methods": ["random"], "continual": "both"}, "unknown continual mode"),
    ({"methods": ["dl"], "method_options": {"dl": {"method": "delift", "knn": -1}}}, "knn must be >= 0"),
    ({"methods": ["random"], "also_generation": {"gsm8k": {"generate_limit": 300}}}, "not one of also_test"),
    ({"methods": ["random"], "also_test": {"g": "g.jsonl"}, "also_generation": {"g": {"max_tokens": 3}}},
     "unknown setting 'max_tokens'"),
    ({"methods": ["random"], "also_test": {"g": "g.jsonl"}, "also_generation": {"g": {"generate_limit": -1}}},
     "g: generate-limit must be a whole number of at least 0, got -1"),
    ({"methods": ["random"], "generate_limit": -5}, "the test set: generate-limit must be"),
    ({"methods": ["random"], "also_test": {"g": "g.jsonl"}, "also_generation": {"g": {"max_new_tokens": None}}},
     "g: max-new-tokens must be a whole number of at least 1, got None"),
    ({"methods": ["random"], "also_test": {"g": "g.jsonl"}, "also_generation": {"g": {"max_new_tokens": True}}},
     "g: max-new-tokens must be a whole number of at least 1, got True"),
    ({"methods": ["donod+delift", "donod-plus-delift"], "method_options": {"donod-plus-delift": {"method": "donod"}}},
     "methods donod\\+delift and donod-plus-delift would share one cell file"),
])
def test_bad_grids_fail_before_any_cell(kw, message):
    with pytest.raises(OptionError, match=message):
        bm._check(BenchConfig(train="a", test="b", **kw))
    bm._check(BenchConfig(train="a", test="b", methods=["base", "br", "full"],
                          method_options={"br": {"method": "balanced-random", "by": "meta.source"}}))


def test_a_further_set_generates_with_its_own_settings(monkeypatch):
    """The continual bench's GSM8K set sits beside an Alpaca test set: it needs the task bench's
    256-token answers for all 300 records, not the Alpaca set's 128 tokens for 100."""
    from types import SimpleNamespace

    seen = {}

    def fake_evaluate(lm, records, **kw):
        seen[records[0]] = kw
        per = {"exact_match": np.array([1.0, 0.0, np.nan])} if records[0] == "gsm" else {}  # 2 of 3 generated
        return SimpleNamespace(metrics={"loss": 1.0, **({"exact_match": 0.5} if per else {})},
                               generations=[None] * len(records), counts={}, per_record=per)

    monkeypatch.setattr("tunesift.evaluate.evaluate", fake_evaluate)
    monkeypatch.setattr(bm, "_training_model", lambda *a, **k: (SimpleNamespace(dtype="float32"), 0.0))
    cfg = BenchConfig(train="a", test="b", methods=["base"], max_new_tokens=128, generate_limit=100,
                      also_test={"gsm8k": "g"}, also_generation={"gsm8k": {"max_new_tokens": 256, "generate_limit": 300}})
    data = {"train": [], "test": ["alpaca"], "existing": None, "also": {"gsm8k": ["gsm"]}}
    info = bm.run_cell(cfg, "base", None, 0, data)
    assert (seen["alpaca"]["max_new_tokens"], seen["alpaca"]["generate_limit"]) == (128, 100)
    assert (seen["gsm"]["max_new_tokens"], seen["gsm"]["generate_limit"]) == (256, 300)
    assert set(info["metrics"]) == {"loss", "loss@gsm8k", "exact_match@gsm8k"}
    assert info["items"] == {"exact_match@gsm8k": "10"}  # each generated question's result, the further set's too
    ev = load_evidence()
    args = grid_args(ev)
    cont = ev.config("continual", ev.Path("d"), ev.Path("c"), args)
    # a GPU run keeps its own grid beside the CPU's (its cells are pinned to another device)
    roots = {d: ev.folders(ev.argparse.Namespace(work="w", results="r", smoke=False, device=d))[1] for d in ("cpu", "cuda")}
    assert roots == {"cpu": ev.Path("r/evidence"), "cuda": ev.Path("r/evidence-cuda")}
    assert cont.also_generation == {"gsm8k": {"max_new_tokens": 256, "generate_limit": 300}}
    bm._check(cont)


def test_the_costly_small_score_caches_are_kept_with_the_cells():
    """Exact DELIFT's kernel (hours to rebuild) and the per-record scores live beside the committed
    cells, so a fresh clone resumes them; rds's hidden states and the rest stay git-ignored; transfer
    reads experiment 1's caches either way."""
    ev = load_evidence()
    args = grid_args(ev)
    kept = ev.folders(ev.argparse.Namespace(work="w", results="r", smoke=False, device="cpu"))[3]
    cfgs = {exp: ev.config(exp, ev.Path("d"), ev.Path("c"), args, kept)
            for exp in ("noise", "transfer", "task")}
    home = {exp: {m: o["cache_dir"] for m, o in cfg.method_options.items()} for exp, cfg in cfgs.items()}
    assert home["noise"]["delift"] == str(ev.Path("r/evidence/cache/noise/delift"))
    assert home["noise"]["loss"] == str(ev.Path("r/evidence/cache/noise/loss"))
    assert home["noise"]["rds"] == str(ev.Path("c/noise/rds"))
    assert home["transfer"]["delift"] == str(ev.Path("r/evidence/cache/instruction/delift"))
    assert home["transfer"]["rds"] == str(ev.Path("c/instruction/rds"))
    assert home["task"]["less"] == str(ev.Path("c/task/less"))
    assert set(ev.KEPT_CACHES) <= set(ev.METHODS["noise"]) | set(ev.METHODS["task"])  # no stale names
    # without a kept folder (the library's own use) every cache stays where it was
    plain = ev.config("noise", ev.Path("d"), ev.Path("c"), args).method_options
    assert plain["delift"]["cache_dir"] == str(ev.Path("c/noise/delift"))
    # moving a method's cache is no new setting: cells made with the old place still resume
    pinned = {"method_options": {"loss": {"cache_dir": "bench/work/evidence/cache/noise/loss"}}}
    assert bm.pin_method_options(pinned, cfgs["noise"], ev.Path("nowhere"))["loss"]["cache_dir"] == home["noise"]["loss"]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evidence")
    pool = [{"instruction": f"What is {i} + {i}?", "output": f"It is {2 * i}.", "meta": {"source": "ab"[i % 2]}}
            for i in range(12)]
    old = [{"instruction": f"Name the colour number {i}.", "output": f"Colour {i} is blue."} for i in range(6)]
    return {"train": write_rows(d / "pool.jsonl", pool), "test": write_rows(d / "test.jsonl", pool[:4]),
            "existing": write_rows(d / "existing.jsonl", old), "old": write_rows(d / "old.jsonl", old[:3])}


def test_a_variant_selects_with_its_own_options(files, tmp_path):
    from tunesift.io.records import read_records

    cfg = BenchConfig(train=str(files["train"]), test=str(files["test"]), methods=["br"],
                      method_options={"br": {"method": "balanced-random", "by": "meta.source"}},
                      select_options={"cache_dir": str(tmp_path)})
    data = {"train": read_records(files["train"]), "target": None, "existing": None}
    chosen, _, _ = bm.select_for_cell(cfg, "br", 4, 0, data, None)
    assert sorted(r.row["meta"]["source"] for r in chosen) == ["a", "a", "b", "b"]
    cfg.methods, cfg.method_options = ["ra"], {"ra": {"method": "random", "within": "meta.source=a"}}
    bm._check(cfg)
    for seed in range(3):  # the target-source control: only the matching records, a seeded sample of them
        chosen, _, _ = bm.select_for_cell(cfg, "ra", 4, seed, data, None)
        assert [r.row["meta"]["source"] for r in chosen] == ["a"] * 4


def test_sequential_continual_trains_on_the_existing_data_first(files, tiny_dir, tmp_path, monkeypatch):
    from tunesift.evaluate import evaluate
    from tunesift.io.records import read_records
    from tunesift.models import load_lm

    cfg = BenchConfig(train=str(files["train"]), test=str(files["test"]), methods=["base", "random", "rds"],
                      budgets=[4], seeds=1, stage="continual", existing=str(files["existing"]), continual="sequential",
                      also_test={"old": str(files["old"])}, select_model=str(tiny_dir), train_model=str(tiny_dir),
                      select_options={"cache_dir": str(tmp_path / "cache"), "token_budget": 512},
                      training=TrainConfig(epochs=1, lr=3e-3), metrics=["loss"], generate_limit=0)
    out = tmp_path / "b"
    rows = bm.run_bench(cfg, out)
    stage1 = out / "stage1" / "s0"
    assert (stage1 / "tunesift_train.json").exists()
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").iterdir()}
    assert set(cells) == {"base__ball__s0", "random__b4__s0", "rds__b4__s0"}
    rnd = cells["random__b4__s0"]
    assert rnd["n_train"] == rnd["n_selected"] == 4  # the pick only: the existing data came first
    assert rnd["stage1_s"] > 0 and set(rnd["metrics"]) == {"loss", "loss@old"}
    assert cells["rds__b4__s0"]["n_selected"] == 4  # rds has no continual form: its pool-only pick
    # base is the stage-1 model: trained on the old domain, it beats the untouched model there
    untouched = evaluate(load_lm(str(tiny_dir), device="cpu"), read_records(files["old"]), metrics=["loss"])
    assert cells["base__ball__s0"]["metrics"]["loss@old"] < untouched.metrics["loss"] - 0.05
    assert {r["method"] for r in rows} == {"base", "random", "rds"}
    assert "loss@old" in (out / "results.md").read_text()
    # a rerun trains nothing, stage 1 included
    monkeypatch.setattr("tunesift.finetune.finetune", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    mtime = (stage1 / "tunesift_train.json").stat().st_mtime_ns
    bm.run_bench(cfg, out)
    assert (stage1 / "tunesift_train.json").stat().st_mtime_ns == mtime


def test_continual_selectors_can_score_with_the_stage1_model(files, tiny_dir, tmp_path, monkeypatch):
    """select_with_stage1: a method that scores with the select model gets the seed's stage-1
    model (the one its pick trains), trained before the first selection; one with its own model keeps it."""
    import tunesift.pipeline as pipeline
    from tunesift.finetune import load_trained
    from tunesift.models import load_lm

    kw = dict(train=str(files["train"]), test=str(files["test"]), budgets=[4], seeds=1, stage="continual",
              existing=str(files["existing"]), continual="sequential", select_model=str(tiny_dir),
              train_model=str(tiny_dir), select_options={"cache_dir": str(tmp_path / "cache"), "token_budget": 512},
              training=TrainConfig(epochs=1, lr=3e-3), metrics=["loss"], generate_limit=0)
    seen, real = {}, pipeline.select

    def select(records, **o):  # which model each method was given
        seen[o["method"]] = o.get("lm")
        return real(records, **o)

    monkeypatch.setattr(pipeline, "select", select)
    out = tmp_path / "b"
    bm.run_bench(BenchConfig(methods=["random", "ifd"], select_with_stage1=True, **kw), out)
    stage1 = load_trained(out / "stage1" / "s0", device="cpu")
    assert seen["random"] is None  # scores nothing
    assert seen["ifd"].fingerprint == stage1.fingerprint != load_lm(str(tiny_dir), device="cpu").fingerprint
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").iterdir()}
    assert cells["ifd__b4__s0"]["selected_with"] == "stage1" and "selected_with" not in cells["random__b4__s0"]
    assert cells["ifd__b4__s0"]["stage1_digest"] == bm.stage1_digest(out / "stage1" / "s0")
    # a method's own model is kept; the methods without a model and the option off never use stage 1
    own = BenchConfig(methods=["ifd", "dx"], method_options={"dx": {"method": "ifd", "model": str(tiny_dir)}},
                      select_with_stage1=True, **kw)
    assert bm.stage1_selects(own, "ifd") and not bm.stage1_selects(own, "dx")
    assert not bm.stage1_selects(BenchConfig(methods=["ifd"], **kw), "ifd")
    assert not bm.stage1_selects(BenchConfig(methods=["delift-se"], select_with_stage1=True, **kw), "delift-se")
    # only a sequential continual bench has a stage-1 model, and it is the train model's
    for bad, words in (({"continual": "joint"}, "sequential continual"), ({"stage": "instruction"}, "sequential"),
                       ({"select_model": "default"}, "must be the train model")):
        with pytest.raises(OptionError, match=words):
            bm.run_bench(BenchConfig(methods=["ifd"], select_with_stage1=True, **{**kw, **bad}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_holm_keeps_the_family_wise_error_and_names_what_survives():
    np.testing.assert_allclose(holm(np.array([0.04, 0.01, 0.03, 0.5])), [0.09, 0.04, 0.09, 0.5])
    np.testing.assert_allclose(holm(np.array([0.2])), [0.2])
    rng = np.random.default_rng(0)  # under the null, any adjusted p < 0.05 in at most ~5% of families
    families = rng.uniform(size=(4000, 12))
    assert np.mean([holm(f).min() < 0.05 for f in families]) < 0.055
    row = {"method": "m", "budget": 0.3, "paired_seeds": 3, "loss": 1.0, "loss_vs_random": -0.2,
           "loss_vs_random_se": 0.01, "loss_vs_random_p": 0.004, "rougeL": 0.2, "rougeL_vs_random": 0.01,
           "rougeL_vs_random_se": 0.004, "rougeL_vs_random_p": 0.12}
    two = {**row, "paired_seeds": 2, "method": "early"}
    (line,) = family_lines([row, two, {"method": "random", "budget": 0.3, "loss": 1.2}])
    assert "Holm over the 2 paired comparisons" in line and "1 stay below 0.05: m @ 0.3 loss (adjusted p 0.008)" in line
    (line,) = family_lines([{**row, "loss_vs_random_p": 0.04}])
    assert "none stays below 0.05" in line
    assert family_lines([two]) == []


def test_glance_table_sets_experiments_side_by_side_with_their_own_holm_family():
    def row(method, budget, diff, se, p, seeds=3, **kw):
        return {"method": method, "budget": budget, "seeds": seeds, "paired_seeds": seeds, "loss": 1.0 + diff,
                "loss_vs_random": diff, "loss_vs_random_se": se, "loss_vs_random_p": p,
                "select_s": 50.0, "train_s": 100.0, "cost_ratio": 0.5, **kw}
    a = [{"method": "random", "budget": 0.1, "seeds": 3, "loss": 1.25},
         row("rds", 0.1, -0.2, 0.02, 0.004),            # beyond 2 SE, p < 0.05, alone in its family: firm
         row("donod", 0.1, 0.05, 0.02, 0.12)]           # beyond 2 SE, p 0.12: a mark, not bold
    b = [{"method": "random", "budget": 0.3, "seeds": 3, "loss": 0.8},
         row("rds", 0.3, 0.01, 0.01, 0.42, select_partly_cached=True),   # within the spread
         row("ifd", 0.3, -0.004, 0.001, 0.03, seeds=2),                  # too few seeds for a mark
         {"method": "full", "budget": "all", "seeds": 1, "loss": 0.7}]
    table, legend = glance_table({"instruction": a, "noise": b}).split("\n\n", 1)
    head, rule, *body = table.strip().splitlines()
    # the legend follows the table, with the † footnote because one cost is a lower bound
    assert legend.startswith("Each column: a selector's mean paired difference from random")
    assert "held-out loss (negative is better)" in legend and legend.rstrip().endswith(PARTLY_CACHED)
    assert head == ("| method | instruction @ 0.1 (random 1.2500) | select / train | "
                    "noise @ 0.3 (random 0.8000) | select / train |")
    cells = {c[0]: c[1:] for c in (line[2:-2].split(" | ") for line in body)}
    assert set(cells) == {"rds", "donod", "ifd"}                    # references are not rows
    assert cells["rds"][0] == "**-0.2000 ± 0.0200 \\*** (p 0.004) ‡"
    assert cells["donod"][0] == "+0.0500 ± 0.0200 \\* (p 0.120)" and cells["donod"][1] == "0.50"
    assert cells["rds"][2] == "+0.0100 ± 0.0100 (p 0.420)" and cells["rds"][3] == "≥ 0.50 †"
    assert cells["ifd"][2] == "-0.0040 (2 seeds, no mark)" and cells["donod"][2:] == ["", ""]
    # each experiment is its own Holm family: with three comparisons in it, 0.004 x 3 stays below
    # 0.05 and 0.03 x 2 does not (noise's ifd, 2 seeds, is in no family)
    a2 = a + [row("ifd", 0.1, -0.1, 0.01, 0.03)]
    firm = glance_table({"instruction": a2})
    assert "(p 0.004) ‡" in firm and "(p 0.030) ‡" not in firm and PARTLY_CACHED not in firm  # no † there
    assert "held-out rougeL (positive is better)" in glance_table({"instruction": a2}, metric="rougeL")
    assert glance_table({"x": [{"method": "random", "budget": 0.1, "seeds": 3, "loss": 1.0}]}) == ""


def test_a_variant_scores_with_its_own_model(monkeypatch):
    cfg = BenchConfig(train="a", test="b", methods=["ifd", "v", "random", "base"], select_model="sel",
                      method_options={"v": {"method": "ifd", "model": "mine", "device": "cpu"}})
    assert [bm.selection_model(cfg, m) for m in cfg.methods] == ["sel", "mine", None, None]
    loaded = []

    def fake_load(name, **kw):
        loaded.append((name, kw["device"]))
        raise RuntimeError("stop")  # what the cell loads is all this test needs

    monkeypatch.setattr("tunesift.models.load_lm", fake_load)
    for m in ("v", "ifd"):
        with pytest.raises(RuntimeError, match="stop"):
            bm.select_for_cell(cfg, m, 4, 0, {"train": []}, None)
    assert loaded == [("mine", "cpu"), ("sel", "auto")]


def test_checks_that_need_the_records_or_a_model_run_before_bench_json(files, tiny_dir, tmp_path, monkeypatch):
    """A further set is checked with the metrics it is evaluated on (exact_match is dropped where
    its answers are not numbers), and every model a cell to run will load is checked, a variant's
    own included; nothing is written before both pass, and a finished bench loads none."""
    cfg = BenchConfig(train=str(files["train"]), test=str(files["test"]), methods=["base"], seeds=1,
                      also_test={"old": str(files["old"])}, train_model=str(tiny_dir), metrics=["loss", "exact_match"],
                      also_generation={"old": {"generate_limit": 0}}, generate_limit=2, max_new_tokens=4)
    out = tmp_path / "b"
    out.mkdir()
    (out / ".gitkeep").write_text("")  # a hidden file does not make the folder someone else's
    bm.run_bench(cfg, out)  # "old" is not math: loss only, so generating nothing there is allowed
    cell = json.loads((out / "cells" / "base__ball__s0.json").read_text())
    assert set(cell["metrics"]) == {"loss", "exact_match", "loss@old"}
    cfg.methods, cfg.method_options = ["base", "ifd-x"], {"ifd-x": {"method": "ifd", "model": "no-such/model"}}
    cfg.budgets = [4]
    before = (out / "bench.json").read_text()
    with pytest.raises(TunesiftError, match="cannot load model 'no-such/model' offline"):
        bm.run_bench(cfg, out)
    assert (out / "bench.json").read_text() == before and sorted(p.name for p in (out / "cells").iterdir()) == \
        ["base__ball__s0.json"]
    monkeypatch.setattr("tunesift.models.check_model", lambda name: (_ for _ in ()).throw(AssertionError(name)))
    cfg.methods, cfg.method_options = ["base"], {}
    bm.run_bench(cfg, out)  # nothing to run: no model is checked (or converted)
    assert oct((out / "bench.json").stat().st_mode & 0o777) == oct(0o666 & ~umask())  # as a plain write


def grid_args(ev):
    """bench/evidence.py's command line with the grid's defaults (``ev``: :func:`load_evidence`)."""
    return ev.argparse.Namespace(smoke=False, only=None, dense_delift=False, budgets=None, seeds=3, knn=16,
                                 checkpointing="off", select_model=None, train_model=None, autocast=None,
                                 device="cpu")


def load_bench_script(name: str):
    """bench/<name>.py as a module (the bench scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_evidence():
    return load_bench_script("evidence")


def write_stand_in_inputs(ev, data):
    """The files `prepare` writes, 20 records each (stand-ins: tiny arithmetic and chat records)."""
    sources = ["alpaca", "gsm8k", "svamp", "mawps", "p3"]
    math = [{"prompt": f"Tom has {i} apples and gets {i} more. How many?", "response": f"{i}+{i}={2 * i}\n#### {2 * i}"}
            for i in range(20)]
    chat = [{"prompt": f"Say something about the number {i}.", "response": f"The number {i} is fine."} for i in range(20)]
    ev._write(data / "alpaca_pool.jsonl", chat)
    ev._write(data / "alpaca_test.jsonl", chat[:3])
    ev._write(data / "alpaca_eval.jsonl", chat[3:6])
    ev._write(data / "gsm8k_test.jsonl", math[:3])
    ev._write(data / "gsm8k_target.jsonl", math[3:6])
    ev._write(data / "gsm8k_existing.jsonl", math[6:10])
    ev._write(data / "gsm8k_noisy.jsonl", [dict(r, meta={"swapped": i % 5 == 0}) for i, r in enumerate(math)])
    ev._write(data / "mixed_pool.jsonl", [dict((math if i % 2 else chat)[i], meta={"source": sources[i % 5]})
                                          for i in range(20)])
    ev._write(data / "continual_pool.jsonl", [dict((math if i % 2 else chat)[i], meta={"source": sources[1 + i % 4]})
                                              for i in range(20)])
    return math, chat


def test_the_evidence_grid_runs_every_experiment(tiny_dir, tmp_path, capsys):
    """bench/evidence.py end to end on stand-in inputs (the files `prepare` writes, 20 records each)
    with the tiny model: all five experiments start, resume, and the summary reads them back."""
    ev = load_evidence()
    data = tmp_path / "work" / "evidence" / "data"
    math, _ = write_stand_in_inputs(ev, data)
    args = ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--seeds", "1", "--only", "base,random,balanced-random,rds",
            "--select-model", str(tiny_dir), "--train-model", str(tiny_dir), "--device", "cpu", "--autocast", "none"]
    ev.main(["run", "all", *args])
    root = tmp_path / "results" / "evidence"  # the cells and tables (committed); inputs and caches under work
    assert not (root / "cache").exists()
    for exp in ev.EXPERIMENTS:  # a cell's generations sit beside it, in the folders the .gitignore names
        assert (root / exp / "generations").is_dir() and len(list((root / exp / "generations").iterdir())) == len(
            list((root / exp / "cells").iterdir()))
    for exp in ev.EXPERIMENTS:  # transfer has one budget: no curve over budgets
        assert (root / exp / "results.md").exists() and (root / exp / "curve.png").exists() == (exp != "transfer"), exp
    pinned = json.loads((root / "task" / "bench.json").read_text())["config"]
    caches = tmp_path / "work" / "evidence" / "cache"
    assert pinned["device"] == "cpu" and pinned["stage"] == "task" and pinned["method_options"] == {
        "balanced-random": {"by": "meta.source", "cache_dir": str(caches / "task" / "balanced-random")},
        "random": {"cache_dir": str(caches / "task" / "random")}, "rds": {"cache_dir": str(caches / "task" / "rds")}}
    assert json.loads((root / "task" / "bench.json").read_text())["method_options"] == {  # with their revisions
        "base": {}, "balanced-random": {"by": "meta.source", "cache_dir": str(caches / "task" / "balanced-random"),
                                        "revision": 1},
        "random": {"cache_dir": str(caches / "task" / "random"), "revision": 1},
        "rds": {"cache_dir": str(caches / "task" / "rds"), "revision": 1}}
    assert json.loads(next((root / "task" / "cells").glob("rds__*.json")).read_text())["ran_with"]["revision"] == 1
    # each method scores into its own cache (no method reads another's scores and reports a free
    # selection); transfer reads experiment 1's, method by method
    assert (caches / "task" / "rds").is_dir() and (caches / "instruction" / "rds").is_dir()
    rds = [json.loads(p.read_text()) for p in sorted((root / "task" / "cells").glob("rds__*.json"))]
    assert rds[0]["score_cache"]["cached"] == 0 < rds[0]["score_cache"]["written"]  # a cold cache
    assert all(c["checkpointing"] is False for c in rds)  # recorded: it changes the training time, not the result
    cell = json.loads(next((root / "continual" / "cells").glob("rds__*.json")).read_text())
    stage1 = root / "continual" / "stage1" / "s0"
    assert cell["stage1_digest"] == bm.stage1_digest(stage1)
    # the digest is the weights': a retrain to the same weights (another wall time and path in
    # tunesift_train.json) keeps it, other weights do not
    meta = json.loads((stage1 / "tunesift_train.json").read_text())
    again = tmp_path / "again"
    again.mkdir()
    (again / "tunesift_train.json").write_text(json.dumps({**meta, "seconds": meta["seconds"] + 9, "base": "/x"}))
    assert bm.stage1_digest(again) == cell["stage1_digest"]
    # the adapter's config and card do not count (PEFT writes target_modules in a per-process
    # order); its weight file does
    weight = next(k for k in meta["files"] if k.endswith(bm.WEIGHT_SUFFIXES))
    other = {k: ("1" * 64 if k != weight else v) for k, v in meta["files"].items()}
    assert len(other) > 1
    (again / "tunesift_train.json").write_text(json.dumps({**meta, "files": other}))
    assert bm.stage1_digest(again) == cell["stage1_digest"]
    other[weight] = "0" * 64
    (again / "tunesift_train.json").write_text(json.dumps({**meta, "files": other}))
    assert bm.stage1_digest(again) != cell["stage1_digest"]
    assert not (caches / "transfer").exists()
    task = json.loads((root / "task" / "results.json").read_text())
    assert "exact_match" in task[0] and {r["method"] for r in task} == {"base", "random", "balanced-random", "rds"}
    inst = json.loads((root / "instruction" / "results.json").read_text())
    assert "loss@alpaca_eval" in inst[0] and "balanced-random" not in {r["method"] for r in inst}
    cont = json.loads((root / "continual" / "results.json").read_text())
    assert "exact_match@gsm8k" in cont[0] and (root / "continual" / "stage1" / "s0").is_dir()
    rds_cont = json.loads(next((root / "continual" / "cells").glob("rds__*.json")).read_text())
    assert len(rds_cont["items"]["exact_match@gsm8k"]) == 3  # per question, for the question-by-question test
    # `items` gives per-question results back to cells made before cells kept them, from their generations
    kept = root / "task" / "cells" / "rds__b0.1__s0.json"
    full = json.loads(kept.read_text())
    kept.write_text(json.dumps({**full, "items": {k: v for k, v in full["items"].items() if k != "exact_match"}}))
    capsys.readouterr()
    ev.main(["items", *args])
    assert "task: per-question results added to 1 cell\n" in capsys.readouterr().out
    assert json.loads(kept.read_text())["items"] == full["items"]
    # a cell its generations do not match: its experiment is refused whole (exit 2), nothing written
    bad = {**full, "items": {}, "metrics": {**full["metrics"], "exact_match": full["metrics"]["exact_match"] + 0.5}}
    kept.write_text(json.dumps(bad))
    with pytest.raises(SystemExit) as stop:
        ev.main(["items", *args])
    assert stop.value.code == 2 and "task: nothing written" in capsys.readouterr().out
    assert json.loads(kept.read_text()) == bad
    kept.write_text(json.dumps(full, indent=1) + "\n")
    capsys.readouterr()
    ev.main(["plan", *args])
    assert "all            27 of   27" in capsys.readouterr().out  # every cell done: a rerun runs none
    # a rerun of a subset without the variant keeps the folder (its settings key is the same)
    ev.main(["run", "task", *[("base" if a.startswith("base,") else a) for a in args]])
    assert json.loads((root / "task" / "bench.json").read_text())["method_options"]["balanced-random"] == {
        "by": "meta.source", "cache_dir": str(caches / "task" / "balanced-random"), "revision": 1}
    # the rerun with --only base still tabulates every cell of the folder
    task = json.loads((root / "task" / "results.json").read_text())
    assert {r["method"] for r in task} == {"base", "random", "balanced-random", "rds"}
    ev.main(["summary", *args])
    task = json.loads((root / "task" / "results.json").read_text())
    assert {r["method"] for r in task} == {"base", "random", "balanced-random", "rds"}
    text = (root / "summary.md").read_text()
    assert text.count("Beyond the seed spread") == 5 and "meta.swapped" in text and "gsm8k" in text
    assert "Transfer's picks are instruction's: 2 of 2 cells checked" in text  # random and rds at 30%
    # a pool redrawn since the cells were made: its composition is not shown rather than misread
    ev._write(data / "gsm8k_noisy.jsonl", [dict(r, meta={"swapped": i % 4 == 0}) for i, r in enumerate(math)])
    ev.main(["summary", *args])
    text = (root / "summary.md").read_text()
    assert "What the picks are made of: not shown" in text and "meta.swapped" not in text and "meta.source" in text


def test_precompute_fills_the_kept_caches_the_cells_then_read(tiny_dir, tmp_path, capsys, monkeypatch):
    """`precompute` (a lent GPU's job) runs a method's selection alone into the caches the CPU
    grid keeps: its scores land where `run` reads them, no cell is written, a second run scores
    nothing, a method without a kept cache is left alone, and settings other than the grid's
    pinned ones are refused."""
    ev = load_evidence()
    write_stand_in_inputs(ev, tmp_path / "work" / "evidence" / "data")
    args = ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--knn", "2", "--seeds", "2",
            "--select-model", str(tiny_dir), "--train-model", str(tiny_dir), "--autocast", "none"]
    root = tmp_path / "results" / "evidence"
    # on a GPU: the scores go to the CPU grid's kept caches (not evidence-cuda's), scored in float32
    seen = []
    monkeypatch.setattr(bm, "select_for_cell", lambda cfg, m, *a, **k: seen.append(
        (cfg.device, bm.selection_options(cfg, m))) or ([], 0.0, {"cached": 0, "written": 0}))
    ev.main(["precompute", "instruction", "--only", "delift", *args, "--device", "cuda"])
    assert [(d, o["dtype"], o["cache_dir"]) for d, o in seen] == [
        ("cuda", "float32", str(root / "cache" / "instruction" / "delift"))] * 2  # once per seed
    monkeypatch.undo()
    args += ["--device", "cpu"]
    capsys.readouterr()
    ev.main(["precompute", "instruction", "--only", "random,delift,donod", *args])
    out = capsys.readouterr().out
    assert "instruction delift seed 0: 2 picked at 0.1" in out and "instruction donod seed 1: 2 picked at 0.1" in out
    assert "instruction random" not in out  # no kept cache: nothing to precompute
    kernel = list((root / "cache" / "instruction" / "delift" / "delift-utility").rglob("*.npy"))
    assert kernel and list((root / "cache" / "instruction" / "donod").rglob("*.npy"))
    assert not (root / "instruction").exists()  # no bench folder, no cell
    assert int(re.search(r"delift seed 0: .*written (\d+)", out).group(1)) > 0
    assert re.search(r"delift seed 1: .*written 0", out)  # the kernel is not seeded: scored once
    ev.main(["precompute", "instruction", "--only", "delift", *args])
    assert re.search(r"delift seed 0: .*cache blocks read [1-9]\d*, written 0", capsys.readouterr().out)
    # the run's cell reads those scores: its selection found them cached
    ev.main(["run", "instruction", "--only", "delift", "--budgets", "0.1", *args])
    cell = json.loads((root / "instruction" / "cells" / "delift__b0.1__s0.json").read_text())
    assert cell["score_cache"]["cached"] > 0 and cell["score_cache"]["written"] == 0
    # a kernel under other settings than the grid pinned would never be read: refused
    with pytest.raises(ev.TunesiftError, match="the grid selects with knn 2, precompute with 3"):
        ev.main(["precompute", "instruction", "--only", "delift", *args, "--knn", "3"])
    # continual's selectors score with each seed's stage-1 model, which only its cells train: without
    # one a seed is skipped (a stage 1 trained here would be another model), never trained
    capsys.readouterr()
    ev.main(["precompute", "continual", "--only", "donod", *args])
    out = capsys.readouterr().out
    assert "== continual: seed 0, 1 skipped for the methods that score with the seed's stage-1 model" in out
    assert "continual donod seed" not in out and not (root / "continual" / "stage1").exists()
    # with seed 0's stage-1 model (a cell trained it; on a GPU: carried over) it scores with that model,
    # into the cache the cell of that seed then reads
    ev.main(["run", "continual", "--only", "base", *args, "--seeds", "1"])
    meta = root / "continual" / "stage1" / "s0" / "tunesift_train.json"
    stamp = meta.stat().st_mtime_ns
    ev.main(["precompute", "continual", "--only", "donod", *args])
    out = capsys.readouterr().out
    assert "== continual: seed 1 skipped" in out and "continual donod seed 1" not in out
    assert re.search(r"continual donod seed 0: 2 picked at 0.1, .*cache blocks read 0, written [1-9]", out)
    assert meta.stat().st_mtime_ns == stamp  # read, not retrained
    ev.main(["run", "continual", "--only", "donod", "--budgets", "0.1", *args, "--seeds", "1"])
    cell = json.loads((root / "continual" / "cells" / "donod__b0.1__s0.json").read_text())
    assert cell["score_cache"]["cached"] > 0 and cell["score_cache"]["written"] == 0


def test_the_plan_says_how_long_the_rest_of_the_grid_takes_at_the_measured_rates():
    ev = load_evidence()
    assert [ev.records_trained(m, b, 1000) for m, b in (("base", None), ("full", None), ("rds", 0.1),
                                                         ("rds", 0.3), ("rds", 50))] == [0, 1000, 100, 300, 50]
    finished = [{"n_train": 300, "train_s": 1200.0, "eval_s": 600.0}, {"n_train": 0, "train_s": 0.0, "eval_s": 500.0}]
    # 4 s per trained record, 550 s per evaluation: 100 records -> 950 s, base -> 550 s
    assert abs(ev.hours_left([100, 0], finished) - 1500 / 3600) < 1e-9
    assert ev.hours_left([100], []) is None and ev.hours_left([100], finished[1:]) is None
    # a continual bench's stage 1 (records x epochs not yet trained) costs training, no evaluation
    assert abs(ev.hours_left([100, 0], finished, 600) - (1500 + 2400) / 3600) < 1e-9


def test_each_experiment_trains_at_its_pinned_precision_and_autocast_overrides_it():
    """task and noise began in bfloat16 on a Xeon with AMX; bfloat16 is emulated 9.5x slower on an
    AVX2-only AMD EPYC, so the experiments begun later train in float32 on a CPU, where a session on
    either CPU can run them. Their folders pin what the first cell ran with, so this default must
    not move under them."""
    ev = load_evidence()
    a = grid_args(ev)
    data, caches = Path("d"), Path("c")
    precision = {exp: ev.config(exp, data, caches, a).training.autocast for exp in ev.EXPERIMENTS}
    assert precision == {"instruction": "none", "task": "bfloat16", "noise": "bfloat16", "continual": "none",
                         "transfer": "none"}
    a.autocast = "bfloat16"
    assert ev.config("instruction", data, caches, a).training.autocast == "bfloat16"
    assert ev.autocast_of("instruction", None, "cuda") == "bfloat16"  # a GPU has it natively (own grid folder)
    # the pinned folders on disk agree with the defaults (a moved default would refuse to resume them)
    for exp in ("task", "noise", "instruction"):  # the folders with cells (instruction's from session 23)
        pinned = json.loads((Path(__file__).parent.parent / "bench/results/evidence" / exp / "bench.json").read_text())
        assert pinned["config"]["training"]["autocast"] == precision[exp]


def test_only_and_budgets_never_crash_an_experiment_they_leave_empty(capsys):
    """--only less left the instruction bench with no method ("unknown bench method ''") before
    the task bench ran; --budgets 0.1 added 10% cells to transfer, whose design has 30% only; a
    misspelt method was dropped in silence."""
    from types import SimpleNamespace

    ev = load_evidence()
    a = SimpleNamespace(smoke=False, only="less", dense_delift=False, budgets=None, seeds=3, knn=16,
                        select_model=None, train_model=None, autocast="bfloat16", checkpointing="off", device="cpu")
    data, caches = Path("d"), Path("c")
    assert ev.skipped(ev.config("instruction", data, caches, a)) == "none of --only's methods is one of its methods"
    assert ev.skipped(ev.config("task", data, caches, a)) is None
    a.only, a.budgets = None, "0.1"
    assert ev.budgets_of("transfer", a) == [] and ev.budgets_of("task", a) == [0.1]
    assert ev.skipped(ev.config("transfer", data, caches, a)) == "none of --budgets is one of its budgets"
    a.budgets = "0.1,0.3"
    assert ev.budgets_of("transfer", a) == [0.3] and ev.budgets_of("noise", a) == [0.1, 0.3]
    with pytest.raises(SystemExit) as stop:
        ev.main(["plan", "--only", "rds,delift_se"])
    assert stop.value.code == 2 and "--only: no experiment has the method(s) delift_se" in capsys.readouterr().err


def test_the_summary_says_when_transfer_trained_on_other_picks_than_instruction():
    ev = load_evidence()
    inst = [{"method": "rds", "budget": 0.3, "seed": 0, "selected_ids": ["a", "b"]},
            {"method": "rds", "budget": 0.3, "seed": 1, "selected_ids": ["c", "d"]}]
    same = [{"method": "base", "budget": "all", "seed": 0, "selected_ids": []},
            {"method": "rds", "budget": 0.3, "seed": 0, "selected_ids": ["b", "a"]},
            {"method": "rds", "budget": 0.3, "seed": 2, "selected_ids": ["x"]}]
    assert "picks are instruction's: 1 of 2 cells checked" in ev.same_picks(same, inst)
    other = [{"method": "rds", "budget": 0.3, "seed": 1, "selected_ids": ["c", "e"]}]
    assert "differ from instruction's" in ev.same_picks(other, inst) and "rds @ 0.3 seed 1" in ev.same_picks(other, inst)


def test_the_summary_names_the_rows_without_a_verdict():
    ev = load_evidence()
    marked = {"method": "rds", "budget": 0.1, "paired_seeds": 3, "loss": 0.9, "loss_std": 0.01,
              "loss_vs_random": -0.2, "loss_vs_random_se": 0.02, "loss_vs_random_p": 0.009}
    early = {"method": "ifd", "budget": 0.1, "paired_seeds": 2, "loss": 1.0, "loss_std": 0.01,
             "loss_vs_random": -0.1, "loss_vs_random_se": 0.01}
    within = {**marked, "method": "delift-se", "loss_vs_random": -0.01}
    lines = ev.verdict_lines([marked, early, within])
    assert lines[0].startswith("- rds at budget 0.1: loss better than random by 0.2000") and "p = 0.009" in lines[0]
    assert lines[1:] == ["- no verdict yet (fewer than 3 paired seeds): ifd @ 0.1"]
    tiny = ev.verdict_lines([{**marked, "loss_vs_random_p": 0.0004}])[0]
    assert "p < 0.001" in tiny and "p = <" not in tiny
    assert ev.verdict_lines([within]) == ["none"]


def test_transfer_shows_what_its_picks_cost_not_the_cache_read():
    """transfer reads experiment 1's score cache: whichever of the two ran a method first paid for
    its selection, and both tables show that cost (the largest select_s of the method in either)."""
    ev = load_evidence()
    instruction = [cell("rds", 0.1, s, {"loss": 1.0}, select_s=s_) for s, s_ in ((0, 200.0), (1, 0.4))]
    transfer = [cell("rds", 0.1, 0, {"loss": 1.1}, select_s=0.3), cell("random", 0.1, 0, {"loss": 1.2}, select_s=0.0),
                cell("delift-se", 0.3, 0, {"loss": 1.0}, select_s=30.0)]
    ev.shared_selection_cost(instruction, transfer)
    assert [c["select_s"] for c in instruction] == [200.0, 200.0]
    assert [c["select_s"] for c in transfer] == [200.0, 0.0, 30.0]  # delift-se ran in transfer first
    rows = {r["method"]: r for r in aggregate(transfer)}
    assert rows["rds"]["select_s"] == 200.0 and rows["rds"]["cost_ratio"] == 100.0


def test_rows_without_a_verdict_are_named_never_reported_as_within_noise(tmp_path):
    """An empty list of marks must not read as "within noise" for rows that were never tested:
    fewer than 3 paired seeds, no random cells at their budget, or a difference that is NaN."""
    two = [cell("random", 0.3, s, {"loss": 1.0 + 0.01 * s}) for s in range(2)] + [
        cell("rds", 0.3, s, {"loss": 0.5 + 0.011 * s}) for s in range(2)]  # ~1000 SE apart, 2 seeds
    assert bt.verdict_lines(aggregate(two)) == ["- no verdict yet (fewer than 3 paired seeds): rds @ 0.3"]
    nan = [cell("random", 0.3, s, {"loss": [1.0, float("nan"), 1.02][s]}) for s in range(3)] + [
        cell("rds", 0.3, s, {"loss": 0.5 + 0.01 * s}) for s in range(3)]
    assert bt.verdict_lines(aggregate(nan)) == [
        "- no verdict (a paired difference is not a number: the metric is NaN or missing in some seed): rds @ 0.3 (loss)"]
    apart = [cell("random", 0.1, s, {"loss": 1.0}) for s in range(3)] + [cell("rds", 0.3, s, {"loss": 0.5})
                                                                        for s in range(3)]
    assert bt.verdict_lines(aggregate(apart)) == [
        "- no verdict (no random cells at the same budget to pair with): rds @ 0.3"]
    cfg = BenchConfig(train="a.jsonl", test="b.jsonl", methods=["random", "rds"], training=TrainConfig())
    bt.write_results(tmp_path, aggregate(two), cfg)
    text = (tmp_path / "results.md").read_text()
    assert "None: every difference" not in text and "no verdict yet (fewer than 3 paired seeds): rds @ 0.3" in text
    within = [cell("random", 0.3, s, {"loss": 1.0 + 0.01 * s}) for s in range(3)] + [
        cell("rds", 0.3, s, {"loss": 1.0 + 0.01 * ((s + 1) % 3)}) for s in range(3)]
    assert bt.verdict_lines(aggregate(within)) == ["none"]
    assert bt.verdict_lines(aggregate(within[:3])) == ["- no verdict yet: no selector has a finished cell"]


def test_a_mean_over_more_seeds_than_its_difference_says_so():
    cells = [cell("random", 0.3, s, {"loss": 1.0}) for s in range(2)] + [
        cell("rds", 0.3, s, {"loss": [0.9, 0.9, 2.0][s]}) for s in range(3)]
    table = markdown_table(aggregate(cells))
    assert "| rds | 0.3 | 3 |" in table and "(Δ -0.1000 ± 0.0000, 2 paired)" in table


def test_one_record_and_the_whole_pool_are_different_budgets():
    cells = [cell("rds", 1, s, {"loss": 2.0}, n=1) for s in range(3)] + [
        cell("rds", 1.0, s, {"loss": 1.0}, n=1000) for s in range(3)] + [
        cell("random", 1, s, {"loss": 2.5}, n=1) for s in range(3)]
    rows = {(r["method"], type(r["budget"]).__name__): r for r in aggregate(cells)}
    assert rows[("rds", "int")]["loss"] == 2.0 and rows[("rds", "float")]["loss"] == 1.0
    assert rows[("rds", "int")]["loss_vs_random"] == -0.5 and "loss_vs_random" not in rows[("rds", "float")]


def test_repeated_problems_are_dropped_from_a_source_keeping_the_first():
    """MAWPS repeats 215 of its 2,065 problems across its parts, spelled with other spaces and commas:
    the mixed pool held the same question twice."""
    ev = load_evidence()
    rows = [{"prompt": "90,171 people were born."}, {"prompt": "A cat."}, {"prompt": "90171  People were born"},
            {"prompt": "a CAT"}, {"prompt": "A dog."}]
    assert ev._first_of_each(rows) == [rows[0], rows[1], rows[4]]


def _ran(cpu_features, code):
    return {"ran_with": {"code": code, "machine": {"cpu": "Xeon", "features": cpu_features, "cores": 2}}}


def test_provenance_names_comparisons_that_span_machines_code_or_stage_one_models():
    """Cells of one grid are made over sessions on machines that differ (bf16 autocast runs other
    kernels without AMX) and by changing code; nothing said so, and a paired difference then holds
    that change too."""
    amx, plain = ["avx512f", "amx_bf16"], ["avx512f"]
    cells = [{**cell("random", 0.3, s, {"loss": 1.0}), **_ran(amx, "c1"), "checkpointing": False} for s in range(3)]
    cells += [{**cell("rds", 0.3, s, {"loss": 0.9}), **_ran(amx, "c1"), "checkpointing": False} for s in range(3)]
    cells += [{**cell("ifd", 0.3, s, {"loss": 0.9}), **_ran(plain, "c1")} for s in range(3)]
    cells += [{**cell("donod", 0.3, s, {"loss": 0.9}), **_ran(amx, "c2" if s else "c1")} for s in range(3)]
    cells += [{**cell("base", None, 0, {"loss": 1.2}), **_ran(plain, "c1")}]
    text = bt.provenance_table(cells)
    rows = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert rows["rds"].endswith("| A | 1 | off |  |")  # same machine and code as random: nothing to flag
    assert rows["ifd"].endswith("| B | 1 | not recorded | machines |")
    assert rows["donod"].endswith("| A | 2 | not recorded |  |")  # code versions are counted, not flagged
    assert rows["base"].startswith("| base | all | 0 | B |") and rows["base"].endswith("|  |")  # a reference
    assert "A = Xeon (avx512f, amx_bf16; 2 cores); B = Xeon (avx512f; 2 cores)" in text
    assert "(the difference includes that change): ifd @ 0.3 (machines)." in text
    # a row made on two machines, each seed on random's machine of that seed, is not flagged
    split = [{**c, **_ran(plain if c["seed"] == 2 else amx, "c1")} for c in cells[:6]]
    rows = {ln.split(" | ")[0][2:]: ln for ln in bt.provenance_table(split).splitlines() if ln.startswith("| rds")}
    assert rows["rds"].endswith("| A, B | 1 | off |  |")
    split[5] = {**split[5], **_ran(amx, "c1")}  # rds seed 2 now on another machine than random seed 2
    assert "rds @ 0.3 (machines)" in bt.provenance_table(split)
    # a sequential continual bench: each seed's cells must start from one stage-1 model
    two = [{**c, "stage1_digest": "x"} for c in cells[:6]]
    two[3]["stage1_digest"] = "y"  # rds seed 0 started from another stage-1 model than random seed 0
    assert "rds @ 0.3 (stage-1 models)" in bt.provenance_table(two)
    assert bt.provenance_table([]) == ""


def test_a_selection_that_found_its_scores_partly_cached_is_marked(tmp_path):
    """A killed selection resumes from its cached blocks: the cell that finishes it measures only
    the rest, and the table showed that as the method's cost."""
    from tunesift.store import ArrayStore, counting_cache

    store = ArrayStore(tmp_path)
    store.put("old", np.zeros(2))  # an earlier run's block
    with counting_cache() as counts:
        store.get("old")
        store.put("new", np.ones(2))
        store.get("new")  # computed by this run, read back: not "cached"
        assert store.get("missing") is None
    assert counts == {"cached": 1, "written": 1}
    cells = [cell("random", 0.3, 0, {"loss": 1.0}, select_s=0.0),
             {**cell("delift", 0.3, 0, {"loss": 0.9}, select_s=3000.0), "score_cache": {"cached": 3, "written": 16}},
             {**cell("delift", 0.3, 1, {"loss": 0.9}, select_s=2.0), "score_cache": {"cached": 19, "written": 0}},
             {**cell("rds", 0.3, 0, {"loss": 0.9}, select_s=50.0), "score_cache": {"cached": 0, "written": 4},
              "eval_counts": {"generations_capped": 12}},
             {**cell("rds", 0.3, 1, {"loss": 0.9}, select_s=1.0), "score_cache": {"cached": 4, "written": 0},
              "eval_counts": {"generations_capped": 7}}]
    rows = {r["method"]: r for r in aggregate(cells)}
    assert rows["delift"]["select_partly_cached"]  # no delift cell started cold
    assert "select_partly_cached" not in rows["rds"] and rows["rds"]["generations_capped"] == 9.5
    table = markdown_table(list(rows.values()))
    lines = {ln.split(" | ")[0][2:]: ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "| 3000.0 † |" in lines["delift"] and "| 50.0 |" in lines["rds"] and "| 10 |" in lines["rds"]
    # the ratio of a partly cached selection is a lower bound, said so; a whole one is plain
    assert lines["delift"].endswith("| ≥ 1500 † |") and lines["rds"].endswith("| 25.00 |")
    for ratio, shown in ((0.002, "0.0020"), (0.0096, "0.0096"), (0.126, "0.12"), (0.999, "0.99"), (3.0, "3.0")):
        # rounded down, never up: a lower bound stays one
        assert bt.cost_text({**rows["delift"], "cost_ratio": ratio}, "cost_ratio", bt._ratio) == f"≥ {shown} †"
    assert "†: no selection of this method started from an empty score cache" in table
    assert "generations capped" in table.splitlines()[0]
    # transfer reads instruction's cache: its cells all find the scores cached, but instruction's
    # first cell computed them cold, so the shared cost is whole and carries no mark
    ev = load_evidence()
    first = [{**cell("rds", 0.1, 0, {"loss": 1.0}, select_s=200.0), "score_cache": {"cached": 0, "written": 4}}]
    then = [{**cell("rds", 0.1, 0, {"loss": 1.1}, select_s=0.3), "score_cache": {"cached": 4, "written": 0}}]
    ev.shared_selection_cost(first, then)
    assert "select_partly_cached" not in aggregate(then)[0]
    # a cell made before the counts existed proves nothing beside counted warm-cache cells; a
    # count from some seeds only says how many
    old = {**cell("ifd", 0.3, 0, {"loss": 0.9}, select_s=9.0), "eval_counts": {"generations_capped": 30}}
    warm = [{**cell("ifd", 0.3, s, {"loss": 0.9}, select_s=1.0), "score_cache": {"cached": 4, "written": 0}}
            for s in (1, 2)]
    row = aggregate([old, *warm])[0]
    assert row["select_partly_cached"] and "select_partly_cached" not in aggregate([old])[0]
    assert "| 30 (1 of 3 seeds) |" in markdown_table([row])


def test_a_control_stays_out_of_the_family_of_selector_comparisons():
    rows = [{"method": m, "budget": 0.1, "paired_seeds": 3, "loss": 0.9, "loss_std": 0.01, "loss_vs_random": -0.2,
             "loss_vs_random_se": 0.02, "loss_vs_random_p": p}
            for m, p in (("rds", 0.01), ("random-gsm8k", 0.001), ("balanced-random", 0.002))]
    [line] = bt.family_lines(rows)
    assert "Holm over the 1 paired comparisons" in line and "random" not in line
    assert bt.beyond_noise_lines(rows)[2].startswith("- balanced-random (a control) at budget 0.1")
    assert bt.beyond_noise_lines(rows)[1].startswith("- random-gsm8k (a control) at budget 0.1")


def test_every_cell_in_the_folder_is_tabulated_whichever_run_made_it(tmp_path):
    """A run of one method (--only) rewrote the folder's tables from its own cells alone: no random
    row, no paired difference, a smaller Holm family."""
    for c in (cell("random", 0.3, 0, {"loss": 1.0}), cell("donod", 0.3, 0, {"loss": 1.1}), cell("base", None, 0, {"loss": 1.2})):
        (tmp_path / "cells").mkdir(exist_ok=True)
        (tmp_path / "cells" / f"{bm.cell_name(c['method'], c['budget'], c['seed'])}.json").write_text(json.dumps(c))
    (tmp_path / "cells" / ".random__b0.3__s1.json.x.tmp").write_text("{")  # a write in flight: not a cell
    assert sorted(c["method"] for c in bm.load_cells(tmp_path)) == ["base", "donod", "random"]


def test_a_half_prepared_data_folder_is_prepared_again(tmp_path, monkeypatch):
    ev = load_evidence()
    data = tmp_path / "work" / "evidence" / "data"
    for name in ev.INPUTS:
        ev._write(data / f"{name}.jsonl", [{"prompt": "p", "response": "r"}])
    assert not list(data.glob(".*"))  # written through a temporary file, nothing left beside
    (data / "gsm8k_existing.jsonl").unlink()  # killed before the last file was written
    called = []
    monkeypatch.setattr(ev, "prepare", lambda shared, out: called.append(out) or (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        ev.main(["run", "noise", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "r")])
    assert called == [data]


def test_results_plot_names_base_the_stage1_model_only_in_a_sequential_continual_bench(tmp_path, monkeypatch):
    # one predicate (bench_tables.has_stage1) serves the runner and the tables
    labels = []
    monkeypatch.setattr(bt, "plot_results", lambda out, rows, base_label: labels.append(base_label))
    rows = aggregate([cell("random", 0.3, s, {"loss": 1.0 + 0.01 * s}) for s in range(3)])
    for continual, want in (("sequential", "base (stage 1 only)"), ("joint", "base (no fine-tuning)")):
        cfg = BenchConfig(train="a.jsonl", test="b.jsonl", methods=["random"], stage="continual",
                          existing="e.jsonl", continual=continual, training=TrainConfig())
        assert bm.has_stage1(cfg) is (continual == "sequential")
        bt.write_results(tmp_path, rows, cfg)
        assert labels[-1] == want
    bt.write_results(tmp_path, rows, BenchConfig(train="a.jsonl", test="b.jsonl", methods=["random"],
                                                 training=TrainConfig()))  # the instruction stage
    assert labels[-1] == "base (no fine-tuning)"


def test_same_machine_pairs_selectors_with_random_rerun_where_they_ran(tmp_path, capsys):
    """Selector cells made on machine X pair with random rerun on X (replacing the grid's random
    from machine Y); selector cells made on Y, or without a rerun random of their seed, are left
    out; each rerun reference is compared with the grid's own."""
    import json

    sm = load_bench_script("same_machine")

    def made(method, budget, seed, loss, machine, digest):
        c = cell(method, budget, seed, {"loss": loss})
        c["ran_with"] = {"machine": {"cpu": machine, "features": [], "cores": 2}}
        c["stage1_digest"] = digest
        return c

    grid = ([made("random", 0.3, s, 1.00 + 0.01 * s, "Y", f"y{s}") for s in range(3)]
            + [made("base", None, s, 1.20, "Y", f"y{s}") for s in range(3)]
            + [made("ifd", 0.3, s, 0.95 + 0.01 * s + 0.001 * s * s, "X", f"x{s}") for s in range(3)]
            + [made("donod", 0.3, s, 0.90, "Y", f"y{s}") for s in range(3)]
            + [made("rds", 0.1, 0, 1.5, "X", "x0")])
    rerun = [made("random", 0.3, s, 1.02 + 0.01 * s, "X", f"x{s}") for s in range(3)] + [
        made("random", 0.3, 3, 1.0, "X", "x3"),  # no grid cell of seed 3: added, pairs with nothing
        made("rds", 0.1, 0, 1.5000004, "Y", "y0")]  # a selector rerun where random ran: shift only
    cells, dropped = sm.repaired(grid, rerun)
    assert sorted((c["method"], c["seed"]) for c in dropped) == [("donod", 0), ("donod", 1), ("donod", 2), ("rds", 0)]
    rand = {c["seed"]: c["metrics"]["loss"] for c in cells if c["method"] == "random"}
    assert rand == pytest.approx({0: 1.02, 1: 1.03, 2: 1.04, 3: 1.0})  # the rerun replaced the grid's
    assert sum(c["method"] == "base" for c in cells) == 3  # no rerun base: the grid's stay
    ifd = {r["method"]: r for r in aggregate(cells)}["ifd"]
    d = np.array([0.95 - 1.02, 0.961 - 1.03, 0.974 - 1.04])
    assert ifd["paired_seeds"] == 3 and ifd["loss_vs_random"] == pytest.approx(d.mean())
    assert ifd["loss_vs_random_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert sum(c["method"] == "rds" for c in cells) == 0  # the rerun rds does not replace the grid's
    shift = sm.rerun_shift(grid, rerun)
    assert list(shift) == [("random", 0.3), ("rds", 0.1)] and shift[("random", 0.3)]["loss"][0] == pytest.approx(0.02)
    assert shift[("random", 0.3)]["loss"][1] == 0.0  # +0.02 in every seed: no spread
    assert shift[("rds", 0.1)]["loss"][0] == pytest.approx(4e-7) and shift[("rds", 0.1)]["loss"][2] == 1
    for folder, cs in (("grid", grid), ("rerun", rerun)):
        (tmp_path / folder / "cells").mkdir(parents=True)
        for i, c in enumerate(cs):
            (tmp_path / folder / "cells" / f"{i}.json").write_text(json.dumps(c))
    assert sm.main([str(tmp_path / "grid"), str(tmp_path / "rerun"), "--metrics", "loss"]) == 0
    out = capsys.readouterr().out
    assert "random @ 0.3: loss +0.0200 in every seed over 3 seeds" in out and "rds @ 0.1: loss +4.0e-07 over 1 seed" in out
    assert "ifd @ 0.3 (3 seeds): loss -0.0683" in out
    assert "Left out" in out and ": 4 cells" in out
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    assert sm.main([str(tmp_path / "grid"), str(tmp_path / "empty")]) == 2


def test_pick_objective_scores_picks_against_random_and_the_exact_greedy():
    """bench/pick_objective.py: the exact greedy's row is its reported objective (share 1), random's
    row the mean of its draws (share 0), another pick lies where its objective puts it between them."""
    import numpy as np

    from tunesift.selection.objectives import flcg_objective, set_value
    from tunesift.selection.submodular import fl_conditional_gain

    po = load_bench_script("pick_objective")
    rng = np.random.default_rng(3)
    S, E = rng.random((30, 30)), rng.random((30, 4)) * 0.7
    obj = flcg_objective(S, E, nu=1.0)
    res = fl_conditional_gain(S, E, 5, nu=1.0)
    other = np.array([0, 1, 2, 3, 4])
    rows = po.pick_rows(obj, {"same as exact": res.order[::-1], "first five": other}, np.sort(res.order), 30, 50)
    by = {r["pick"].split(" (")[0]: r for r in rows}
    assert by["exact greedy"]["value"] == pytest.approx(res.objective)
    rand = po.random_values(obj, 30, 5, 50)
    assert by["random"]["value"] == pytest.approx(rand.mean()) and by["random"]["share"] == 0.0
    assert by["same as exact"]["share"] == pytest.approx(1.0)
    f = set_value(obj, other)
    assert by["first five"]["share"] == pytest.approx((f - rand.mean()) / (res.objective - rand.mean()))
    assert by["first five"]["share"] < 1.0
    assert np.isnan(po.gap_share(1.0, 2.0, 2.0)) and po.gap_share(3.0, 1.0, 5.0) == pytest.approx(0.5)
    cells = [{"method": "random", "metrics": {"loss": 2.0, "loss@gsm8k": 1.0}},
             {"method": "delift", "metrics": {"loss": 2.5, "loss@gsm8k": 0.75}},
             {"method": "ifd", "metrics": {"loss": 1.5}}]
    assert po.loss_vs_random(cells) == {"random": {"loss": 0.0}, "delift": {"loss": 0.5}, "ifd": {"loss": -0.5}}
    assert po.loss_vs_random(cells[:2])["delift"] == {"loss": 0.5, "loss@gsm8k": -0.25}
    assert po.loss_vs_random(cells[1:]) == {}
