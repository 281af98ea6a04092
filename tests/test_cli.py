"""End to end through the CLI with a tiny model: outputs, accounting, atomicity, one-line errors."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tunesift.cli import main
from tunesift_demo import write_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "demo.jsonl"
    write_demo(path, n=40, corrupt=0.2, seed=1)
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def read_out(out):
    rows = [json.loads(line) for line in open(out / "selected.jsonl", encoding="utf-8")]
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    manifest = json.loads((out / "manifest.json").read_text())
    return rows, scores, manifest


def check_accounting(data_path, out, k):
    src = [json.loads(line) for line in open(data_path, encoding="utf-8")]
    rows, scores, manifest = read_out(out)
    assert len(scores) == len(src) and scores["id"].is_unique  # every input record exactly once
    assert list(scores["id"]) == [r["id"] for r in src]
    assert scores["kept"].sum() == k == len(rows)
    kept_ids = [i for i, kept in zip(scores["id"], scores["kept"]) if kept]
    assert [r["id"] for r in rows] == kept_ids  # input order
    by_id = {r["id"]: r for r in src}
    assert all(r == by_id[r["id"]] for r in rows)  # original fields untouched
    c = manifest["counts"]
    assert c["input"] == len(src) and c["kept"] == k and c["kept"] + c["dropped"] == c["input"]
    return rows, scores, manifest


def test_donod_end_to_end(demo, tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["select", demo, "--method", "donod", "--budget", "0.3", "--out", out, "--model", tiny_dir,
                        "--cache-dir", tmp_path / "cache", "--quiet"], capsys)
    assert code == 0, err
    rows, scores, manifest = check_accounting(demo, out, 12)
    assert {"don", "nod", "closeness", "rank", "kept", "n_tokens"} <= set(scores.columns)
    assert scores["rank"].notna().all() and sorted(scores["rank"]) == list(range(1, 41))
    assert scores.loc[scores.kept, "closeness"].min() >= scores.loc[~scores.kept, "closeness"].max()
    assert manifest["method"] == "donod" and manifest["options"]["eta"] == 1e-3
    assert manifest["model"]["fingerprint"] and manifest["inputs"]["data"]["sha256"]
    assert manifest["inputs"]["data"]["records"] == 40
    assert "torch" in manifest["versions"] and manifest["timings"]["total_s"] >= 0


def test_donod_rerun_from_cache_is_identical(demo, tiny_dir, tmp_path, capsys):
    args = ["select", demo, "--method", "donod", "--budget", "10", "--model", tiny_dir,
            "--cache-dir", tmp_path / "cache", "--quiet", "--out"]
    assert run(args + [tmp_path / "a"], capsys)[0] == 0
    assert any((tmp_path / "cache" / "donod").iterdir())
    assert run(args + [tmp_path / "b"], capsys)[0] == 0
    for name in ("selected.jsonl", "scores.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_random_is_seeded(demo, tmp_path, capsys):
    outs = []
    for i, seed in enumerate([7, 7, 8]):
        out = tmp_path / f"r{i}"
        assert run(["select", demo, "--method", "random", "--budget", "15", "--seed", seed, "--out", out, "-q"],
                   capsys)[0] == 0
        outs.append(check_accounting(demo, out, 15)[0])
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_budget_fraction_and_count(demo, tmp_path, capsys):
    assert run(["select", demo, "--method", "random", "--budget", "1.0", "--out", tmp_path / "all", "-q"], capsys)[0] == 0
    check_accounting(demo, tmp_path / "all", 40)
    assert run(["select", demo, "--method", "random", "--budget", "1", "--out", tmp_path / "one", "-q"], capsys)[0] == 0
    check_accounting(demo, tmp_path / "one", 1)


def test_python_api_on_dicts_and_dataframe(tiny_lm):
    import pandas as pd

    from tunesift import select

    rows = [{"instruction": f"What is {i} + {i}?", "output": f"{2 * i}"} for i in range(12)]
    sel = select(rows, method="donod", budget=0.5, lm=tiny_lm)
    assert len(sel.ids) == 6 and sel.kept.sum() == 6
    assert all(r in rows for r in sel.subset)
    assert len(sel.to_pandas()) == 12
    sel2 = select(pd.DataFrame(rows), method="donod", budget=0.5, lm=tiny_lm)
    assert sel2.ids == sel.ids
    np.testing.assert_allclose(sel2.columns["don"], sel.columns["don"])


BAD = [
    (["--budget", "0"], "budget count must be at least 1"),
    (["--budget", "1.5"], "budget fraction must be in (0, 1]"),
    (["--budget", "500"], "larger than the 40 input records"),
    (["--budget", "abc"], "budget must be a fraction"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "delift", "--stage", "nope"], "unknown stage 'nope'"),
    (["--method", "delift", "--stage", "task"], "needs a target set"),
    (["--method", "delift", "--stage", "continual"], "needs the existing data"),
    (["--method", "donod", "--model", "/nonexistent/model"], "model folder '/nonexistent/model' not found"),
    (["--method", "donod", "--model", "no-such-org/no-such-model"], "cannot load model"),
    (["--method", "donod", "--eta", "-1"], "eta must be a positive number"),
    (["--weights", "a,b"], "weights must be two numbers"),
    (["--template", "fancy"], "unknown template 'fancy'"),
    (["--method", "delift", "--optimizer", "greedyish"], "unknown optimizer"),
    (["--method", "delift", "--mi-form", "max"], "unknown FLMI form"),
    (["--method", "delift", "--knn", "-1"], "knn must be >= 0"),
    (["--method", "donod", "--reduction", "max"], "reduction must be one of"),
    (["--method", "donod", "--dtype", "float8"], "unknown dtype"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_options_one_line_exit_2_nothing_written(extra, message, demo, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["select", demo, "--out", out, "-q"] + extra, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_input_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    out = tmp_path / "out"
    code, _, err = run(["select", bad, "--method", "random", "--out", out], capsys)
    assert code == 2 and "bad.jsonl:2" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_output(demo, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["select", demo, "--method", "random", "--out", blocker, "-q"], capsys)
    assert code == 2 and "not a folder" in err


def test_missing_input_and_usage_errors(tmp_path, capsys):
    code, _, err = run(["select", tmp_path / "nope.jsonl", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "nope.jsonl" in err
    code, _, err = run(["select"], capsys)
    assert code == 2


def test_demo_data_command(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    assert run(["demo-data", path, "--n", "30", "--corrupt", "0.1"], capsys)[0] == 0
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 30 and sum(r["meta"]["corrupted"] for r in rows) == 3


def test_demo_data_never_writes_over_a_file(tmp_path, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    code, _, err = run(["demo-data", mine, "--n", "10"], capsys)
    assert code == 2 and "exists: demo-data writes a new file" in err and mine.read_text() == "mine"
    code, _, err = run(["demo-data", mine / "x.jsonl", "--n", "10"], capsys)
    assert code == 2 and "is not a folder" in err
    code, _, err = run(["demo-data", tmp_path / "d.jsonl", "--seed", "-1"], capsys)
    assert code == 2 and "seed must be an integer >= 0" in err and not (tmp_path / "d.jsonl").exists()
    assert run(["demo-data", mine, "--n", "10", "--force"], capsys)[0] == 0
    assert len(mine.read_text().splitlines()) == 10


def test_config_file_with_flag_override(demo, tmp_path, capsys):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"data: {demo}\nmethod: random\nbudget: 10\nseed: 3\nout: {tmp_path / 'cfg'}\nquiet: true\n")
    assert run(["select", "--config", cfg], capsys)[0] == 0
    rows, _, manifest = read_out(tmp_path / "cfg")
    assert len(rows) == 10 and manifest["options"]["seed"] == 3
    assert run(["select", "--config", cfg, "--budget", "5", "--out", tmp_path / "cfg2"], capsys)[0] == 0
    assert len(read_out(tmp_path / "cfg2")[0]) == 5  # the flag wins
    # 1_000 and +3 read as the command line reads them, not refused as octal-like
    cfg.write_text(f"data: {demo}\nmethod: random\nbudget: 1_0\nseed: +3\nout: {tmp_path / 'cfg3'}\nquiet: true\n")
    assert run(["select", "--config", cfg], capsys)[0] == 0
    assert len(read_out(tmp_path / "cfg3")[0]) == 10 and read_out(tmp_path / "cfg3")[2]["options"]["seed"] == 3


@pytest.mark.parametrize("text,message", [("method: [unclosed\n", "invalid YAML"), ("nonsense: 1\n", "unknown option 'nonsense'"),
                                          ("- a\n- b\n", "must be a mapping"),
                                          ("method: random\nnonsense: 1\n", "bad.yaml:2: unknown option"),
                                          ("method: random\n\nseed: abc\n", "bad.yaml:3: option 'seed': "),
                                          ("quiet: maybe\n", "bad.yaml:1: option 'quiet': "),
                                          ("budget: 0.2\nlimit: 2.5\n", "bad.yaml:2: option 'limit': "),
                                          # these failed later, without the file and line
                                          ("method: random\nbudget: 2.0\n",
                                           "bad.yaml:2: option 'budget': budget fraction must be in (0, 1]"),
                                          ("method: random\nbudget: [0.1, 0.2]\n", "bad.yaml:2: option 'budget': "),
                                          ('method: donod\nweights: "1,2,3"\n',
                                           "bad.yaml:2: option 'weights': weights must be two"),
                                          ("method: [donod, delift]\n",
                                           "bad.yaml:1: option 'method': expected one value, got a list"),
                                          ("method: random\nlimit: true\n",  # typer would read it as 1
                                           "bad.yaml:2: option 'limit': expected a value, got the boolean true"),
                                          ("yes: 1\n", "bad.yaml:1: unknown option 'yes'"),
                                          # these used to run: the last of two keys, the default for a blank
                                          ("method: random\nbudget: 2\nmethod: donod\n",
                                           "bad.yaml:3: option 'method' is given twice (also on line 1)"),
                                          ("method:\nbudget: 2\n", "bad.yaml:1: option 'method' has no value"),
                                          # a value's own range is checked where its line is known
                                          ("method: random\nepsilon: .inf\n",
                                           "bad.yaml:2: epsilon must be in (0, 1), got inf"),
                                          ("method: random\nknn: -3\n", "bad.yaml:2: knn must be >= 0"),
                                          ("method: random\nseed: [1, 2]\n",
                                           "bad.yaml:2: option 'seed': expected one value, got a list"),
                                          # these ran as a string of the whole value, or another number
                                          ("method: random\nmodel: {name: x}\n",
                                           "bad.yaml:2: option 'model': expected a value, got a mapping"),
                                          ("method: random\nprompt_field: [a, [b]]\n",
                                           "bad.yaml:2: option 'prompt_field': a list of plain values"),
                                          ("method: random\nprompt_field: [&l0 [x, x], *l0]\n",
                                           "bad.yaml:2: option 'prompt_field': a list of plain values"),
                                          ("method: random\nmax-length: 10\nmax_length: 20\n",
                                           "bad.yaml:3: option 'max_length' is given twice (also on line 2)"),
                                          ("method: random\nseed: 010\n",
                                           "bad.yaml:2: option 'seed': write the number 010 in decimal digits "
                                           "(YAML reads it as 8)"),
                                          ("method: random\nweights: [01, 1]\n",
                                           "bad.yaml:2: option 'weights': write the number 01 in decimal digits"),
                                          # a traceback, and an unknown method named without its line
                                          ("method: random\n<<: {knn: 8}\n",
                                           "bad.yaml:2: YAML merge keys ('<<') are not read in a config"),
                                          ("budget: 0.2\nmethod: magic\n", "bad.yaml:2: unknown method 'magic'")])
def test_bad_config(text, message, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, _, err = run(["select", "--config", cfg], capsys)
    assert code == 2 and message in err and "bad.yaml" in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def side_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("side")
    write_demo(root / "target.jsonl", n=10, corrupt=0.0, seed=5)
    write_demo(root / "existing.jsonl", n=12, corrupt=0.0, seed=6)
    return root / "target.jsonl", root / "existing.jsonl"


DELIFT_RUNS = [
    ["--method", "delift"],
    ["--method", "delift", "--knn", "6", "--distance", "pmi"],
    ["--method", "delift", "--stage", "task", "--knn", "5", "TARGET"],
    ["--method", "delift", "--stage", "continual", "--knn", "5", "EXISTING", "--clip-negative"],
    ["--method", "delift-se"],
    ["--method", "delift-se", "--stage", "task", "TARGET", "--mi-form", "additive"],
    ["--method", "delift-se", "--stage", "continual", "EXISTING", "--knn", "8", "--optimizer", "stochastic"],
]


@pytest.mark.parametrize("args", DELIFT_RUNS, ids=lambda a: "-".join(x.strip("-") for x in a))
def test_delift_end_to_end(args, demo, side_sets, tiny_dir, tmp_path, capsys):
    target, existing = side_sets
    args = [x for a in args for x in (["--target", target] if a == "TARGET" else ["--existing", existing]
                                      if a == "EXISTING" else [a])]
    out = tmp_path / "out"
    code, _, err = run(["select", demo, *args, "--budget", "0.25", "--out", out, "--model", tiny_dir,
                        "--cache-dir", tmp_path / "cache", "-q"], capsys)
    assert code == 0, err
    rows, scores, manifest = check_accounting(demo, out, 10)
    picked = scores[scores.kept].sort_values("order")
    assert list(picked["order"]) == list(range(1, 11)) and (scores.loc[~scores.kept, "order"] == -1).all()
    assert picked["gain"].notna().all() and (picked["gain"] >= 0).all()
    if "stochastic" not in args:  # exact greedy gains never grow (submodularity); sampled ones may
        assert (np.diff(picked["gain"]) <= 1e-9).all()
    assert manifest["objective"] == pytest.approx(picked["gain"].sum(), rel=1e-6, abs=1e-9)
    if "delift-se" not in args:
        assert {"helped_by", "helpfulness"} <= set(scores.columns)
        assert manifest["model"]["fingerprint"]
    if "--target" in args:
        assert manifest["inputs"]["target"]["sha256"]


def test_delift_dense_selection_is_reproducible_from_cache(demo, tiny_dir, tmp_path, capsys):
    args = ["select", demo, "--method", "delift", "--budget", "8", "--model", tiny_dir, "--cache-dir",
            tmp_path / "cache", "-q", "--out"]
    assert run(args + [tmp_path / "a"], capsys)[0] == 0
    assert any((tmp_path / "cache" / "delift-utility").rglob("*.npy"))
    assert run(args + [tmp_path / "b"], capsys)[0] == 0
    for name in ("selected.jsonl", "scores.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_options_page_equals_the_cli():
    from pathlib import Path

    from tunesift.docgen import options_markdown

    doc = (Path(__file__).parent.parent / "docs" / "options.md").read_text()
    assert doc == options_markdown(), "regenerate: python -m tunesift.docgen > docs/options.md"
    for flag in ("`--prefilter`", "`--train-model`", "`--adapter`", "`--autocast`", "`--knn`"):
        assert flag in doc


def test_python_api_on_hf_dataset(tiny_lm):
    from datasets import Dataset

    from tunesift import select

    rows = [{"question": f"What is {i} times 3?", "answer": f"{3 * i}", "source": "x"} for i in range(10)]
    sel = select(Dataset.from_list(rows), method="donod", budget=3, lm=tiny_lm)
    assert sel.kept.sum() == 3 and len(sel.subset) == 3 and all(r in rows for r in sel.subset)
    table = sel.to_pandas()
    assert list(table.columns[:2]) == ["id", "line"] and table["kept"].sum() == 3


def test_python_api_on_hf_dataset_dict():
    from datasets import Dataset, DatasetDict

    from tunesift import select

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(6)]
    sel = select(DatasetDict({"train": Dataset.from_list(rows)}), method="random", budget=2)
    assert len(sel.subset) == 2 and all(r in rows for r in sel.subset)


def test_new_selection_removes_a_stale_report(demo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["select", demo, "--method", "random", "--budget", "5", "--out", out, "--report", "-q"], capsys)[0] == 0
    assert (out / "report.html").exists()
    assert run(["select", demo, "--method", "random", "--budget", "6", "--out", out, "-q"], capsys)[0] == 0
    assert not (out / "report.html").exists()


def test_knn_with_kept_diagonal_still_scores_k_others(tiny_lm, tmp_path):
    from tunesift.pipeline import select

    rows = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(5)]
    sel = select(rows, method="delift", knn=4, keep_diagonal=True, budget=2, lm=tiny_lm, cache_dir=str(tmp_path))
    assert np.isfinite(sel.columns["helped_by"]).all()
    # k = 4 others plus the record itself is every pair: the dense kernel with the diagonal kept
    # (had the record taken one of the k slots, each row would miss one other and its mean move)
    whole = select(rows, method="delift", keep_diagonal=True, budget=2, lm=tiny_lm, cache_dir=str(tmp_path))
    assert sel.ids == whole.ids
    for name in ("helped_by", "helpfulness"):
        np.testing.assert_allclose(sel.columns[name], whole.columns[name], rtol=1e-5, atol=1e-6)
    sel2 = select(rows, method="delift", knn=4, budget=2, lm=tiny_lm, cache_dir=str(tmp_path))
    # k = 4 = n - 1 others: the sparse kernel is the dense one, with or without the diagonal rule
    dense = select(rows, method="delift", budget=2, lm=tiny_lm, cache_dir=str(tmp_path))
    assert sel2.ids == dense.ids


def test_an_error_before_the_first_bar_is_the_only_line_on_stderr(capsys):
    """The progress display started with the command: an error before any bar left a blank line
    above the one-line error."""
    from tunesift.progress import progress_bars

    with pytest.raises(RuntimeError):
        with progress_bars(True):
            raise RuntimeError("before any bar")
    assert capsys.readouterr().err == ""
    with progress_bars(True) as bars:
        bars("scoring", 2)(2)
    assert "scoring" in capsys.readouterr().err


def test_tunesift_alone_prints_its_help_and_no_empty_error(capsys):
    from tunesift.cli import main

    assert main([]) == 2
    cap = capsys.readouterr()
    assert "Usage" in cap.out and "error" not in cap.err
