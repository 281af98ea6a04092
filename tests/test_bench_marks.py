"""The bench table and plot mark which differences from random exceed the seed spread (two
standard errors of the paired seed differences), and the bars start at zero."""

import numpy as np
import pytest
from PIL import Image

from tunesift.bench_plots import plot_results
from tunesift.bench_stats import beyond_noise, paired_p, versus_random, versus_random_items
from tunesift.bench_tables import (
    aggregate,
    family_lines,
    item_lines,
    markdown_table,
    no_verdict_lines,
)


def cells(diffs: dict[str, list[float]], base=(0.78, 0.79, 0.785)) -> list[dict]:
    out = []
    for s, b in enumerate(base):
        for method, d in (("random", [0.0] * len(base)), *diffs.items()):
            out.append({"method": method, "budget": 0.3, "seed": s, "n_train": 3, "select_s": 1.0, "train_s": 2.0,
                        "metrics": {"rougeL": b + d[s]}})
    return out


def test_paired_difference_and_marks(tmp_path):
    # "clear": +0.010 every seed (tiny paired spread); "noise": +-0.004 around +0.001
    cs = cells({"clear": [0.010, 0.011, 0.009], "noise": [0.005, -0.003, 0.001]})
    diff, se, n = versus_random(cs, "clear", 0.3)["rougeL"]
    # the paired t-test behind p: exactly 2 SE with 3 seeds is p = 0.18 (t = 2, 2 degrees of freedom)
    assert paired_p(2.0, 1.0, 3) == pytest.approx(0.1835, abs=1e-4)
    assert np.isnan(paired_p(0.01, 0.0, 3)) and np.isnan(paired_p(0.01, float("nan"), 1))
    assert n == 3 and diff == pytest.approx(0.010) and se == pytest.approx(np.std([0.010, 0.011, 0.009], ddof=1) / np.sqrt(3))
    assert versus_random(cs, "random", 0.3) == {} and versus_random(cs, "clear", 0.5) == {}
    rows = {r["method"]: r for r in aggregate(cs)}
    assert beyond_noise(rows["clear"], "rougeL") is True
    assert beyond_noise(rows["noise"], "rougeL") is False  # |0.001| < 2 * 0.0023
    assert beyond_noise(rows["random"], "rougeL") is None
    table = markdown_table(list(rows.values()))
    line = {ln.split(" | ")[0][2:]: ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "(Δ +0.0100 ± 0.0006 \\*, p 0.003)" in line["clear"]
    assert "(Δ +0.0010 ± 0.0023, p 0.707)" in line["noise"] and "\\*" not in line["noise"]
    assert "paired t-test" in table
    assert "Δ" not in line["random"] and "two standard errors" in table
    one = aggregate(cells({"clear": [0.01]}, base=(0.78,)))  # one seed: no spread, no mark
    assert beyond_noise(one[1], "rougeL") is None and "\\*)" not in markdown_table(one)
    # two seeds: a spread with one degree of freedom, too few for a mark (the table still shows Δ)
    two = {r["method"]: r for r in aggregate(cells({"clear": [0.010, 0.011]}, base=(0.78, 0.79)))}
    assert two["clear"]["paired_seeds"] == 2 and beyond_noise(two["clear"], "rougeL") is None
    assert "(Δ +0.0105 ± 0.0005)" in markdown_table(list(two.values()))

    plot_results(tmp_path, list(rows.values()))
    img = np.asarray(Image.open(tmp_path / "results.png").convert("RGB")).astype(int)
    red = (np.abs(img - [0xC4, 0x4E, 0x52]).sum(axis=2) < 30).sum()  # the difference beyond noise
    assert red > 20 and img.shape[0] > 600  # two rows of panels: the values, then minus random


def test_bars_start_at_zero(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits = []
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **kw):
        limits.extend(ax.get_ylim() for ax in fig.axes)
        return real_savefig(fig, *a, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    plot_results(tmp_path, aggregate(cells({"clear": [0.010, 0.011, 0.009]})))
    assert limits[0][0] == 0.0 and limits[0][1] > 0.79  # not a 0.782-0.790 zoom
    lo, hi = limits[1]  # the differences panel shows zero and the +-2 SE spread
    assert lo < 0.0 < hi or lo <= 0.0 <= hi


def test_the_same_difference_in_every_seed_gets_no_verdict():
    """One exact match fewer of 300 in every seed: the differences agree up to rounding, so the old
    t-test gave p ~ 1e-32 and a firm mark out of float noise."""
    em = {"random": [3, 4, 5], "flat": [1, 2, 3], "zero": [3, 4, 5]}
    cs = [{"method": m, "budget": 0.3, "seed": s, "n_train": 3, "select_s": 1.0, "train_s": 2.0,
           "metrics": {"exact_match": v[s] / 300}} for m, v in em.items() for s in range(3)]
    diff, se, n = versus_random(cs, "flat", 0.3)["exact_match"]
    assert diff == pytest.approx(-2 / 300) and se == 0.0 and n == 3
    rows = {r["method"]: r for r in aggregate(cs)}
    for m in ("flat", "zero"):
        assert np.isnan(rows[m]["exact_match_vs_random_p"]) and beyond_noise(rows[m], "exact_match") is None
    assert family_lines(list(rows.values())) == []  # nothing with a finite p to correct
    lines = no_verdict_lines(list(rows.values()))
    assert any("no seed spread" in ln and "flat @ 0.3 (exact_match)" in ln and "zero @ 0.3" in ln for ln in lines)


def test_a_metric_missing_from_a_cell_is_nan_not_a_crash_and_rows_sort_by_method(tmp_path):
    cs = cells({"donod": [0.01, 0.02, 0.0], "random-gsm8k": [0.0, 0.01, 0.0], "delift-learned": [0.0] * 3,
                "delift": [0.0] * 3})
    for c in cs[:-1]:  # a metric every cell but the last holds (e.g. one a later version added)
        c["metrics"]["loss"] = 1.0
    rows = aggregate(cs)
    order = [r["method"] for r in rows]
    assert order.index("random") + 1 == order.index("random-gsm8k")  # variants sit beside their method
    assert order.index("delift") + 1 == order.index("delift-learned")
    last = next(r for r in rows if r["method"] == cs[-1]["method"])
    assert np.isnan(last["loss"]) and np.isfinite(last["rougeL"]) and np.isnan(last["loss_vs_random"])
    assert any("NaN or missing" in ln for ln in no_verdict_lines(rows))
    plot_results(tmp_path, rows)  # rows without the metric get no bar, no KeyError
    assert (tmp_path / "results.png").stat().st_size > 0


def test_one_seed_is_shown_as_one_seed_not_as_zero_spread():
    table = markdown_table(aggregate(cells({"clear": [0.01]}, base=(0.78,))))
    assert "0.7900 (1 seed)" in table and "± 0.0000" not in table


def item_cells(items: dict[str, list[str]], budget=0.1) -> list[dict]:
    """Cells holding per-question pass/fail strings (``cell["items"]["exact_match"]``) per seed."""
    return [{"method": m, "budget": budget, "seed": s, "n_train": 3, "select_s": 1.0, "train_s": 2.0,
             "metrics": {"exact_match": bits.count("1") / len(bits)}, "items": {"exact_match": bits}}
            for m, per_seed in items.items() for s, bits in enumerate(per_seed)]


def test_question_by_question_sign_test_over_the_seeds_mean():
    # q0: random answers it in 2 of 3 seeds, the method in 1 -> worse; q1: the method always, random
    # never -> better; q2: the method once -> better; the other 9 questions: never answered -> ties
    cs = item_cells({"random": ["100000000000", "100000000000", "000000000000"],
                     "m": ["110000000000", "010000000000", "011000000000"]})
    assert versus_random_items(cs, "m", 0.1)["exact_match"] == {"better": 2, "worse": 1, "n": 12, "seeds": 3,
                                                                "p": pytest.approx(1.0)}
    # better on 9 questions, worse on none: two-sided sign test p = 2 * 0.5^9
    wins = item_cells({"random": ["0" * 12] * 3, "m": ["111111111000"] * 3})
    assert versus_random_items(wins, "m", 0.1)["exact_match"] == {"better": 9, "worse": 0, "n": 12, "seeds": 3,
                                                                  "p": pytest.approx(2 * 0.5 ** 9)}
    row = {r["method"]: r for r in aggregate(wins)}["m"]
    assert row["exact_match_items_better"] == 9 and row["exact_match_items_p"] == pytest.approx(0.00390625)
    line, = item_lines(aggregate(wins))
    assert "m at budget 0.1, exact_match: 9 questions answered more often" in line and "0 less often (of 12" in line
    assert "3 seeds paired" in line and "p = 0.004" in line
    # nothing differs: no p, said so; references and other budgets have nothing to pair
    same = item_cells({"random": ["010"] * 3, "m": ["010"] * 3})
    assert np.isnan(versus_random_items(same, "m", 0.1)["exact_match"]["p"])
    assert "nothing to test" in item_lines(aggregate(same))[0]
    assert versus_random_items(cs, "random", 0.1) == {} and versus_random_items(cs, "m", 0.3) == {}


def test_question_by_question_pairs_only_seeds_with_the_same_questions():
    cs = item_cells({"random": ["10", "10", "10"], "m": ["01", "01", "01"]})
    del cs[1]["items"]  # random's seed 1 kept none (a cell made before cells kept them)
    cs[5]["items"]["exact_match"] = "011"  # the method's seed 2 generated another number of questions
    assert versus_random_items(cs, "m", 0.1)["exact_match"] == {"better": 1, "worse": 1, "n": 2, "seeds": 1,
                                                                "p": pytest.approx(1.0)}
    del cs[0]["items"]  # no seed left to pair: no comparison, no row fields, no line
    assert versus_random_items(cs, "m", 0.1) == {}
    rows = aggregate(cs)
    assert item_lines(rows) == [] and not any("exact_match_items_p" in r for r in rows)


def test_question_by_question_loss_is_token_weighted_and_t_tested():
    from scipy.stats import ttest_1samp

    w = [1, 2, 1]  # each question's response tokens: the loss's weights
    per = {"random": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], "m": [[0.5, 1.0, 1.0], [0.7, 0.8, 1.2]]}
    cs = [{"method": m, "budget": 0.1, "seed": s, "n_train": 3, "select_s": 1.0, "train_s": 2.0,
           "metrics": {"loss": float(np.dot(v, w) / sum(w))}, "items": {"loss": v, "n_tokens": w}}
          for m, seeds in per.items() for s, v in enumerate(seeds)]
    got = versus_random_items(cs, "m", 0.1)["loss"]
    # the seeds' mean per question: m (0.6, 0.9, 1.1) against 1; d = w (m - r) = (-0.4, -0.2, 0.1)
    d = np.array([-0.4, -0.2, 0.1])
    assert got["diff"] == pytest.approx(-0.125) and got["n"] == 3 and got["seeds"] == 2
    assert got["diff"] == pytest.approx(aggregate(cs)[1]["loss_vs_random"])  # the table's token-weighted loss
    assert got["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3) / (4 / 3))
    assert got["p"] == pytest.approx(ttest_1samp(d, 0.0).pvalue)
    line, = item_lines(aggregate(cs))
    assert "m at budget 0.1, loss: better than random by 0.1250 ±" in line and "over 3 questions (2 seeds paired" in line
    # other questions' tokens (another test set) are not paired
    cs[0]["items"]["n_tokens"] = [1, 1, 2]
    assert versus_random_items(cs, "m", 0.1)["loss"]["seeds"] == 1


def test_results_md_has_the_question_by_question_section(tmp_path):
    from types import SimpleNamespace

    from tunesift.bench_tables import write_results
    from tunesift.finetune import TrainConfig

    cfg = SimpleNamespace(train="pool.jsonl", test="test.jsonl", stage="task", select_model="default",
                          train_model="default", training=TrainConfig())
    cs = item_cells({"random": ["0" * 12] * 3, "m": ["111111111000"] * 3})
    write_results(tmp_path, aggregate(cs), cfg, cs)
    md = (tmp_path / "results.md").read_text()
    assert "## Question by question" in md and "9 questions answered more often" in md and "sign test" in md


def test_question_by_question_pairs_backfilled_with_new_cells_and_keeps_the_largest_group():
    # random's cells were backfilled (exact match only), the method's are new (loss and tokens too)
    cs = item_cells({"random": ["00", "00", "000"], "m": ["11", "10", "111"]})
    for c in cs[3:]:
        c["items"].update(loss=[1.0] * len(c["items"]["exact_match"]), n_tokens=[3] * len(c["items"]["exact_match"]))
    got = versus_random_items(cs, "m", 0.1)
    # seed 2 kept 3 questions, seeds 0-1 two: the two agreeing seeds are paired, not none
    assert got["exact_match"] == {"better": 2, "worse": 0, "n": 2, "seeds": 2, "p": pytest.approx(0.5)}
    assert "loss" not in got  # random kept no losses: nothing to pair


def test_question_by_question_loss_leaves_out_questions_without_tokens_and_says_so_when_equal():
    def loss_cells(m_loss, w):
        return [{"method": m, "budget": 0.1, "seed": s, "n_train": 3, "select_s": 1.0, "train_s": 2.0,
                 "metrics": {"loss": 1.0}, "items": {"loss": v, "n_tokens": w}}
                for m, v in (("random", [1.0, 1.0, 1.0, 0.0]), ("m", m_loss)) for s in range(2)]
    got = versus_random_items(loss_cells([0.5, 0.9, 1.2, 0.0], [2, 1, 1, 0]), "m", 0.1)["loss"]
    assert got["n"] == 3  # the question without response tokens is no evidence either way
    same = aggregate(loss_cells([1.0, 1.0, 1.0, 0.0], [2, 1, 1, 0]))
    assert "no different from random" in item_lines(same)[0] and "nothing to test" in item_lines(same)[0]
    nan = aggregate(loss_cells([float("nan"), 1.0, 1.0, 0.0], [2, 1, 1, 0]))
    assert "not a number" in item_lines(nan)[0]


def test_a_cell_keeps_per_question_results_only_for_the_metrics_it_reports():
    from types import SimpleNamespace

    from tunesift.bench import item_results

    per = {"loss": np.array([0.1234567891, 2.0]), "n_tokens": np.array([3, 0]),
           "exact_match": np.array([1.0, 0.0, np.nan])}
    both = item_results(SimpleNamespace(metrics={"loss": 1.0, "exact_match": 0.5}, per_record=per))
    assert both == {"exact_match": "10", "loss": [0.123457, 2.0], "n_tokens": [3, 0]}
    # perplexity alone computes per-record losses too: no loss is kept for a cell that does not report it
    assert item_results(SimpleNamespace(metrics={"perplexity": 2.0}, per_record=per)) == {}


def full_cells(full: dict[int, dict], budgets=(0.1, 0.3)) -> list[dict]:
    """Random at ``budgets`` over 3 seeds (loss 1.0 + budget-dependent offset + seed), and full data
    (budget None) with ``full[seed]``'s metrics."""
    out = [{"method": "random", "budget": b, "seed": s, "n_train": int(b * 100), "select_s": 0.0, "train_s": 1.0,
            "metrics": {"loss": 1.0 + (0.1 if b < 0.2 else 0.0) + 0.01 * s, "rougeL": 0.2 + 0.01 * s}}
           for b in budgets for s in range(3)]
    return out + [{"method": "full", "budget": None, "seed": s, "n_train": 100, "select_s": 0.0, "train_s": 5.0,
                   "metrics": m} for s, m in full.items()]


def test_full_data_is_compared_with_random_at_each_budget_it_ran(tmp_path):
    from types import SimpleNamespace

    from tunesift.bench_stats import full_versus_random
    from tunesift.bench_tables import family_adjusted, full_lines, write_results
    from tunesift.finetune import TrainConfig

    # full data: loss 0.05 / 0.06 / 0.04 below random's 30% in seeds 0 / 1 / 2, rougeL +0.03 in each
    full = {s: {"loss": 1.0 + 0.01 * s - d, "rougeL": 0.23 + 0.01 * s} for s, d in enumerate((0.05, 0.06, 0.04))}
    cs = full_cells(full, budgets=(0.3, 0.1))  # random's budgets come back in order, not as the cells list them
    got = full_versus_random(cs)
    assert list(got) == [0.1, 0.3]
    d, se, n = got[0.3]["loss"]
    assert n == 3 and d == pytest.approx(-0.05) and se == pytest.approx(np.std([0.05, 0.06, 0.04], ddof=1) / np.sqrt(3))
    assert got[0.1]["loss"][0] == pytest.approx(-0.15)
    assert got[0.3]["rougeL"][1] == 0.0  # the same +0.03 in every seed: no spread, no test
    lines = full_lines(cs)
    assert len(lines) == 2 and lines[1].startswith("- full data (all 100 records) against random at budget 0.3 "
                                                   "(3 seeds paired): loss -0.0500 ± 0.0058 \\* (better, p 0.013)")
    assert "rougeL +0.0300 (better; the same in every seed, nothing to test)" in lines[1]
    # a reference against a reference: the selectors' Holm family does not count it
    assert family_adjusted(aggregate(cs)) == {}
    cfg = SimpleNamespace(train="pool.jsonl", test="test.jsonl", stage="instruction", select_model="default",
                          train_model="default", training=TrainConfig())
    write_results(tmp_path, aggregate(cs), cfg, cs)
    md = (tmp_path / "results.md").read_text()
    assert "## Full data against random" in md and "loss -0.0500 ± 0.0058 \\*" in md


def test_full_data_without_a_partner_or_with_one_seed_gets_no_test():
    from tunesift.bench_tables import full_lines

    assert full_lines(full_cells({})) == []  # no full cells
    assert full_lines([c for c in full_cells({0: {"loss": 0.9}}) if c["method"] == "full"]) == []  # no random
    assert full_lines(full_cells({7: {"loss": 0.9}})) == []  # no seed in common
    one = full_lines(full_cells({0: {"loss": 1.2, "rougeL": float("nan")}}))
    assert one[0].endswith("(1 seed paired): loss +0.1000 (worse; 1 seed, no test); "
                           "rougeL not a number (NaN or missing in some seed)")


def test_full_data_says_when_its_pair_with_random_spans_a_machine_or_stage1_model():
    """A continual seed whose full-data cell started from another stage-1 model (or ran on another
    machine) than random's cell of that seed: the line says the difference includes that change."""
    from tunesift.bench_tables import full_lines, pair_changes, provenance_table

    cs = full_cells({0: {"loss": 0.9}, 1: {"loss": 0.95}}, budgets=(0.3,))
    for c in cs:
        c["stage1_digest"] = f"d{c['seed']}"
        c["ran_with"] = {"machine": {"cpu": "EPYC", "features": [], "cores": 2}}
    assert "across" not in full_lines(cs)[0]  # same machine and stage-1 model in every seed
    full = next(c for c in cs if c["method"] == "full" and c["seed"] == 1)
    full["stage1_digest"] = "retrained"
    assert "(2 seeds paired, across stage-1 models: the difference includes that change): loss" in full_lines(cs)[0]
    full["ran_with"] = {"machine": {"cpu": "Xeon", "features": ["amx_bf16"], "cores": 2}}
    assert "across machines and stage-1 models" in full_lines(cs)[0]
    # the same test behind the provenance table's flag for selectors; references are never flagged
    by = {c["seed"]: c for c in cs if c["method"] == "random"}
    assert pair_changes({1: full}, by) == ["machines", "stage-1 models"]
    assert pair_changes({5: full}, by) == []  # no seed in common
    assert pair_changes({1: {**full, "stage1_digest": None}}, by) == ["machines"]  # a digest missing: not compared
    assert "Paired with random across" not in provenance_table(cs)
