"""The method registry: one entry per method, options declared once, and the worked example of
adding a method (balanced-random, docs/architecture.md)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import fields

import numpy as np
import pyarrow.parquet as pq
import pytest

from tunesift.cli import app, main
from tunesift.errors import OptionError
from tunesift.methods.catalogue import get_method, method_names
from tunesift.methods.options import Options
from tunesift.pipeline import select


def rows(sizes: dict[str, int]) -> list[dict]:
    out = []
    for src, n in sizes.items():
        out += [{"instruction": f"{src} task {i}", "output": f"answer {i}", "meta": {"source": src}} for i in range(n)]
    return out


def test_every_method_is_one_registry_entry():
    names = method_names()
    assert len(names) == len(set(names))
    assert {"random", "donod", "delift", "delift-se", "donod+delift", "ifd", "loss", "perplexity", "selectit", "less",
            "balanced-random", "rds"} == set(names)
    for name in names:
        m = get_method(name)
        assert m.name == name and callable(m.run)
        assert set(m.options) <= {f.name for f in fields(Options)}, name  # only declared options
        assert m.options[:2] == ("method", "budget")
    assert [m for m in names if get_method(m).needs_lm] == ["donod", "delift", "donod+delift", "ifd", "loss",
                                                           "perplexity", "selectit", "less", "rds"]


def test_unknown_method_lists_the_registry():
    with pytest.raises(OptionError, match="unknown method 'nope': use one of random, donod, .*balanced-random"):
        Options(method="nope").validate()


@pytest.mark.parametrize("field, bad, message", [
    ("seed", -1, "seed must be an integer >= 0"),
    ("knn", -2, "knn must be >= 0"),
    ("weights", (float("nan"), 0.5), "weights must be two finite non-negative numbers"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("dtype", "int8", "unknown dtype 'int8'"),
    ("reduction", "max", "reduction must be one of mean, sum, sqrt"),
    ("epsilon", 1.5, "epsilon must be in (0, 1)"),
    ("ray_gpus", float("inf"), "ray-gpus must be a finite number >= 0"),
])
def test_each_option_checks_its_own_value(field, bad, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Options(method="random", **{field: bad}).validate()


def test_method_checks_its_stages_and_options():
    with pytest.raises(OptionError, match="less matches gradients to a target set"):
        Options(method="less").validate()
    with pytest.raises(OptionError, match="--by is read only by --method balanced-random"):
        Options(method="random", by="meta.source").validate()
    with pytest.raises(OptionError, match="--within is read only by --method random"):
        Options(method="balanced-random", by="meta.source", within="meta.source=a").validate()
    with pytest.raises(OptionError, match="within must read FIELD=VALUE"):
        Options(method="random", within="meta.source").validate()
    with pytest.raises(OptionError, match="GreeDi"):
        Options(method="delift", partitions=2).validate()


def test_options_a_method_never_reads_are_named_not_silently_ignored(tmp_path, capsys):
    def unread(method, **kw):
        return get_method(method).unread(Options(method=method, **kw))

    assert all(unread(m) == [] for m in method_names())  # the defaults are never reported
    assert unread("random", eta=0.5, max_length=512, seed=3) == ["max_length", "eta"]
    assert unread("donod", eta=0.5, seed=3) == ["seed"]  # DONOD is deterministic
    assert unread("donod", seed=3, sample=10) == []  # ... but --sample draws with the seed
    assert unread("delift-se", dtype="bfloat16", ann="hnsw", partitions=2, knn=5, cache_dir="c") == []
    assert unread("delift-se", model="gemma3-270m", clip_negative=True) == ["model", "clip_negative"]
    assert unread("delift", ann="hnsw", scale="separate", keep_diagonal=True) == []
    # options read only under another setting: given otherwise they change nothing, and are named
    assert unread("delift", label_fraction=0.5) == ["label_fraction"]
    assert unread("delift", utility="learned", label_fraction=0.5) == []
    assert unread("delift-se", mi_eta=2.0, nu=0.5, epsilon=0.1) == ["mi_eta", "nu", "epsilon"]
    assert unread("delift-se", stage="task", mi_eta=2.0, optimizer="stochastic", epsilon=0.1) == []
    assert unread("delift", knn=0, ann="hnsw") == ["ann"]
    # only the methods that score on Ray workers read the backend (rds and less ran locally, silently)
    ray = {"backend": "ray", "ray_workers": 5, "ray_address": "ray://head:10001"}
    assert unread("rds", **ray) == ["backend", "ray_address", "ray_workers"] == unread("random", **ray)
    assert unread("less", stage="task", **ray) == ["backend", "ray_address", "ray_workers"]
    assert all(unread(m, **ray) == [] for m in ("donod", "delift", "delift-se", "donod+delift", "ifd", "loss"))
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows({"a": 4})))
    code = main([str(a) for a in ("select", path, "--method", "random", "--budget", "2", "--eta", "0.5",
                                  "-o", tmp_path / "o", "-q")])
    assert code == 0 and "random does not read --eta: it is ignored" in " ".join(capsys.readouterr().err.split())
    code = main([str(a) for a in ("select", path, "--method", "delift-se", "--budget", "2", "--nu", "0.5",
                                  "-o", tmp_path / "o2", "-q")])
    assert code == 0 and "delift-se does not read --nu (only with --stage continual): it is ignored" in \
        " ".join(capsys.readouterr().err.split())


def test_cli_flags_take_help_and_defaults_from_the_options():
    import typer.main

    cmd = typer.main.get_command(app).commands["select"]
    params = {p.name: p for p in cmd.params}
    declared = Options.__dataclass_fields__
    for name in ("eta", "mi_eta", "knn", "reduction", "by", "epsilon", "on_error"):
        assert params[name].help == declared[name].metadata["help"]
        assert params[name].default == declared[name].default


def test_balanced_random_gives_every_group_an_equal_share():
    data = rows({"a": 30, "b": 30, "c": 30})
    sel = select(data, method="balanced-random", budget=12, by="meta.source", seed=3)
    kept = Counter(r.row["meta"]["source"] for r, k in zip(sel.records, sel.kept) if k)
    assert kept == {"a": 4, "b": 4, "c": 4}
    again = select(data, method="balanced-random", budget=12, by="meta.source", seed=3)
    np.testing.assert_array_equal(sel.order, again.order)  # seeded
    other = select(data, method="balanced-random", budget=12, by="meta.source", seed=4)
    assert not np.array_equal(sel.kept, other.kept)
    assert list(sel.columns["group"][:3]) == ["a", "a", "a"]


def test_balanced_random_spreads_a_small_group_s_shortfall_and_groups_missing_values():
    data = rows({"a": 2, "b": 40, "c": 40}) + [{"instruction": "no source", "output": "x"}] * 3
    sel = select(data, method="balanced-random", budget=20, by="meta.source", seed=0)
    kept = Counter(r.row.get("meta", {}).get("source", "(missing)") for r, k in zip(sel.records, sel.kept) if k)
    assert kept["a"] == 2 and kept["(missing)"] == 3  # smaller than their share: all of them
    assert kept["b"] + kept["c"] == 15 and abs(kept["b"] - kept["c"]) <= 1  # the rest, evenly
    assert sum(kept.values()) == 20


def test_balanced_random_needs_by_and_runs_from_the_cli(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows({"x": 10, "y": 20})), encoding="utf-8")
    assert main(["select", str(data), "--method", "balanced-random", "--out", str(tmp_path / "o1"), "-q"]) == 2
    assert "balanced-random needs --by" in capsys.readouterr().err
    assert main(["select", str(data), "--method", "balanced-random", "--by", "meta.source", "--budget", "10",
                 "--out", str(tmp_path / "o2"), "-q"]) == 0
    table = pq.read_table(tmp_path / "o2" / "scores.parquet").to_pandas()
    assert Counter(table.loc[table.kept, "group"]) == {"x": 5, "y": 5}
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["options"]["by"] == "meta.source" and manifest["counts"]["groups"] == 2
    # a field no record has (misspelt, or not written with dots) is an error, not plain random
    assert main(["select", str(data), "--method", "balanced-random", "--by", "source", "--budget", "10",
                 "--out", str(tmp_path / "o3"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("tunesift: error: --by source: no record has this field (the first record's fields: "
                   "instruction, meta, output); a nested field is written with dots, e.g. meta.source")
    assert not (tmp_path / "o3").exists()


def test_balanced_random_interleaves_many_groups_in_the_documented_order():
    """The round-robin ran max(group size) x groups steps in Python (hours for 10,000 values); the
    vectorised order must be the same: each group shuffled, the groups shuffled, one of each in turn."""
    data = rows({f"s{i:03d}": 1 + i % 4 for i in range(300)}) + rows({"big": 500})
    for seed in (0, 7):
        sel = select(data, method="balanced-random", budget=400, by="meta.source", seed=seed)
        names = np.array([r["meta"]["source"] for r in data], dtype=object)
        rng = np.random.default_rng(seed)  # the reference: the loop as the docstring words it
        groups = [rng.permutation(np.flatnonzero(names == g)) for g in sorted(set(names))]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        want = [int(g[i]) for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        np.testing.assert_array_equal(sel.order, want)


def test_balanced_random_strips_by_and_says_when_the_field_is_text(tmp_path, capsys):
    sel = select(rows({"x": 4, "y": 4}), method="balanced-random", budget=4, by=" meta.source ", seed=0)
    assert Counter(r.row["meta"]["source"] for r, k in zip(sel.records, sel.kept) if k) == {"x": 2, "y": 2}
    path = tmp_path / "d.csv"  # a CSV column holding JSON: text, not an object
    path.write_text('instruction,output,meta\na,b,"{""source"": ""x""}"\nc,d,"{""source"": ""y""}"\n', encoding="utf-8")
    assert main(["select", str(path), "--method", "balanced-random", "--by", "meta.source", "--budget", "1",
                 "--out", str(tmp_path / "o"), "-q"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tunesift: error: --by meta.source: field 'meta' is text, not an object (a JSON object stored as a "
        "string, as in a CSV column?), so its parts cannot be read with dots")


def test_balanced_random_with_one_group_says_it_is_plain_random(caplog):
    sel = select(rows({"x": 10}), method="balanced-random", budget=4, by="meta.source", seed=0)
    assert sel.kept.sum() == 4
    assert "--by meta.source: every record has the value x, so this is plain random" in caplog.text


def test_random_within_samples_one_value_of_a_field_first(tmp_path, capsys, caplog):
    data = rows({"a": 30, "b": 12}) + [{"instruction": "no source", "output": "x"}] * 2
    sel = select(data, method="random", budget=8, within="meta.source=b", seed=5)
    kept = Counter(r.row.get("meta", {}).get("source") for r, k in zip(sel.records, sel.kept) if k)
    assert kept == {"b": 8}
    assert sel.columns["within"].sum() == 12
    plain = select(data, method="random", budget=8, seed=5)
    b = [int(i) for i in plain.order if sel.columns["within"][i]]
    assert [int(i) for i in sel.order[:12]] == b  # the plain pick's order, restricted to the matches
    assert not sel.columns["within"][sel.order[12:]].any()
    spaced = select(data, method="random", budget=8, within=" meta.source = b ", seed=5)
    assert np.array_equal(spaced.kept, sel.kept)  # spaces around '=' are not part of the value
    other = select(data, method="random", budget=8, within="meta.source=b", seed=6)
    assert not np.array_equal(sel.kept, other.kept)
    # fewer matches than the budget: every match, then the others at random, and a warning says so
    more = select(data, method="random", budget=15, within="meta.source=b", seed=5)
    kept = Counter(r.row.get("meta", {}).get("source", "(missing)") for r, k in zip(more.records, more.kept) if k)
    assert kept["b"] == 12 and sum(kept.values()) == 15
    assert "12 of 44 records match, fewer than the budget 15: all of them are kept, and 3 others" in caplog.text
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    assert main(["select", str(path), "--method", "random", "--within", "meta.source=c", "--budget", "3",
                 "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "--within meta.source=c: no record matches (values of meta.source: (missing), a, b)" in \
        capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["select", str(path), "--method", "random", "--within", "meta.source=b", "--budget", "3",
                 "--out", str(tmp_path / "p"), "-q"]) == 0
    table = pq.read_table(tmp_path / "p" / "scores.parquet").to_pandas()
    assert table.loc[table.kept, "within"].all() and table["within"].sum() == 12
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["counts"]["within"] == 12


def test_manifest_says_which_schema_and_template_were_used(tiny_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows({"x": 6})), encoding="utf-8")
    assert main(["select", str(data), "--method", "loss", "--model", str(tiny_dir), "--budget", "2",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "-q"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["schema"] == "alpaca" and manifest["template"] == "chat"
    assert main(["select", str(data), "--method", "random", "--budget", "2", "--out", str(tmp_path / "r"), "-q"]) == 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["schema"] == "alpaca" and manifest["template"] is None  # no model, no rendering


def test_every_record_covers_itself_in_the_delift_kernel():
    """The excluded diagonal scaled to 0: a pick did not cover itself, so the second pick went to a
    near-duplicate of the first (covering it) instead of the records nothing covers yet."""
    import scipy.sparse as sp

    from tunesift.methods.delift import self_covering
    from tunesift.scoring.utility import to_similarity
    from tunesift.selection.submodular import facility_location

    uf = np.full((6, 6), 0.1)
    uf[:4, :4] = 0.9  # records 0-3: near-duplicates that help each other
    uf[4, 5] = uf[5, 4] = 0.5  # 4 and 5 help each other a little
    np.fill_diagonal(uf, np.nan)  # excluded: a record as its own example
    sim = to_similarity(uf)
    assert facility_location(sim, 2).order.tolist()[1] < 4  # the defect: a second duplicate
    fixed = self_covering(sim)
    np.testing.assert_allclose(np.diag(fixed), [1, 1, 1, 1, 0.5, 0.5])  # each row's best example
    assert fixed.dtype == np.float32
    assert facility_location(fixed, 2).order.tolist()[1] >= 4  # one duplicate, then the uncovered rest
    sparse = self_covering(sp.csr_matrix(np.where(np.isnan(uf), 0.0, sim)))
    np.testing.assert_array_equal(sparse.toarray(), fixed)
    assert facility_location(sparse, 2).order.tolist() == facility_location(fixed, 2).order.tolist()


def test_a_record_no_example_helps_does_not_win_on_its_own_term():
    """With similarity 1 on the diagonal, each pick's own term dominated its gain and the greedy
    took the record the others help least (a corrupted answer) over a second cluster's member.
    The row maximum puts the self term on the row's scale: the outlier comes last."""
    from tunesift.methods.delift import self_covering
    from tunesift.scoring.utility import to_similarity
    from tunesift.selection.submodular import facility_location

    uf = np.full((7, 7), 0.3)  # records 0-5: clean, every one helps the others a little ...
    uf[:3, :3] = uf[3:, 3:] = 0.4  # ... and its own cluster (0-2, 3-5) more
    uf[1, 0] = 1.0  # one large stray entry sets the scale, as in real kernels
    uf[6, :] = 0.05  # record 6: corrupted, nothing helps it much ...
    uf[:, 6] = 0.0  # ... and it helps nobody
    np.fill_diagonal(uf, np.nan)
    sim = to_similarity(uf)
    constant = sim.astype(np.float32).copy()
    np.fill_diagonal(constant, 1.0)
    assert facility_location(constant, 2).order.tolist() == [0, 6]  # the defect: the outlier second
    assert facility_location(self_covering(sim), 2).order.tolist() == [0, 3]  # one pick per cluster


def test_mi_eta_zero_with_the_min_form_is_refused():
    """FL1MI caps each record's gain at eta * max_q Q[i, q]: eta 0 made every gain 0 and the pick the
    first k records of the file, silently."""
    with pytest.raises(OptionError, match="--mi-eta 0 with --mi-form min"):
        Options(method="delift", stage="task", mi_eta=0).validate()
    Options(method="delift", stage="task", mi_eta=0, mi_form="additive").validate()  # plain FL: allowed


def test_picks_that_gain_nothing_are_named(caplog):
    """Once the pool is covered the greedy's ties fall to the lowest index: the rest of the pick
    follows the file's order, which the user should be told."""
    rows = [{"instruction": t, "output": o} for t, o in
            [("Name a red fruit.", "Apple."), ("Name a red fruit.", "Apple."),
             ("Add 2 and 3.", "5"), ("Add 2 and 3.", "5")]]
    with caplog.at_level("WARNING", logger="tunesift"):
        sel = select(rows, method="delift-se", budget=3)
    assert sel.kept.sum() == 3
    assert any("1 of 3 picks gained nothing" in r.getMessage() for r in caplog.records)


def test_within_matches_a_csv_cell_as_typed(tmp_path):
    """CSV cells are text, and category() quotes text that reads as JSON ("1"), so --within split=1
    matched nothing and the user had to type split="1"."""
    data = tmp_path / "d.csv"
    data.write_text("prompt,response,split\na,b,1\nc,d,2\ne,f,1\n")
    sel = select(str(data), method="random", budget=2, within="split=1")
    assert sorted(r.prompt for r, k in zip(sel.records, sel.kept) if k) == ["a", "e"]
    sel = select(str(data), method="random", budget=2, within='split="1"')  # the quoted form still works
    assert sorted(r.prompt for r, k in zip(sel.records, sel.kept) if k) == ["a", "e"]


def test_a_column_spread_over_error_rows_reads_as_missing():
    """numpy text filled error rows with the text "nan"; an unsigned column with 0 (a real value)."""
    from tunesift.methods.registry import spread_column

    rows = np.array([0, 2])
    assert spread_column(np.array(["a", "b"]), rows, 3).tolist() == ["a", None, "b"]
    assert spread_column(np.array([5, 7], dtype=np.uint8), rows, 3).tolist() == [5, -1, 7]
    assert spread_column(np.array([True, True]), rows, 3).tolist() == [True, False, True]
    big = spread_column(np.array([2**64 - 1, 1], dtype=np.uint64), rows, 3)
    assert big[0] == float(2**64 - 1) and np.isnan(big[1])  # not wrapped to -1
    assert np.isnat(spread_column(np.array(["2026-12-01", "2026-12-02"], dtype="datetime64[D]"), rows, 3)[1])
    got = spread_column(np.array([0.5, 1.5], dtype=np.float32), rows, 3)
    assert got.dtype == np.float64 and np.isnan(got[1]) and got[2] == 1.5


@pytest.mark.parametrize("order", [[0, 1], [0, 0, 1], [0, 1, 99]])
def test_a_method_that_orders_too_few_records_is_a_bug_not_a_short_pick(monkeypatch, order):
    """kept[order[:k]] kept fewer than k records without a word when a method returned fewer than
    k, repeated or out-of-range indices; the manifest still said k."""
    from dataclasses import replace

    import tunesift
    from tunesift.methods.registry import REGISTRY, Picked

    monkeypatch.setitem(REGISTRY, "random", replace(REGISTRY["random"], run=lambda job: Picked({}, np.array(order))))
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    with pytest.raises(RuntimeError, match="internal: random ordered 3 records|internal: random ordered 2 records"):
        tunesift.select(rows, method="random", budget=3)
