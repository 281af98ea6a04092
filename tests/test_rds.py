"""RDS+ (--method rds): the SGPT position weights, the pooled vectors against a hand computation,
batch-shape invariance, the round-robin over targets, the pool-only variant, the cache and the
stage checks."""

import json

import numpy as np
import pytest
import torch
from tiny import assert_close_across_runs, rec

from tunesift.cli import main
from tunesift.errors import OptionError
from tunesift.methods.rds import centroid_scores, ranked_by_target, round_robin, task_order
from tunesift.pipeline import as_records, select
from tunesift.render import renderer_for
from tunesift.scoring import rds as rds_mod
from tunesift.scoring.rds import (
    embed_sequences,
    position_weights,
    rds_embeddings,
    weighted_mean_pool,
)


def unit(*rows):
    x = np.array(rows, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_position_weights_and_pooling_by_hand():
    assert np.allclose(position_weights(4), [0.1, 0.2, 0.3, 0.4])  # t / (1 + 2 + 3 + 4)
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, -1.0]],
                           [[3.0, 1.0], [0.0, 3.0], [1e6, 1e6], [-1e6, 5.0]]])  # row 1: two real tokens
    got = weighted_mean_pool(hidden, torch.tensor([4, 2])).numpy()
    row0 = (1 * np.array([1, 0]) + 2 * np.array([0, 1]) + 3 * np.array([2, 2]) + 4 * np.array([4, -1])) / 10
    row1 = (1 * np.array([3, 1]) + 2 * np.array([0, 3])) / 3  # the padded positions weigh nothing
    np.testing.assert_allclose(got, [row0, row1], rtol=1e-6)


@pytest.fixture(scope="module")
def records():
    texts = [("What is 2 + 2?", "The answer is 4."), ("Name the opposite of hot.", "cold"),
             ("Write a short poem about the sea.", "Waves roll in and out, grey and blue, all day long."),
             ("Translate seven into digits.", "7"), ("Sort 5, 3, 9.", "3, 5, 9"),
             ("The capital of France?", "Paris.")]
    return [rec(i, p, r) for i, (p, r) in enumerate(texts)]


def test_vectors_match_a_hand_computation_and_do_not_depend_on_the_batch(tiny_lm, records):
    renderer = renderer_for(tiny_lm)
    seqs = [renderer.sequence(r)[0] for r in records]
    assert len({len(s) for s in seqs}) > 2  # different lengths: batches are padded
    # by hand: each record alone, HF's final hidden states (after the final norm), SGPT weights
    want = []
    for s in seqs:
        with torch.no_grad():
            out = tiny_lm.model(input_ids=torch.tensor([s]), output_hidden_states=True)
        h = out.hidden_states[-1][0].double().numpy()
        e = position_weights(len(s)) @ h
        want.append(e / np.linalg.norm(e))
    one_batch = embed_sequences(tiny_lm, seqs, token_budget=1 << 14)
    singles = embed_sequences(tiny_lm, seqs, token_budget=1)  # every record in its own forward
    assert one_batch.shape == (len(seqs), tiny_lm.model.config.hidden_size) and one_batch.dtype == np.float32
    assert_close_across_runs(one_batch, want, rtol=1e-4, atol=1e-5)
    assert_close_across_runs(singles, one_batch, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(one_batch, axis=1), 1.0, rtol=1e-5)


def test_vectors_are_cached_per_block(tiny_lm, records, tmp_path, monkeypatch):
    renderer = renderer_for(tiny_lm)
    first = rds_embeddings(tiny_lm, renderer, records, cache_dir=tmp_path)
    assert any((tmp_path / "rds").iterdir())
    monkeypatch.setattr(rds_mod, "embed_sequences", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = rds_embeddings(tiny_lm, renderer, records, cache_dir=tmp_path)  # read back, no forward
    np.testing.assert_array_equal(first, again)


def test_round_robin_takes_turns_over_the_targets():
    # target 0 ranks 0, 1, 2, 3; target 1 ranks 0, 2, 1, 3
    ranked = np.array([[0, 1, 2, 3], [0, 2, 1, 3]])
    assert round_robin(ranked, 3).tolist() == [0, 2, 1]  # target 1's best (0) is taken: its next, 2
    assert round_robin(ranked, 10).tolist() == [0, 2, 1, 3]  # every list used up
    # a case where round-robin and the top-k of the max cosine differ: three pool records sit
    # next to target 0, one near target 1; top-3 by max cosine takes the three near target 0
    targets = unit([1, 0], [0, 1])
    pool = unit([1, 0], [0.995, 0.0998], [0.98, 0.199], [0.3, 0.954])
    order, best, nearest = task_order(pool, targets, 3)
    assert order[:3].tolist() == [0, 3, 1]
    assert order.tolist() == [0, 3, 1, 2]  # after the picks: by max cosine
    assert nearest.tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(best, (pool @ targets.T).max(axis=1))
    assert np.argsort(-best)[:3].tolist() == [0, 1, 2]  # what a plain top-k would have kept


def test_each_target_needs_only_its_first_k_records():
    rng = np.random.default_rng(0)
    pool = unit(*rng.normal(size=(60, 5)))
    pool[7] = pool[3]  # exact ties: the lower index first
    targets = unit(*rng.normal(size=(7, 5)))
    for k in (1, 5, 13, 60):
        shallow, best, nearest = ranked_by_target(pool, targets, k)
        deep, _, _ = ranked_by_target(pool, targets, 60)
        assert shallow.shape == (7, k)
        np.testing.assert_array_equal(shallow, deep[:, :k])
        np.testing.assert_array_equal(round_robin(shallow, k), round_robin(deep, k))
    s = targets @ pool.T
    assert list(deep[0][:3]) == list(np.lexsort((np.arange(60), -s[0]))[:3])
    assert (np.flatnonzero(deep[np.argmax(s[:, 3])] == 3) < np.flatnonzero(deep[np.argmax(s[:, 3])] == 7)).all()


def test_pool_only_variant_is_the_mean_cosine_to_the_pool():
    rng = np.random.default_rng(1)
    pool = unit(*rng.normal(size=(20, 4)))
    c = pool.mean(axis=0)
    np.testing.assert_allclose(centroid_scores(pool) * np.linalg.norm(c), (pool @ pool.T).mean(axis=1), atol=1e-12)


def rows(n, offset=0):
    return [{"instruction": f"Question {i + offset}: what is {i} + {i}?", "output": f"{2 * i}" + " ok" * (i % 3)}
            for i in range(n)]


def test_select_with_rds_in_both_stages(tiny_lm, tmp_path):
    pool, target = rows(16), rows(4, offset=100)
    sel = select(pool, method="rds", budget=5, lm=tiny_lm, cache_dir=str(tmp_path))
    assert sel.kept.sum() == 5 and set(sel.columns) == {"rds"}
    top = np.argsort(-sel.columns["rds"], kind="stable")[:5]
    assert set(np.flatnonzero(sel.kept)) == set(top)  # instruction stage: the closest to the centroid
    task = select(pool, method="rds", budget=6, stage="task", target=target, lm=tiny_lm, cache_dir=str(tmp_path))
    assert task.kept.sum() == 6 and set(task.columns) == {"rds", "nearest_target"}
    pool_recs, target_recs = as_records(pool), as_records(target)
    assert set(task.columns["nearest_target"]) <= {r.id for r in target_recs}
    renderer = renderer_for(tiny_lm)
    emb = rds_embeddings(tiny_lm, renderer, pool_recs, cache_dir=tmp_path)
    tgt = rds_embeddings(tiny_lm, renderer, target_recs, cache_dir=tmp_path)
    want, best, _ = task_order(emb, tgt, 6)
    assert_close_across_runs(task.columns["rds"], best)
    np.testing.assert_array_equal(task.order[:6], want[:6])  # the pipeline runs exactly the round-robin


@pytest.mark.parametrize("kw, message", [
    ({"stage": "task"}, "needs a target set"),
    ({"stage": "continual", "existing": rows(3)}, "rds does not support --stage continual"),
])
def test_stage_checks(kw, message, tiny_lm):
    with pytest.raises(OptionError, match=message):
        select(rows(8), method="rds", budget=2, lm=tiny_lm, **kw)


def test_cli_task_stage_without_target_is_one_line(tiny_dir, tmp_path, capsys):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(6)))
    code = main(["select", str(data), "--method", "rds", "--stage", "task", "--model", str(tiny_dir),
                 "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "target" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_select_then_report(tiny_dir, tmp_path, capsys):
    pool, target = tmp_path / "pool.jsonl", tmp_path / "target.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(10)))
    target.write_text("".join(json.dumps(r) + "\n" for r in rows(3, offset=50)))
    out = tmp_path / "out"
    code = main(["select", str(pool), "--method", "rds", "--stage", "task", "--target", str(target), "--budget", "4",
                 "--model", str(tiny_dir), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "rds" and len((out / "selected.jsonl").read_text().splitlines()) == 4
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "rds" in page and "Kept: the 4" in page  # a page for a method neither greedy nor one-column ranked
