"""The baseline selectors through `tunesift select`: their order follows their scores, every record
is accounted for, scores are cached (a rerun computes nothing), bad options fail early."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tunesift.cli import main
from tunesift_demo import write_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "demo.jsonl"
    write_demo(path, n=30, corrupt=0.2, seed=2)
    return path


def run_select(demo, tiny_dir, out, cache, *extra):
    args = ["select", demo, "--model", tiny_dir, "--out", out, "--budget", "10", "--cache-dir", cache, "-q", *extra]
    return main([str(a) for a in args])


def scores_of(out):
    return pq.read_table(out / "scores.parquet").to_pandas()


@pytest.mark.parametrize("method, columns", [
    ("loss", {"loss", "perplexity", "n_tokens"}),
    ("perplexity", {"loss", "perplexity", "n_tokens"}),
    ("ifd", {"loss", "loss_alone", "ifd", "n_tokens"}),
    ("selectit", {"selectit", "selectit_mean", "selectit_std", "selectit_digit_mass"}),
])
def test_baseline_selects_by_its_score(method, columns, demo, tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert run_select(demo, tiny_dir, out, tmp_path / "cache", "--method", method) == 0
    s = scores_of(out)
    src = [json.loads(x) for x in open(demo, encoding="utf-8")]
    assert list(s["id"]) == [r["id"] for r in src] and columns <= set(s.columns)
    assert s["kept"].sum() == 10 == len(open(out / "selected.jsonl").readlines())
    kept, dropped = s[s.kept], s[~s.kept]
    if method in ("loss", "perplexity"):
        assert kept[method].max() <= dropped[method].min()  # the easiest records
        assert np.allclose(s["perplexity"], np.exp(s["loss"]))
    elif method == "ifd":
        below = s["ifd"] < 1
        if below.sum() >= 10:  # the highest IFD below 1
            assert kept["ifd"].max() < 1 and kept["ifd"].min() >= dropped.loc[dropped.ifd < 1, "ifd"].max()
        else:  # all records below 1 kept first, then the lowest IFD >= 1
            assert set(s.index[below]) <= set(kept.index)
        assert np.allclose(s["ifd"], s["loss"] / s["loss_alone"])
    else:
        assert kept["selectit"].min() >= dropped["selectit"].max()
        assert ((s["selectit_digit_mass"] > 0) & (s["selectit_digit_mass"] <= 1)).all()
    ranked = s.dropna(subset=["rank"]).sort_values("rank")
    assert len(ranked) == 30  # baselines rank every record


def test_keep_hardest_reverses_the_loss_order(demo, tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    assert run_select(demo, tiny_dir, tmp_path / "e", cache, "--method", "loss") == 0
    assert run_select(demo, tiny_dir, tmp_path / "h", cache, "--method", "loss", "--keep", "hardest") == 0
    e, h = scores_of(tmp_path / "e"), scores_of(tmp_path / "h")
    assert h[h.kept]["loss"].min() >= h[~h.kept]["loss"].max()
    np.testing.assert_array_equal(e["loss"], h["loss"])  # same scores, opposite end


def test_baseline_scores_are_cached(demo, tiny_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert run_select(demo, tiny_dir, tmp_path / "a", cache, "--method", "ifd") == 0
    assert any((cache / "ifd").rglob("*.npy"))

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr("tunesift.scoring.baselines.ifd_scores", boom)
    assert run_select(demo, tiny_dir, tmp_path / "b", cache, "--method", "ifd") == 0
    for name in ("selected.jsonl", "scores.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--method", "loss", "--keep", "middle"], "unknown keep 'middle'"),
    (["--method", "selectit", "--selectit-alpha", "-1"], "selectit-alpha"),
    (["--method", "ifd", "--target", "DEMO"], "--target is used only by"),
])
def test_bad_baseline_options(extra, message, demo, tiny_dir, tmp_path, capsys):
    extra = [str(demo) if x == "DEMO" else x for x in extra]
    code = run_select(demo, tiny_dir, tmp_path / "out", tmp_path / "cache", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["donod", "loss", "delift", "donod+delift"])
def test_on_error_skip_turns_unscorable_records_into_error_rows(method, tiny_dir, tmp_path):
    rows = [{"id": f"r{i}", "instruction": f"Say {i}", "output": f"{i} " * (1 + i % 4)} for i in range(12)]
    rows.insert(5, {"id": "long", "instruction": "x", "output": "word " * 300})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ["--method", method, "--max-length", "64", "--on-error", "skip", "--budget", "0.5"]
    if method == "donod+delift":
        args += ["--prefilter", "0.8"]
    code = main([str(a) for a in ["select", data, "--model", tiny_dir, "--out", out, "--cache-dir",
                                  tmp_path / "cache", "-q", *args]])
    assert code == 0
    s = scores_of(out)
    assert list(s["id"]) == [r["id"] for r in rows]  # every record accounted for, in input order
    err = s.set_index("id")["error"]
    assert "does not fit max_length 64" in err["long"] and err.drop("long").isna().all()
    assert not s.set_index("id").loc["long", "kept"] and s["kept"].sum() == 6  # round(0.5 * 13)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["errors"] == 1 and manifest["counts"]["input"] == 13
    kept_rows = [json.loads(x) for x in open(out / "selected.jsonl")]
    assert "long" not in {r["id"] for r in kept_rows}


def test_less_through_select_ranks_by_cosine_to_the_target(tiny_dir, tmp_path):
    rows = [{"id": f"r{i}", "instruction": f"Say {i}", "output": f"{i} " * (1 + i % 4)} for i in range(16)]
    target = [{"instruction": "Say 3", "output": "3 3 3 3"}, {"instruction": "Say 7", "output": "7 7 7 7"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in target))
    out = tmp_path / "out"
    code = main([str(a) for a in ["select", tmp_path / "d.jsonl", "--method", "less", "--stage", "task",
                                  "--target", tmp_path / "t.jsonl", "--model", tiny_dir, "--out", out,
                                  "--budget", "4", "--less-dim", "256", "--cache-dir", tmp_path / "c", "-q"]])
    assert code == 0
    s = scores_of(out)
    assert {"less", "less_grad_norm", "less_warmup"} <= set(s.columns) and s["less"].between(-1, 1).all()
    assert s[s.kept]["less"].min() >= s[~s.kept]["less"].max() and s["kept"].sum() == 4


def test_less_needs_the_task_stage(demo, tiny_dir, tmp_path, capsys):
    code = run_select(demo, tiny_dir, tmp_path / "out", tmp_path / "cache", "--method", "less")
    err = capsys.readouterr().err
    assert code == 2 and "--stage task --target" in err and not (tmp_path / "out").exists()


def test_a_cut_prompt_is_counted_in_the_manifest_and_the_report(tiny_dir, tmp_path):
    import tunesift

    rows = [{"id": f"r{i}", "instruction": f"Say {i}", "output": f"{i} " * (1 + i % 4)} for i in range(10)]
    rows.insert(3, {"id": "long-prompt", "instruction": "word " * 300, "output": "ok"})  # cut to fit, scored
    rows.insert(6, {"id": "long-answer", "instruction": "x", "output": "word " * 300})  # an error row: not a cut
    out = tmp_path / "out"
    tunesift.select(rows, method="loss", budget=0.5, model=str(tiny_dir), max_length=64, on_error="skip",
                    cache_dir=str(tmp_path / "cache"), out=out, report=True)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["prompts_cut"] == 1 and counts["errors"] == 1 and counts["input"] == 12
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "1 record(s) had prompts longer than max_length 64" in page
    short = tmp_path / "short"  # nothing cut: counted as 0, and the report says nothing
    tunesift.select(rows[:3], method="loss", budget=2, model=str(tiny_dir), max_length=64,
                    cache_dir=str(tmp_path / "cache"), out=short, report=True)
    assert json.loads((short / "manifest.json").read_text())["counts"]["prompts_cut"] == 0
    assert "prompts longer than" not in (short / "report.html").read_text(encoding="utf-8")
