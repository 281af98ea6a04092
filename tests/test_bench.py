"""The bench loop with a tiny model: every cell, tables and plots, resume, pinned settings; the
finetune/evaluate commands; donod+delift."""

import json

import numpy as np
import pytest

from tunesift import bench as bench_mod
from tunesift.bench_tables import aggregate, markdown_table
from tunesift.cli import main
from tunesift.io.records import read_records
from tunesift.pipeline import select


def run(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-data")
    for name, rng in (("train", range(24)), ("test", range(30, 36))):
        with open(d / f"{name}.jsonl", "w") as fh:
            for i in rng:
                fh.write(json.dumps({"instruction": f"What is {i} + {i}?", "output": f"It is #### {2 * i}"}) + "\n")
    return d


def bench_args(data, tiny_dir, out, *extra):
    return ["bench", "--train", data / "train.jsonl", "--test", data / "test.jsonl", "--out", out,
            "--select-model", tiny_dir, "--train-model", tiny_dir, "--cache-dir", out.parent / "cache",
            "--quick", "--seeds", "2", "-q", *extra]


def check_backfill(out, data, cell):
    """A cell made before cells kept their per-question results gets them back from its generations;
    a cell its generations do not match, or another test set, is refused with nothing written."""
    from tunesift.errors import TunesiftError

    path = out / "cells" / "random__b0.25__s1.json"
    old = {**cell, "items": {k: v for k, v in cell["items"].items() if k != "exact_match"}}
    path.write_text(json.dumps(old))
    assert bench_mod.backfill_items(out, data / "test.jsonl") == (["random__b0.25__s1"], [])
    assert json.loads(path.read_text()) == cell
    assert bench_mod.backfill_items(out, data / "test.jsonl") == ([], [])  # kept items are left as they are
    wrong = {**old, "metrics": {**old["metrics"], "exact_match": old["metrics"]["exact_match"] + 0.5}}
    path.write_text(json.dumps(wrong))
    gen = out / "generations" / "random__b0.25__s1.jsonl"
    with pytest.raises(TunesiftError, match="exact match recomputed"):
        bench_mod.backfill_items(out, data / "test.jsonl")
    assert json.loads(path.read_text()) == wrong
    with pytest.raises(TunesiftError, match="not the test set"):
        bench_mod.backfill_items(out, data / "train.jsonl")
    rows = gen.read_text().splitlines()
    gen.write_text("\n".join(rows[1:]) + "\n")  # generations that skip the first question
    path.write_text(json.dumps(old))
    with pytest.raises(TunesiftError, match="not the first"):
        bench_mod.backfill_items(out, data / "test.jsonl")
    gen.write_text("\n".join(rows) + "\n")
    gen.rename(gen.with_suffix(".moved"))
    assert bench_mod.backfill_items(out, data / "test.jsonl") == ([], ["random__b0.25__s1"])
    gen.with_suffix(".moved").rename(gen)
    path.write_text(json.dumps(cell, indent=1) + "\n")


def test_bench_runs_every_cell_writes_tables_and_resumes(data, tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "b"
    code, stdout, err = run(bench_args(data, tiny_dir, out, "--budget", "0.25,0.5"), capsys)
    assert code == 0, err
    cells = sorted(p.name for p in (out / "cells").iterdir())
    # base once; 5 selectors x 2 budgets x 2 seeds; full x 2 seeds
    assert len(cells) == 1 + 5 * 2 * 2 + 2
    for name in ("results.md", "results.csv", "results.json", "results.png", "curve.png", "bench.json"):
        assert (out / name).stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in rows} == {"base", "random", "delift-se", "delift", "donod", "donod+delift", "full"}
    by = {(r["method"], r["budget"]): r for r in rows}
    assert by[("base", "all")]["n_train"] == 0 and by[("full", "all")]["n_train"] == 24
    assert by[("random", 0.25)]["n_train"] == 6 and by[("delift", 0.5)]["n_train"] == 12
    assert all(r["seeds"] == (1 if r["method"] == "base" else 2) for r in rows)
    assert {"loss", "perplexity", "rougeL", "exact_match", "cosine"} <= set(rows[0])  # math answers: EM on
    cell = json.loads((out / "cells" / "random__b0.25__s1.json").read_text())
    train_ids = {r.id for r in read_records(data / "train.jsonl")}
    assert len(cell["selected_ids"]) == 6 and len(set(cell["selected_ids"])) == 6
    assert set(cell["selected_ids"]) <= train_ids
    # the generations sit beside the cell (a cell stays small enough for version control)
    assert "generations" not in cell
    gens = [json.loads(line) for line in (out / "generations" / "random__b0.25__s1.jsonl").open()]
    test_ids = [r.id for r in read_records(data / "test.jsonl")]
    assert gens and [g["id"] for g in gens] == test_ids[:len(gens)] and all(isinstance(g["prediction"], str) for g in gens)
    assert sorted(p.stem for p in (out / "generations").iterdir()) == sorted(p.stem for p in (out / "cells").iterdir())
    # each question's exact match, kept in the cell for the question-by-question test (bench_tables)
    bits = cell["items"]["exact_match"]
    assert len(bits) == len(gens) and set(bits) <= {"0", "1"}
    assert bits.count("1") / len(bits) == pytest.approx(cell["metrics"]["exact_match"])
    loss, w = np.array(cell["items"]["loss"]), np.array(cell["items"]["n_tokens"])
    assert len(loss) == len(w) == len(test_ids) and np.dot(loss, w) / w.sum() == pytest.approx(cell["metrics"]["loss"],
                                                                                             rel=1e-5)
    check_backfill(out, data, cell)
    from tunesift.bench import code_fingerprint
    from tunesift.machine import cpu_model

    ran = cell["ran_with"]  # which code and machine made it: cells of one grid span sessions
    assert ran["code"] == code_fingerprint() and len(ran["code"]) == 16
    assert ran["versions"]["tunesift"] and ran["machine"]["cpu"] == cpu_model()
    assert "| random | 0.25 | 2 | 6 |" in stdout
    # a rerun reruns nothing: make training fail if it were called
    monkeypatch.setattr("tunesift.finetune.finetune", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert run(bench_args(data, tiny_dir, out, "--budget", "0.25,0.5"), capsys)[0] == 0
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    # other settings in the same folder are refused, with one line and exit 2
    code, _, err = run(bench_args(data, tiny_dir, out, "--budget", "0.25", "--epochs", "2"), capsys)
    assert code == 2 and "other settings" in err and err.count("\n") == 1


def test_a_bench_pins_its_models_weights_and_refuses_other_weights(data, tiny_dir, tmp_path, capsys):
    """The key names a model only: a model folder re-exported between runs would add cells made on
    other weights to the earlier ones. bench.json and each cell record the fingerprint; a changed
    one is refused (one line, exit 2, no cell written)."""
    import shutil

    from tunesift.models import fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    out = tmp_path / "b"
    args = ["bench", "--train", data / "train.jsonl", "--test", data / "test.jsonl", "--out", out,
            "--train-model", model, "--cache-dir", tmp_path / "cache", "--quick", "-q",
            "--methods", "random", "--budget", "0.25"]
    code, _, err = run([*args, "--seeds", "1"], capsys)
    assert code == 0, err
    pinned = {str(model): fingerprint(model)}
    assert json.loads((out / "bench.json").read_text())["models"] == pinned
    assert json.loads((out / "cells" / "random__b0.25__s0.json").read_text())["ran_with"]["models"] == pinned
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "note": "re-exported"}))
    code, _, err = run([*args, "--seeds", "2"], capsys)
    assert code == 2 and "has other weights than when this bench's cells ran" in err and err.count("\n") == 1
    assert not (out / "cells" / "random__b0.25__s1.json").exists()
    assert json.loads((out / "bench.json").read_text())["models"] == pinned  # the pin is kept


def test_random_cells_differ_by_seed_and_full_uses_everything(data, tiny_dir, tmp_path, capsys):
    out = tmp_path / "b"
    code, _, err = run(bench_args(data, tiny_dir, out, "--methods", "random,full", "--budget", "0.5"), capsys)
    assert code == 0, err
    a, b = (json.loads((out / "cells" / f"random__b0.5__s{s}.json").read_text()) for s in (0, 1))
    assert a["selected_ids"] != b["selected_ids"] and len(a["selected_ids"]) == 12
    f = json.loads((out / "cells" / "full__ball__s0.json").read_text())
    assert len(f["selected_ids"]) == 24 and f["train_losses"]


def test_bench_gives_balanced_random_its_field_and_select_s_knn(data, tiny_dir, tmp_path, capsys, monkeypatch):
    """balanced-random could not run in a bench (no --by), and DELIFT defaulted to the dense
    kernel there while select defaults to 16 neighbours."""
    seen = {}
    monkeypatch.setattr(bench_mod, "run_bench", lambda cfg, out, progress=None: seen.setdefault("cfg", cfg) and [])
    code, _, err = run([*bench_args(data, tiny_dir, tmp_path / "b"), "--methods", "base,balanced-random",
                        "--by", "meta.source"], capsys)
    assert code == 0, err
    assert seen["cfg"].method_options == {"balanced-random": {"by": "meta.source"}}
    assert seen["cfg"].select_options["knn"] == 16
    bench_mod._check(seen["cfg"])  # the grid checks accept it


@pytest.mark.parametrize("extra, message", [
    (["--methods", "random,magic"], "unknown bench method 'magic'"),
    (["--seeds", "0"], "seeds must be at least 1"),
    (["--stage", "task"], "needs --target"),
    (["--budget", "1.5"], "budget fraction"),
    (["--metrics", "bleu"], "unknown metric"),
    (["--autocast", "fp8"], "autocast"),
    (["--stage", "bogus"], "unknown stage 'bogus'"),
    (["--budget", ","], "no budget given"),
    (["--budget", "0.3,0.30"], "budget 0.3 is given twice"),
    (["--methods", "random,full,random"], "method random is given twice"),
    (["--train-limit", "0"], "train-limit must be a whole number of at least 1, got 0"),
    (["--test-limit", "-3"], "test-limit must be a whole number of at least 1, got -3"),
    (["--generate-limit", "0"], "the test set: generate-limit must be at least 1"),
    (["--train-model", "no-such/model"], "cannot load model 'no-such/model' offline"),
    (["--select-model", "no-such-model.gguf"], "model file 'no-such-model.gguf' not found"),
    (["--by", "meta.source"], "--by is read only by balanced-random, which --methods does not name"),
    (["--methods", "balanced-random"], "balanced-random needs --by"),
])
def test_bad_bench_options(extra, message, data, tiny_dir, tmp_path, capsys):
    code, _, err = run(bench_args(data, tiny_dir, tmp_path / "b", *extra), capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "b").exists()  # refused before anything is written, bench.json included


def test_a_likelihood_only_bench_may_generate_nothing(data, tiny_dir, tmp_path, capsys):
    out = tmp_path / "b"
    code, _, err = run(bench_args(data, tiny_dir, out, "--methods", "base", "--metrics", "loss",
                                  "--generate-limit", "0"), capsys)
    assert code == 0, err
    cell = json.loads((out / "cells" / "base__ball__s0.json").read_text())
    assert set(cell["metrics"]) == {"loss"}


@pytest.mark.parametrize("case", ["foreign", "file", "input-inside", "inside-input", "damaged", "not-a-bench"])
def test_the_bench_folder_is_checked_before_anything_is_written(case, data, tiny_dir, tmp_path, capsys):
    out = tmp_path / "b"
    extra = []
    if case == "foreign":  # a folder of the user's own files: the bench would write among them
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        message = "holds files that are not a bench's (notes.txt; no bench.json)"
    elif case == "file":
        out.write_text("mine")
        message = "exists and is not a folder"
    elif case == "input-inside":  # a bench folder holding the pool: results.* could overwrite it
        out.mkdir()
        (out / "bench.json").write_text("{}")
        (out / "pool.jsonl").write_text((data / "train.jsonl").read_text())
        extra = ["--train", out / "pool.jsonl"]
        message = "is inside the output folder"
    elif case == "inside-input":
        out = data / "bench-inside"
        message = "is inside the input folder"
        extra = ["--train", data]
    elif case == "damaged":
        out.mkdir()
        (out / "bench.json").write_text('{"key": "ab", "con')
        message = "bench.json: cannot read the bench's settings"
    else:
        out.mkdir()
        (out / "bench.json").write_text("[1, 2]")
        message = "bench.json: not a bench's settings"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, _, err = run(bench_args(data, tiny_dir, out, "--methods", "random", *extra), capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
    assert not (data / "bench-inside").exists()


def test_aggregate_mean_and_sample_std():
    cells = [{"method": "random", "budget": 0.3, "seed": s, "n_train": 3, "select_s": 1.0 - s / 4, "train_s": 2.0,
              "metrics": {"loss": v, "rougeL": 0.5}} for s, v in enumerate([1.0, 2.0, 3.0])]
    cells.append({"method": "base", "budget": None, "seed": 0, "n_train": 0, "select_s": 0.0, "train_s": 0.0,
                  "metrics": {"loss": 4.0, "rougeL": 0.1}})
    rows = aggregate(cells)
    assert [r["method"] for r in rows] == ["base", "random"]
    assert rows[1]["loss"] == 2.0 and rows[1]["loss_std"] == pytest.approx(1.0) and rows[1]["rougeL_std"] == 0.0
    assert rows[0]["loss_std"] == 0.0 and rows[0]["budget"] == "all"
    assert rows[1]["select_s"] == 1.0 and rows[1]["train_s"] == 2.0  # selection: the uncached (largest) time
    table = markdown_table(rows)
    assert "| random | 0.3 | 3 | 3 | 2.0000 ± 1.0000 | 0.5000 ± 0.0000 |" in table and "loss ↓" in table


def test_finetune_then_evaluate_commands(data, tiny_dir, tmp_path, capsys):
    ad = tmp_path / "adapter"
    code, _, err = run(["finetune", data / "train.jsonl", "--model", tiny_dir, "--out", ad, "--epochs", "1",
                        "--lr", "0.003", "-q"], capsys)
    assert code == 0, err
    meta = json.loads((ad / "tunesift_train.json").read_text())
    assert meta["base_model"] == str(tiny_dir) and meta["data"]["sha256"] and len(meta["losses"]) == 3
    code, stdout, err = run(["evaluate", "--test", data / "test.jsonl", "--adapter", ad, "--metrics", "loss,exact_match",
                             "--max-new-tokens", "4", "--out", tmp_path / "ev", "-q"], capsys)
    assert code == 0, err
    tuned = json.loads(stdout)
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and all(p["prediction"] is not None and p["loss"] > 0 for p in preds)
    code, stdout, _ = run(["evaluate", "--test", data / "test.jsonl", "--model", tiny_dir, "--metrics", "loss", "-q"],
                          capsys)
    assert code == 0 and json.loads(stdout)["loss"] > tuned["loss"]  # training on the same pattern helps


def test_select_and_evaluate_take_a_lora_adapter_folder_as_the_model(data, tiny_dir, tmp_path, capsys):
    """--model takes the folder `tunesift finetune` wrote with LoRA, merged into its base: a
    continual round selects with the model it continues from, without merging it by hand."""
    import pyarrow.parquet as pq

    from tunesift.finetune import load_trained

    ad = tmp_path / "adapter"
    assert run(["finetune", data / "train.jsonl", "--model", tiny_dir, "--out", ad, "--epochs", "1", "--lr", "0.003",
                "-q"], capsys)[0] == 0
    test = data / "test.jsonl"
    code, by_adapter, err = run(["evaluate", "--test", test, "--adapter", ad, "--metrics", "loss", "-q"], capsys)
    assert code == 0, err
    code, by_model, err = run(["evaluate", "--test", test, "--model", ad, "--metrics", "loss", "-q"], capsys)
    assert code == 0, err
    assert json.loads(by_model)["loss"] == pytest.approx(json.loads(by_adapter)["loss"], rel=1e-6)
    # trained on plain prompts (this model has a chat template): --model renders as training did too
    plain = tmp_path / "plain"
    assert run(["finetune", data / "train.jsonl", "--model", tiny_dir, "--out", plain, "--epochs", "1",
                "--template", "plain", "-q"], capsys)[0] == 0
    got = {flag: json.loads(run(["evaluate", "--test", test, flag, plain, "--metrics", "loss", "-q"], capsys)[1])
           for flag in ("--adapter", "--model")}
    chat = json.loads(run(["evaluate", "--test", test, "--model", plain, "--template", "chat", "--metrics", "loss",
                           "-q"], capsys)[1])
    assert got["--model"]["loss"] == pytest.approx(got["--adapter"]["loss"], rel=1e-6)
    assert abs(chat["loss"] - got["--model"]["loss"]) > 1e-3  # the template matters to the loss
    # select scores it on plain prompts too: --template auto is the trained one, not the chat template
    scored = {}
    for name, extra in (("auto", []), ("plain", ["--template", "plain"]), ("chat", ["--template", "chat"])):
        code, _, err = run(["select", data / "train.jsonl", "--method", "loss", "--budget", "0.5", "--model", plain,
                            "--out", tmp_path / f"sel-{name}", "--cache-dir", tmp_path / "cache", "-q", *extra], capsys)
        assert code == 0, err
        scored[name] = pq.read_table(tmp_path / f"sel-{name}" / "scores.parquet").column("loss").to_numpy()
        assert json.loads((tmp_path / f"sel-{name}" / "manifest.json").read_text())["template"] == (
            "plain" if name == "auto" else name)
    assert np.array_equal(scored["auto"], scored["plain"]) and not np.allclose(scored["auto"], scored["chat"])
    losses = {}
    for name, model in (("base", tiny_dir), ("tuned", ad)):
        code, _, err = run(["select", data / "train.jsonl", "--method", "loss", "--budget", "0.5", "--model", model,
                            "--out", tmp_path / name, "--cache-dir", tmp_path / "cache", "-q"], capsys)
        assert code == 0, err
        losses[name] = pq.read_table(tmp_path / name / "scores.parquet").column("loss").to_numpy()
    assert losses["tuned"].mean() < losses["base"].mean()  # scored by the model trained on these records
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert manifest["model"]["name"] == str(ad.resolve())
    assert manifest["model"]["fingerprint"] == load_trained(ad).fingerprint
    # a second round trains on from the adapter; its output may not replace a folder it stacks on
    ad2 = tmp_path / "round2"
    assert run(["finetune", data / "train.jsonl", "--model", ad, "--out", ad2, "--epochs", "1", "-q"], capsys)[0] == 0
    assert json.loads((ad2 / "tunesift_train.json").read_text())["base_model"] == str(ad.resolve())
    before = (ad / "adapter_model.safetensors").read_bytes()
    code, _, err = run(["finetune", data / "train.jsonl", "--model", ad2, "--out", ad, "--epochs", "1", "-q"], capsys)
    assert code == 2 and f"input '{ad}'" in err and len(err.strip().splitlines()) == 1
    assert (ad / "adapter_model.safetensors").read_bytes() == before


def test_finetune_and_evaluate_replace_only_their_own_unchanged_folders(data, tiny_dir, tmp_path, capsys, monkeypatch):
    """``--out`` of finetune and evaluate is swapped in as a whole like select's: a folder holding a
    user's files, or an earlier output edited since, is refused before any work, with nothing touched;
    an unchanged earlier output is replaced."""
    import tunesift.finetune

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    ft = ["finetune", data / "train.jsonl", "--model", tiny_dir, "--epochs", "1", "-q", "--out"]
    ev = ["evaluate", "--test", data / "test.jsonl", "--model", tiny_dir, "--metrics", "loss", "--limit", "2", "-q",
          "--out"]
    real = tunesift.finetune.finetune
    monkeypatch.setattr(tunesift.finetune, "finetune", lambda *a, **k: pytest.fail("trained before the check"))
    for args in (ft, ev):
        code, _, err = run(args + [mine], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "is not an earlier tunesift output" in err or "holds files tunesift did not write" in err, err
        assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    monkeypatch.setattr(tunesift.finetune, "finetune", real)
    for args, name, meta in ((ft, "m", "tunesift_train.json"), (ev, "e", "metrics.json")):
        out = tmp_path / name
        assert run(args + [out], capsys)[0] == 0
        assert run(args + [out], capsys)[0] == 0  # its own, unchanged: replaced
        files = json.loads((out / meta).read_text())["files"]
        assert files and set(files) == {p.name for p in out.iterdir()} - {meta}
        edited = out / sorted(files)[0]
        if edited.is_dir():
            edited = next(p for p in edited.rglob("*") if p.is_file())
        edited.write_bytes(edited.read_bytes() + b"\n")
        code, _, err = run(args + [out], capsys)
        assert code == 2 and "is not as tunesift wrote it" in err, err
        assert edited.read_bytes().endswith(b"\n")



def test_finetune_never_trains_into_the_model_folder_it_loads(data, tiny_dir, tmp_path, capsys, monkeypatch):
    """An unchanged earlier full-model output given as both --model and --out passed the folder
    check, and the run replaced the very base it had loaded (a LoRA run left an adapter whose base
    was gone)."""
    import tunesift.finetune

    ft = ["finetune", data / "train.jsonl", "--epochs", "1", "-q"]
    first = tmp_path / "run1"
    assert run(ft + ["--model", tiny_dir, "--mode", "full", "--out", first], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    monkeypatch.setattr(tunesift.finetune, "finetune", lambda *a, **k: pytest.fail("trained before the check"))
    for out in (first, first / "inner"):
        code, _, err = run(ft + ["--model", first, "--out", out], capsys)
        assert code == 2 and err.count("\n") == 1 and ("inside the output folder" in err or "inside the input" in err), err
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("args, message", [
    (["finetune", "DATA", "--out", "OUT", "--mode", "qlora"], "unknown fine-tuning mode"),
    (["finetune", "DATA"], "needs the training DATA and --out"),
    (["evaluate", "--test", "DATA", "--metrics", "bleu"], "unknown metric"),
    (["evaluate", "--test", "DATA", "--adapter", "OUT"], "not a fine-tuned model folder"),
    (["evaluate", "--test", "DATA", "--limit", "0"], "limit must be at least 1"),
    (["evaluate", "--test", "DATA", "--template", "bogus"], "unknown template 'bogus'"),
    (["evaluate", "--test", "DATA", "--max-length", "0"], "max-length must be a whole number of at least 8"),
    (["evaluate", "--test", "DATA", "--generate-limit", "0"], "generate-limit must be at least 1"),
    (["finetune", "DATA", "--out", "OUT", "--template", "bogus"], "unknown template 'bogus'"),
    (["evaluate", "--test", "DATA", "--max-length", "64", "--max-new-tokens", "64"],
     "max-new-tokens 64 leaves no room for the prompt in max-length 64"),
])
def test_bad_finetune_and_evaluate_options(args, message, data, tmp_path, capsys):
    args = [data / "train.jsonl" if a == "DATA" else tmp_path / "x" if a == "OUT" else a for a in args]
    code, _, err = run(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_donod_plus_delift_picks_inside_the_donod_prefilter(tiny_lm, tmp_path):
    rows = [{"instruction": f"Task {i}: say {i}", "output": f"{i} " * (1 + i % 5)} for i in range(20)]
    sel = select(rows, method="donod+delift", budget=5, prefilter=0.5, lm=tiny_lm, cache_dir=str(tmp_path))
    cols = sel.columns
    assert sel.kept.sum() == 5 and cols["prefiltered"].sum() == 10
    assert not (sel.kept & ~cols["prefiltered"]).any()  # DELIFT picks only what DONOD let through
    don = select(rows, method="donod", budget=10, lm=tiny_lm, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(cols["prefiltered"], don.kept)
    assert (cols["order"][~cols["prefiltered"]] == -1).all() and np.isnan(cols["gain"][~cols["prefiltered"]]).all()
    full = select(rows, method="donod+delift", budget=5, prefilter=1.0, lm=tiny_lm, cache_dir=str(tmp_path))
    plain = select(rows, method="delift", budget=5, lm=tiny_lm, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(full.kept, plain.kept)  # no cut: exactly DELIFT
    table = sel.table()
    assert table.num_rows == 20 and table.column("kept").to_pylist().count(True) == 5


def test_cell_names_are_file_safe():
    assert bench_mod.cell_name("donod+delift", 0.3, 1) == "donod-plus-delift__b0.3__s1"
    assert bench_mod.cell_name("full", None, 0) == "full__ball__s0"


def test_base_is_one_cell_unless_each_seed_has_its_own_stage1_model():
    kw = {"train": "t.jsonl", "test": "e.jsonl", "methods": ["base", "random", "full"], "budgets": [0.1, 0.3],
          "seeds": 3}
    cells = bench_mod.grid_cells(bench_mod.BenchConfig(**kw))
    assert [c for c in cells if c[0] != "random"] == [("base", None, 0), ("full", None, 0), ("full", None, 1),
                                                      ("full", None, 2)]
    assert len(cells) == 1 + 6 + 3
    joint = bench_mod.grid_cells(bench_mod.BenchConfig(**kw, stage="continual", existing="x.jsonl"))
    assert [c for c in joint if c[0] == "base"] == [("base", None, 0)]
    # sequential: base is the seed's stage-1 model, trained with that seed
    seq = bench_mod.grid_cells(bench_mod.BenchConfig(**kw, stage="continual", existing="x.jsonl",
                                                     continual="sequential"))
    assert [c for c in seq if c[0] == "base"] == [("base", None, 0), ("base", None, 1), ("base", None, 2)]
    assert len(seq) == 3 + 6 + 3


def test_a_bench_cell_leaves_no_model_alive(data, tiny_dir, tmp_path, monkeypatch):
    """At most one model lives at a time: whenever the bench loads a model (a cell's selection
    model, its training model), every model loaded before it is already freed (the selection
    model of the same cell, the previous cell's trained and merged model), and none is left after
    the run. The spy runs no garbage collection itself: the bench must free them."""
    import weakref

    from tunesift import models
    from tunesift.finetune import TrainConfig

    real, loaded, alive_at_load = models.load_lm, [], []

    def spy(*args, **kwargs):
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        lm = real(*args, **kwargs)
        loaded.append(weakref.ref(lm.model))
        return lm

    monkeypatch.setattr(models, "load_lm", spy)
    cfg = bench_mod.BenchConfig(train=str(data / "train.jsonl"), test=str(data / "test.jsonl"),
                                methods=["base", "donod", "random", "full"], seeds=1, select_model=str(tiny_dir),
                                train_model=str(tiny_dir), select_options={"cache_dir": str(tmp_path / "cache")},
                                training=TrainConfig(epochs=1), metrics=["loss", "rougeL"], max_new_tokens=4,
                                generate_limit=2)
    bench_mod.run_bench(cfg, tmp_path / "b")
    assert len(loaded) == 5  # base; donod's selection and training models; random; full
    assert alive_at_load == [0, 0, 0, 0, 0]
    assert all(ref() is None for ref in loaded)
    cells = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "b" / "cells").iterdir()}
    assert len(cells) == 4 and all(np.isfinite(c["metrics"]["loss"]) for c in cells.values())


def test_a_held_out_record_that_cannot_fit_stops_the_bench_before_any_cell(data, tiny_dir, tmp_path, capsys,
                                                                            monkeypatch):
    """Before the check, such a record stopped the first cell's evaluation, after its fine-tuning."""
    test = tmp_path / "long_test.jsonl"
    rows = [{"instruction": "What is 1 + 1?", "output": "It is #### 2"},
            {"instruction": "Say a lot.", "output": " ".join(f"word{i}" for i in range(200))}]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def no_training(*a, **k):
        raise AssertionError("a cell fine-tuned before the held-out set was checked")

    monkeypatch.setattr("tunesift.finetune.finetune", no_training)
    out = tmp_path / "b"
    code, _, err = run(bench_args(data, tiny_dir, out, "--methods", "full", "--test", test, "--max-length", "64"),
                       capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert str(test) in err and "(line 2)" in err and "does not fit max_length 64" in err, err
    assert not out.exists()  # nothing written


def test_every_cell_is_evaluated_in_float32_where_auto_means_bfloat16(data, tiny_dir, tmp_path, capsys, monkeypatch):
    """On a GPU the base cell was scored in bf16 while trained cells (merged in float32) were not:
    the rows differed by precision, not by training. So does `evaluate --model` against `--adapter`."""
    import tunesift.evaluate as ev_mod
    import tunesift.models as models

    real_dtype, real_eval = models.resolve_dtype, ev_mod.evaluate
    monkeypatch.setattr(models, "resolve_dtype", lambda d, dev: real_dtype("bfloat16" if d == "auto" else d, dev))
    seen = []

    def spy(lm, records, **kw):
        seen.append(next(lm.model.parameters()).dtype)
        return real_eval(lm, records, **kw)

    monkeypatch.setattr(ev_mod, "evaluate", spy)
    code, _, err = run(bench_args(data, tiny_dir, tmp_path / "b", "--methods", "base,random", "--budget", "0.25",
                                  "--seeds", "1", "--metrics", "loss"), capsys)
    assert code == 0, err
    import torch

    assert len(seen) == 2 and set(seen) == {torch.float32}
    seen.clear()
    code, _, err = run(["evaluate", "--test", data / "test.jsonl", "--model", tiny_dir, "--metrics", "loss", "-q"],
                       capsys)
    assert code == 0 and seen == [torch.float32], err


@pytest.mark.parametrize("device, message", [("foo", "unknown device 'foo'"),
                                             ("cuda", "no CUDA GPU is visible")])
def test_a_bad_device_is_refused_before_bench_json_pins_it(device, message, data, tiny_dir, tmp_path, capsys):
    """--methods base,full read no selection options, so --device was never checked: bench.json and
    cells/ were written, the first cell failed, and a rerun with --device cpu was refused."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "b"
    code, _, err = run(bench_args(data, tiny_dir, out, "--methods", "base", "--device", device), capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_finetune_and_evaluate_name_the_file_of_a_record_too_long(data, tiny_dir, tmp_path, capsys):
    rows = [{"instruction": "Say it.", "output": "word " * 200}]
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for args in (["finetune", long, "--model", tiny_dir, "--max-length", "64", "--out", tmp_path / "m", "-q"],
                 ["evaluate", "--test", long, "--model", tiny_dir, "--metrics", "loss", "--max-length", "64", "-q"]):
        code, _, err = run(args, capsys)
        assert code == 2 and err.startswith(f"tunesift: error: {long}: record ") and "does not fit" in err, err
        assert err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_finetune_reads_a_selection_with_the_fields_select_read_it_with(tiny_dir, tmp_path, capsys, monkeypatch):
    """finetune re-read OUT/selected.jsonl by detection: selected with --prompt-field question,context,
    the records were scored on both fields and trained on `question` alone, without a word."""
    import tunesift.finetune

    rows = [{"question": f"What is {i} plus {i}?", "context": f"Numbers: {i}.", "answer": str(2 * i)} for i in range(8)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(["select", data, "--method", "random", "--budget", "4", "--prompt-field", "question,context",
                        "--response-field", "answer", "--out", tmp_path / "sel", "-q"], capsys)
    assert code == 0, err
    seen = {}

    def spy(lm, records, cfg, progress=None):
        seen["prompts"] = [r.prompt for r in records]
        raise SystemExit(0)

    monkeypatch.setattr(tunesift.finetune, "finetune", spy)
    with pytest.raises(SystemExit):
        main(["finetune", str(tmp_path / "sel" / "selected.jsonl"), "--model", str(tiny_dir), "--out",
              str(tmp_path / "ad"), "-q"])
    assert seen["prompts"] and all("\n\nNumbers: " in p for p in seen["prompts"])  # both fields, as scored
    # fields given on the command line win over the manifest's, one by one
    with pytest.raises(SystemExit):
        main(["finetune", str(tmp_path / "sel" / "selected.jsonl"), "--model", str(tiny_dir), "--out",
              str(tmp_path / "ad"), "--prompt-field", "question", "--response-field", "answer", "-q"])
    assert all("Numbers" not in p for p in seen["prompts"])
    with pytest.raises(SystemExit):  # one flag alone keeps the rest of the saved map (both prompt fields)
        main(["finetune", str(tmp_path / "sel" / "selected.jsonl"), "--model", str(tiny_dir), "--out",
              str(tmp_path / "ad"), "--id-field", "none", "-q"])
    assert seen["prompts"] and all("\n\nNumbers: " in p for p in seen["prompts"])
