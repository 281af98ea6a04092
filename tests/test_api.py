"""The Python API (tunesift.select, docs/python.md): its keywords are the options', the result keeps
the input's type, sel.save writes what `tunesift select --out` writes, progress bars, --limit and
--sample (CLI and API), and the saved DELIFT report and a comparison rendered in headless Chromium."""

import inspect
import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tunesift
from tunesift import api
from tunesift.cli import main
from tunesift.errors import OptionError
from tunesift.io.records import read_records
from tunesift.methods.options import Options
from tunesift_demo import write_demo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "demo.jsonl"
    write_demo(path, n=40, corrupt=0.2, seed=1)
    return path


@pytest.fixture(scope="module")
def demo_rows(demo):
    return [json.loads(line) for line in open(demo, encoding="utf-8")]


def run(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- the signature


def test_select_keywords_are_the_options_in_order_with_their_defaults_and_types():
    params = list(inspect.signature(api.select).parameters.values())
    assert params[0].name == "data" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    declared = fields(Options)
    keywords = params[1:1 + len(declared)]
    for f, p in zip(declared, keywords):
        line = f"    {f.name}: {f.type} = {f.default!r},"
        assert p.name == f.name, f"tunesift.api.select lacks option '{f.name}' here; add: {line}"
        assert p.kind is inspect.Parameter.KEYWORD_ONLY
        assert p.default == f.default and type(p.default) is type(f.default), f"default differs; should be: {line}"
        assert p.annotation == f.type, f"annotation differs; should be: {line}"
    assert tuple(p.name for p in params[1 + len(declared):]) == api.API_ONLY
    assert tunesift.select is api.select and tunesift.Selection is api.Selection


def test_select_docstring_carries_every_option_help():
    doc = " ".join(inspect.getdoc(tunesift.select).split())
    for f in fields(Options):
        assert f"{f.name} ({f.type}, default {f.default!r}): {' '.join(f.metadata['help'].split())}" in doc
    assert "{options}" not in doc
    for name in api.API_ONLY:
        assert re.search(rf"\b{name}\b", doc), name


def test_every_select_flag_of_the_cli_has_a_keyword():
    import typer.main

    cmd = typer.main.get_command(tunesift.cli.app).commands["select"]
    cli = {p.name for p in cmd.params} - {"config", "quiet"}  # quiet is progress=False
    assert cli <= set(inspect.signature(api.select).parameters), cli - set(inspect.signature(api.select).parameters)


def test_unknown_keywords_and_bad_options_fail_before_anything_is_read(tmp_path):
    with pytest.raises(TypeError, match="budgett"):
        tunesift.select([], budgett=3)
    missing = tmp_path / "nope.jsonl"  # never read: the options are checked first
    with pytest.raises(OptionError, match="unknown method 'nope'"):
        tunesift.select(missing, method="nope")
    with pytest.raises(ValueError, match="budget fraction must be in"):  # scikit-learn's convention too
        tunesift.select(missing, method="random", budget=1.5)
    with pytest.raises(OptionError, match="--limit and --sample cannot be combined"):
        tunesift.select(missing, method="random", limit=5, sample=3)
    with pytest.raises(OptionError, match="unknown out-format 'csv'"):
        tunesift.select(missing, method="random", out=tmp_path / "o", out_format="csv")
    with pytest.raises(OptionError, match="unknown out-format 'xml'"):  # checked with or without out
        tunesift.select(missing, method="random", out_format="xml")
    for kw in ({"out_format": "parquet"}, {"report": True}):  # without out they would do nothing
        with pytest.raises(OptionError, match="read only with out=FOLDER"):
            tunesift.select(missing, method="random", **kw)
    # the second set and the model are checked before the input is read, as the other options are
    with pytest.raises(OptionError, match="stage 'task' needs a target set"):
        tunesift.select(missing, method="delift-se", stage="task")
    with pytest.raises(OptionError, match="--target is used only by"):
        tunesift.select(missing, method="donod", target=missing)
    with pytest.raises(OptionError, match="lm must be a model loaded with tunesift.models.load_lm, got str"):
        tunesift.select(missing, method="donod", lm="default")
    with pytest.raises(OptionError, match="is inside the output folder"):
        tunesift.select(tmp_path / "o" / "data.jsonl", method="random", out=tmp_path / "o")


@pytest.mark.parametrize("kw, message", [
    ({"knn": "5"}, "knn must be a whole number, got '5'"),  # was a TypeError from a comparison
    ({"max_length": 8.5}, "max-length must be a whole number, got 8.5"),  # was accepted
    ({"token_budget": None}, "token-budget must be a whole number, got None"),
    ({"epsilon": "0.1"}, "epsilon must be a number, got '0.1'"),
    ({"device": 5}, "device must be text, got 5"),  # was an AttributeError
    ({"label_fraction": True}, "label-fraction must be a number, got True"),  # was accepted as 1
    ({"clip_negative": "no"}, "clip-negative must be true or false, got 'no'"),  # a truthy string: clipping on
    ({"weights": 1.0}, "weights must be a pair of numbers, got 1.0"),
    ({"progress": "yes"}, "progress must be True, False, None or a factory"),
])
def test_options_of_the_wrong_type_are_one_line_before_anything_is_read(tmp_path, kw, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        tunesift.select(tmp_path / "never-read.jsonl", method="random", **kw)


def test_paths_are_accepted_where_the_options_take_text(tmp_path, demo_rows):
    sel = tunesift.select(demo_rows, method="random", budget=3, cache_dir=tmp_path / "c", model=Path("default"))
    assert sel.options.cache_dir == str(tmp_path / "c") and sel.options.model == "default"


# ----------------------------------------------------------------------------- the result


def test_subset_of_a_list_is_the_very_rows(demo_rows):
    sel = tunesift.select(demo_rows, method="random", budget=10, seed=4)
    assert isinstance(sel, tunesift.Selection)
    assert sel.mask.shape == (40,) and sel.mask.dtype == bool and sel.mask.sum() == 10
    np.testing.assert_array_equal(sel.indices, np.flatnonzero(sel.mask))
    assert sel.indices.dtype == np.int64 and list(sel.indices) == sorted(sel.indices)
    assert isinstance(sel.subset, list) and len(sel.subset) == 10
    assert all(a is demo_rows[i] for a, i in zip(sel.subset, sel.indices))
    assert repr(sel) == "Selection(method='random', kept=10/40, budget=10)"


def test_subset_of_a_dataframe_is_its_rows_with_their_index(demo_rows):
    import pandas as pd

    df = pd.DataFrame(demo_rows, index=[f"r{i}" for i in range(40)])
    sel = tunesift.select(df, method="random", budget=0.25, seed=2)
    sub = sel.subset
    assert isinstance(sub, pd.DataFrame) and len(sub) == 10
    pd.testing.assert_frame_equal(sub, df.iloc[sel.indices])
    assert list(sub.index) == [f"r{i}" for i in sel.indices]
    pd.testing.assert_frame_equal(df[sel.mask], sub)  # nothing sampled: the mask is over df's rows
    assert sel.ids == list(sel.scores().loc[sel.mask, "id"])


def test_a_dataframe_is_read_as_its_json_file_would_be(tmp_path):
    """Missing values (NaN, None, pd.NA) are missing fields; list columns that pandas holds as numpy
    arrays (read_parquet, Dataset.to_pandas) are lists: the same records as from the file."""
    import pandas as pd
    from datasets import Dataset

    from tunesift.errors import InputError

    rows = [{"instruction": "q0", "input": "ctx", "output": "a0"}, {"instruction": "q1", "output": "a1"},
            {"instruction": "q2", "input": "", "output": "a2"}, {"instruction": "q3", "output": "a3"}]
    df = pd.DataFrame(rows)
    assert df["input"].isna().sum() == 2
    df.loc[3, "input"] = pd.NA
    assert tunesift.select(df, method="random", budget=4).ids == tunesift.select(rows, method="random", budget=4).ids
    chats = [{"messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]}
             for i in range(4)]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(chats), path)
    for frame in (Dataset.from_list(chats).to_pandas(), pd.read_parquet(path)):
        assert type(frame.loc[0, "messages"]).__name__ == "ndarray"
        sel = tunesift.select(frame, method="random", budget=2, seed=1)
        assert sel.ids == tunesift.select(str(path), method="random", budget=2, seed=1).ids
        assert [r["messages"] for r in sel.rows] == [chats[i]["messages"] for i in sel.indices]
    twice = pd.DataFrame([["q", "a", "b"]], columns=["instruction", "output", "output"])
    with pytest.raises(InputError, match=r"duplicate column names \(output\)"):
        tunesift.select(twice, method="random", budget=1)
    spelled = pd.DataFrame([["q", "a", "b"]], columns=["instruction", "0", 0])  # one name once written as text
    with pytest.raises(InputError, match=r"duplicate column names \(0\)"):
        tunesift.select(spelled, method="random", budget=1)
    for bad in (None, 5):
        with pytest.raises(InputError, match="expected rows .* or a path, got"):
            tunesift.select(bad, method="random", budget=1)


def test_rows_whose_keys_clash_once_written_as_text_are_refused(tmp_path):
    """{1: "one", "1": "uno"} was written as one key "1": a value of the user's lost without a word."""
    from tunesift.errors import InputError

    good = {"id": "a", "instruction": "q", "output": "a"}  # with ids: no row hash (which refuses mixed keys)
    for row, key in (({**good, "id": "b", 1: "one", "1": "uno"}, "1"),
                     ({**good, "id": "b", "meta": [{"2": "b", 2: "c"}]}, "2")):
        for fmt in ("jsonl", "parquet"):
            with pytest.raises(InputError, match=rf"^<rows>:2: field '{key}': has the keys '{key}' and {key}, "
                                                 "one key once written as text: rename one$"):
                tunesift.select([good, row], method="random", budget=1, out=tmp_path / fmt, out_format=fmt)
            assert not (tmp_path / fmt).exists()
    sel = tunesift.select([good, {**good, "id": "b", 1: "one"}], method="random", budget=2, out=tmp_path / "ok")
    assert sel.kept.sum() == 2 and '"1": "one"' in (tmp_path / "ok" / "selected.jsonl").read_text()


def test_a_bad_record_is_an_input_error_and_numpy_numbers_are_options():
    from tunesift.errors import InputError, RecordsError

    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]
    with pytest.raises(RecordsError, match="field 'output'") as err:
        tunesift.select([*rows, {"instruction": "q", "output": 5}], method="random", budget=1)
    assert isinstance(err.value, InputError)
    # a bad record of the target set is a RecordsError too (it was a plain InputError), naming it
    with pytest.raises(RecordsError, match="^<target>:2: field 'output'") as err:
        tunesift.select(rows, method="delift-se", stage="task", budget=1,
                        target=[rows[0], {"instruction": "q", "output": 5}])
    assert (err.value.line, err.value.field) == (2, "output")
    a = tunesift.select(rows, method="random", budget=np.int64(3), seed=np.int64(2))
    b = tunesift.select(rows, method="random", budget=3, seed=2)
    assert a.ids == b.ids and a.budget == 3 and type(a.options.seed) is int


def test_subset_of_a_dataset_is_a_dataset(demo_rows):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(demo_rows)
    sel = tunesift.select(ds, method="random", budget=7, seed=1)
    assert isinstance(sel.subset, Dataset) and sel.subset.num_rows == 7
    assert sel.subset.to_list() == ds.select(sel.indices).to_list() == [demo_rows[i] for i in sel.indices]
    sel = tunesift.select(DatasetDict({"train": ds}), method="random", budget=3)
    assert isinstance(sel.subset, Dataset) and sel.subset.to_list() == [demo_rows[i] for i in sel.indices]


def test_subset_of_a_path_is_a_list_of_dicts(demo, demo_rows):
    sel = tunesift.select(Path(demo), method="random", budget=5)
    assert sel.subset == [demo_rows[i] for i in sel.indices] and isinstance(sel.subset[0], dict)


def test_scores_as_pandas_and_arrow_and_the_repr_names_the_model(demo_rows, tiny_lm):
    import pandas as pd

    sel = tunesift.select(demo_rows[:12], method="loss", budget=4, lm=tiny_lm, progress=False)
    table, frame = sel.table(), sel.scores()
    assert isinstance(table, pa.Table) and isinstance(frame, pd.DataFrame)
    assert table.num_rows == len(frame) == 12 and table.column_names == list(frame.columns)
    assert {"id", "line", "loss", "rank", "kept"} <= set(frame.columns)
    np.testing.assert_array_equal(frame["kept"].to_numpy(), sel.mask)
    np.testing.assert_allclose(frame["loss"].to_numpy(), sel.columns["loss"], rtol=1e-6)
    model = Path(tiny_lm.source).name
    assert repr(sel) == f"Selection(method='loss', kept=4/12, budget=4, model='{model}')"


def test_scores_of_a_dataframe_carry_its_index(demo_rows):
    import pandas as pd

    df = pd.DataFrame(demo_rows[:12], index=[f"r{i}" for i in range(100, 112)])
    sel = tunesift.select(df, method="random", budget=3, sample=8, seed=1)
    frame = sel.scores()
    # the 8 sampled rows, by the input's own labels; the kept ones are the subset's
    assert list(frame.index) == list(df.index[sel.positions]) and len(frame) == 8
    pd.testing.assert_frame_equal(df.loc[frame.query("kept").index], sel.subset)
    assert list(frame["id"]) == [r.id for r in sel.records]
    plain = tunesift.select(demo_rows[:12], method="random", budget=3).scores()
    assert list(plain.index) == list(range(12))  # a list: positions


def test_repr_names_the_bundled_models():
    from tunesift.pipeline import Selection

    sel = Selection("donod", [None] * 4, np.array([1, 0, 0, 1], bool), {}, np.array([0, 3]), Options(), 2,
                    model={"name": "default"})
    assert repr(sel) == "Selection(method='donod', kept=2/4, budget=2, model='SmolLM2-135M-Instruct')"


# ----------------------------------------------------------------------------- saving


def _files(out: Path) -> dict[str, str]:
    return {p.name: p for p in sorted(out.iterdir())}


def test_save_writes_what_the_cli_writes(demo, tmp_path, capsys):
    args = ["--method", "random", "--budget", "0.3", "--seed", "3", "--sample", "30"]
    assert run(["select", demo, *args, "--out", tmp_path / "cli", "--quiet"], capsys)[0] == 0
    sel = tunesift.select(str(demo), method="random", budget=0.3, seed=3, sample=30)
    assert sel.save(tmp_path / "api") == (tmp_path / "api").resolve()
    tunesift.select(demo, method="random", budget=0.3, seed=3, sample=30, out=tmp_path / "out")
    cli, saved, passed = _files(tmp_path / "cli"), _files(tmp_path / "api"), _files(tmp_path / "out")
    assert list(cli) == list(saved) == list(passed) == ["dataset_info.json", "manifest.json", "scores.parquet",
                                                        "selected.jsonl"]
    for out in (saved, passed):
        for name in ("selected.jsonl", "dataset_info.json"):
            assert out[name].read_bytes() == cli[name].read_bytes()
        assert pq.read_table(out["scores.parquet"]).equals(pq.read_table(cli["scores.parquet"]))
        a, b = manifest_of(out["manifest.json"].parent), manifest_of(tmp_path / "cli")
        for m in (a, b):
            del m["timings"], m["files"]["scores.parquet"]  # parquet metadata may differ by writer
        assert a == b


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_save_formats_match_the_cli(demo, tmp_path, capsys, fmt):
    assert run(["select", demo, "--method", "random", "--budget", "5", "--out-format", fmt,
                "--out", tmp_path / "cli", "-q"], capsys)[0] == 0
    tunesift.select(demo, method="random", budget=5).save(tmp_path / "api", out_format=fmt)
    cli, api = _files(tmp_path / "cli"), _files(tmp_path / "api")
    assert sorted(cli) == sorted(api)
    assert manifest_of(tmp_path / "api")["out_format"] == fmt
    # the same kept rows, types and trainer entry (not only the same file names)
    if fmt == "parquet":
        assert pq.read_table(api["selected.parquet"]).equals(pq.read_table(cli["selected.parquet"]))
    else:
        import datasets

        a, b = (datasets.load_from_disk(str(tmp_path / d / "selected")) for d in ("api", "cli"))
        assert a.features == b.features and a.to_list() == b.to_list() and a.num_rows == 5
    if "dataset_info.json" in cli:
        assert api["dataset_info.json"].read_bytes() == cli["dataset_info.json"].read_bytes()
    assert pq.read_table(api["scores.parquet"]).equals(pq.read_table(cli["scores.parquet"]))
    a, b = manifest_of(tmp_path / "api"), manifest_of(tmp_path / "cli")
    for m in (a, b):
        del m["timings"], m["files"]
    assert a == b


def test_save_keeps_the_cli_safety_rules(demo, tmp_path):
    sel = tunesift.select(str(demo), method="random", budget=5)
    with pytest.raises(OptionError, match="is inside the output folder"):
        sel.save(demo.parent)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OptionError, match="holds files tunesift did not write"):
        sel.save(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(OptionError, match="--report reads selected.jsonl"):
        sel.save(tmp_path / "x", out_format="parquet", report=True)
    assert not (tmp_path / "x").exists()
    out = sel.save(tmp_path / "set")
    again = tunesift.select(str(demo), method="random", budget=7, seed=9).save(out)  # an earlier set: replaced
    assert manifest_of(again)["counts"]["kept"] == 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_save_of_rows_in_memory_names_their_type_and_reports(demo_rows, tmp_path):
    import pandas as pd

    out = tunesift.select(pd.DataFrame(demo_rows), method="random", budget=10, out=tmp_path / "o", report=True)
    m = manifest_of(tmp_path / "o")
    assert m["inputs"] == {"data": {"in_memory": "pandas.DataFrame", "records": 40}}
    assert m["counts"] == {"input": 40, "kept": 10, "dropped": 30, "errors": 0}
    page = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Kept: the 10 " in page and "manifest.json records no input path" in page
    assert len(out.subset) == 10


# ----------------------------------------------------------------------------- progress


def test_progress_bars_show_when_asked_or_in_a_notebook(demo_rows, tiny_lm, capsys, monkeypatch):
    def scored(**kw):
        tunesift.select(demo_rows[:6], method="loss", budget=2, lm=tiny_lm, **kw)
        return capsys.readouterr().err

    assert "loss scoring" in scored(progress=True)
    assert scored(progress=False) == ""
    with monkeypatch.context() as m:  # FORCE_COLOR or TTY_COMPATIBLE in CI would make rich see a terminal
        m.setattr(api, "interactive", lambda: False)
        assert scored() == ""  # default: stderr is not a terminal here and this is no notebook
    with monkeypatch.context() as m:
        m.setattr(api, "interactive", lambda: True)
        assert "loss scoring" in scored()  # default where bars can be seen: on
    import rich.console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)  # what a Jupyter kernel reports
    from tunesift.progress import interactive

    assert interactive()
    labels = []

    def mine(label, total):
        labels.append((label, total))
        return lambda n, total_now=None: None

    assert scored(progress=mine) == "" and labels == [("loss scoring", 6)]


# ----------------------------------------------------------------------------- --limit and --sample


def test_cli_limit_reads_the_first_records(demo, demo_rows, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(["select", demo, "--method", "random", "--budget", "4", "--limit", "10", "--out", out, "-q"],
                       capsys)
    assert code == 0, err
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    assert list(scores["id"]) == [r["id"] for r in demo_rows[:10]] and scores["kept"].sum() == 4
    m = manifest_of(out)
    assert m["options"]["limit"] == 10 and m["options"]["sample"] is None
    assert m["counts"] == {"input": 10, "kept": 4, "dropped": 6, "errors": 0, "read": 10, "not_sampled": 0,
                           "not_read": None}  # the rest of the file is not parsed: not counted


def test_limit_converts_only_the_first_rows_of_a_dataframe_or_dataset(demo_rows, monkeypatch):
    """limit=N read the first N rows but converted every row of a DataFrame or Dataset first (a
    memory-mapped Dataset of millions of rows turned into Python dicts)."""
    import datasets
    import pandas as pd

    from tunesift.io import records as rec_mod

    frame = pd.DataFrame(demo_rows[:30])
    cells = []
    real = rec_mod.from_pandas
    monkeypatch.setattr(rec_mod, "from_pandas", lambda v, **kw: cells.append(kw.get("top", True)) or real(v, **kw))
    sel = tunesift.select(frame, method="random", budget=2, limit=5)
    assert [r.id for r in sel.records] == [r["id"] for r in demo_rows[:5]]
    assert sum(cells) == 5 * len(frame.columns)  # the first 5 rows' cells, not 30 rows'
    converted = []
    real_list = datasets.Dataset.to_list
    monkeypatch.setattr(datasets.Dataset, "to_list", lambda self: converted.append(len(self)) or real_list(self))
    sel = tunesift.select(datasets.Dataset.from_list(demo_rows[:30]), method="random", budget=2, limit=5)
    assert converted == [5] and [r.id for r in sel.records] == [r["id"] for r in demo_rows[:5]]


def test_cli_sample_is_the_seeded_sample_of_read_records(demo, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(["select", demo, "--method", "random", "--budget", "3", "--sample", "12", "--seed", "2",
                        "--out", out, "-q"], capsys)
    assert code == 0, err
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    expected = read_records(demo, sample=12, seed=2)
    assert list(scores["id"]) == [r.id for r in expected] and list(scores["line"]) == [r.line for r in expected]
    m = manifest_of(out)
    assert m["counts"] == {"input": 12, "kept": 3, "dropped": 9, "errors": 0, "read": 40, "not_sampled": 28,
                           "not_read": 0}
    assert m["options"]["sample"] == 12 and m["options"]["seed"] == 2
    other = tunesift.select(demo, method="random", budget=3, sample=12, seed=3)
    assert [r.id for r in other.records] != [r.id for r in expected]


@pytest.mark.parametrize("args, message", [
    (["--limit", "5", "--sample", "3"], "--limit and --sample cannot be combined"),
    (["--sample", "41"], "--sample 41 is more than the 40 records of the input"),
    (["--limit", "0"], "--limit must be a whole number of records, at least 1; got 0"),
    (["--sample", "-2"], "--sample must be a whole number of records, at least 1; got -2"),
])
def test_cli_limit_and_sample_errors(demo, tmp_path, capsys, args, message):
    code, out, err = run(["select", demo, "--method", "random", "--budget", "2", *args, "--out", tmp_path / "o",
                          "--quiet"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_api_limit_and_sample_on_rows_in_memory(demo_rows):
    import pandas as pd

    df = pd.DataFrame(demo_rows)
    sel = tunesift.select(df, method="random", budget=3, limit=15)
    assert len(sel.records) == 15 and set(sel.indices) <= set(range(15))
    assert sel.extra["read"] == {"limit": 15, "sample": None, "seed": None, "read": 15, "not_read": 25,
                                 "not_sampled": 0}
    sel = tunesift.select(df, method="random", budget=4, sample=20, seed=7)
    picked = sorted(__import__("random").Random(7).sample(range(40), 20))
    assert [r.row["id"] for r in sel.records] == [demo_rows[i]["id"] for i in picked]
    assert set(sel.indices) <= set(picked) and len(sel.mask) == 20
    pd.testing.assert_frame_equal(sel.subset, df.iloc[sel.indices])  # positions in df, not in the sample
    assert list(sel.subset["id"]) == sel.ids
    assert repr(sel) == "Selection(method='random', kept=4/20, budget=4, sample=20, seed=7)"


# ----------------------------------------------------------------------------- the report in Chromium


def chromium_dom(page: Path, tmp: Path, probe: str) -> str:
    """The DOM headless Chromium ends with after running ``probe`` (JavaScript that sets the
    title) on a copy of ``page``."""
    copy = tmp / "probe.html"
    copy.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", f"<script>addEventListener('load', () => {{ {probe} }});</script></body>"), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


VISIBLE = "(e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden'"


def test_a_given_lm_sets_the_runs_device_and_dtype(demo_rows, tiny_lm, tmp_path, monkeypatch):
    """With lm=, device and dtype are the model's: DELIFT's sentence encoder read the options'
    (bf16 asked, a float32 model given: the encoder ran in bf16), and the manifest said auto."""
    from tunesift.scoring import embedding as emb

    seen = []
    real = emb.embed_precision
    monkeypatch.setattr(emb, "embed_precision", lambda dtype, device: seen.append((dtype, device)) or real(dtype, device))
    sel = tunesift.select(demo_rows[:8], method="delift", budget=3, lm=tiny_lm, dtype="bfloat16", knn=3,
                          cache_dir=str(tmp_path / "cache"), progress=False)
    assert seen == [("float32", "cpu")]
    assert (sel.options.dtype, sel.options.device) == ("float32", "cpu")
    # a method that does not use the model (warned about) keeps the options given
    seen.clear()
    sel = tunesift.select(demo_rows[:8], method="delift-se", budget=3, lm=tiny_lm, dtype="bfloat16",
                          cache_dir=str(tmp_path / "cache"), progress=False)
    assert seen == [("bfloat16", "auto")] and sel.options.dtype == "bfloat16"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make chromium installs Debian's package)")
def test_chromium_shows_delift_covering_records_and_the_comparison(demo, demo_rows, tiny_lm, tmp_path, capsys):
    data = tmp_path / "data.jsonl"  # 20 records: DELIFT's kernel is quadratic
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:20]), encoding="utf-8")
    delift = tunesift.select(data, method="delift", budget=6, lm=tiny_lm, cache_dir=str(tmp_path / "cache"),
                             out=tmp_path / "delift", report=True)
    probe = (f"const vis = {VISIBLE}; const rows = [...document.querySelectorAll('#dropped tr[data-id]')]"
             ".filter(vis); const why = rows.map(r => r.querySelector('td.why').textContent); "
             "document.title = 'COVERED:' + rows.length + ':' + why.filter(t => t.startsWith('not picked: "
             "no kept record covers it')).length + ':' + why.filter(t => t.startsWith('not picked: covered by "
             "kept record ')).map(t => t.split(' ')[6]).join(',');")
    dom = chromium_dom(tmp_path / "delift" / "report.html", tmp_path, probe)
    n_rows, n_none, shown = re.search(r"<title>COVERED:(\d+):(\d+):([^<]*)</title>", dom).groups()
    shown = [s for s in shown.split(",") if s]
    # every dropped row shown names its cover, or says that no pick helps it (a kNN kernel's harmful
    # and unscored pairs are both 0)
    assert int(n_rows) >= 5 and len(shown) >= 1 and len(shown) + int(n_none) == int(n_rows)
    assert set(shown) <= set(delift.ids)  # ... a kept record
    covered_by = delift.scores().set_index("id")["covered_by"]
    assert all(covered_by[i] in set(delift.ids) for i in covered_by.index
               if i not in set(delift.ids) and isinstance(covered_by[i], str))

    tunesift.select(data, method="random", budget=6, seed=1, out=tmp_path / "random")
    code, page, err = run(["report", tmp_path / "delift", tmp_path / "random"], capsys)
    assert code == 0, err
    probe = (f"const vis = {VISIBLE}; const s = document.querySelector('#compare'); document.title = 'CMP:' + "
             "(s && vis(s) ? s.getBoundingClientRect().height : 0) + ':' + [...document.querySelectorAll("
             "'#compare tr[data-id]')].filter(vis).length + ':' + (s ? s.textContent.includes('only A kept') : false);")
    dom = chromium_dom(Path(page.strip()), tmp_path, probe)
    height, rows, label = re.search(r"<title>CMP:([\d.]+):(\d+):(\w+)</title>", dom).groups()
    assert float(height) > 100 and label == "true"
    a = set(delift.ids)
    b = set(pq.read_table(tmp_path / "random" / "scores.parquet").to_pandas().query("kept")["id"])
    assert int(rows) >= min(2, len(a ^ b)) and a != b


def test_every_option_of_the_command_is_a_keyword_of_the_api():
    """local_budget was an option of `select` (and of Options) but not a keyword of tunesift.select."""
    import inspect

    from tunesift.methods.options import option_fields

    params = set(inspect.signature(tunesift.select).parameters)
    assert {f.name for f in option_fields()} - params == set()


def test_weights_take_the_command_lines_spelling_too(demo_rows):
    from tunesift.methods.options import Options

    assert Options(weights="0.25, 0.75").weights == (0.25, 0.75)
    with pytest.raises(OptionError, match="weights must be two numbers"):
        Options(weights="a,b")


def test_the_manifest_is_there_without_saving(demo_rows, tmp_path):
    sel = tunesift.select(demo_rows, method="random", budget=3)
    m = sel.manifest()
    assert m["method"] == "random" and m["options"]["budget"] == 3 and m["inputs"]["data"]["records"] == len(demo_rows)
    sel.save(tmp_path / "o")
    saved = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["files"] == {} and saved["files"]
    assert {k: v for k, v in saved.items() if k != "files"} == {k: v for k, v in json.loads(
        json.dumps(m, default=str)).items() if k != "files"}


def test_a_target_set_in_memory_is_in_the_manifest(demo_rows):
    import pandas as pd

    sel = tunesift.select(demo_rows, method="delift-se", stage="task", target=pd.DataFrame(demo_rows[:3]), budget=3)
    assert sel.manifest()["inputs"]["target"] == {"in_memory": "pandas.DataFrame", "records": 3}
