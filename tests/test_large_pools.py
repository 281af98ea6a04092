"""The large-pool options through `tunesift select`: --partitions (GreeDi) and --ann."""

import json

import pyarrow.parquet as pq
import pytest

from tunesift.cli import main
from tunesift_demo import write_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "demo.jsonl"
    write_demo(path, n=60, corrupt=0.0, seed=3)
    return path


def run(demo, out, cache, *extra):
    return main([str(a) for a in ["select", demo, "--out", out, "--cache-dir", cache, "-q", "--budget", "12",
                                  "--method", "delift-se", *extra]])


def test_greedi_partitions_select_the_budget_and_account_for_every_record(demo, tmp_path):
    assert run(demo, tmp_path / "g", tmp_path / "c", "--partitions", "3", "--knn", "8") == 0
    s = pq.read_table(tmp_path / "g" / "scores.parquet").to_pandas()
    assert len(s) == 60 and s["kept"].sum() == 12 and s["id"].is_unique
    assert sorted(s.loc[s.kept, "order"]) == list(range(1, 13)) and (s.loc[~s.kept, "order"] == -1).all()
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert m["options"]["partitions"] == 3 and m["objective"] > 0
    # one partition is the plain greedy: same picks as without --partitions
    assert run(demo, tmp_path / "one", tmp_path / "c", "--partitions", "1", "--knn", "8") == 0
    assert run(demo, tmp_path / "plain", tmp_path / "c", "--knn", "8") == 0
    a, b = (pq.read_table(tmp_path / d / "scores.parquet").to_pandas() for d in ("one", "plain"))
    assert list(a["kept"]) == list(b["kept"])


def test_exact_ann_equals_the_default_knn(demo, tmp_path):
    assert run(demo, tmp_path / "a", tmp_path / "c", "--knn", "6", "--ann", "exact") == 0
    assert run(demo, tmp_path / "b", tmp_path / "c", "--knn", "6") == 0
    for name in ("selected.jsonl", "scores.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--partitions", "0"], "partitions must be at least 1"),
    (["--partitions", "2", "--stage", "task", "--target", "DEMO"], "works with --method delift-se --stage instruction"),
    (["--ann", "lsh"], "unknown ann 'lsh'"),
    (["--partitions", "2", "--local-budget", "0"], "--local-budget must be a whole number of records, at least 1"),
])
def test_bad_large_pool_options(extra, message, demo, tmp_path, capsys):
    extra = [str(demo) if x == "DEMO" else x for x in extra]
    code = run(demo, tmp_path / "out", tmp_path / "c", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_local_budget_bounds_each_parts_picks_and_a_dense_merge_is_warned(demo, tmp_path, capsys, monkeypatch):
    """Each part kept the whole budget: at 12 of 60 over 5 parts the merge round's kernel covered the
    whole pool, the dense n x n kernel --partitions promised to avoid, without a word."""
    import tunesift.selection.partitioned as part

    seen = []
    real = part.partitioned_facility_location

    def spy(*a, **kw):
        res = real(*a, **kw)
        seen.append((kw.get("local_budget"), len(res.union)))
        return res

    monkeypatch.setattr(part, "partitioned_facility_location", spy)
    assert run(demo, tmp_path / "a", tmp_path / "c", "--partitions", "5", "--knn", "0") == 0
    err = " ".join(capsys.readouterr().err.split())  # the warning, as rich wraps it
    assert seen[-1] == (None, 60) and "merge round forms a dense kernel over up to 60 records" in err
    assert run(demo, tmp_path / "b", tmp_path / "c", "--partitions", "5", "--knn", "0", "--local-budget", "4") == 0
    assert seen[-1] == (4, 20) and "dense kernel" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["options"]["local_budget"] == 4
    s = pq.read_table(tmp_path / "b" / "scores.parquet").to_pandas()
    assert s["kept"].sum() == 12
