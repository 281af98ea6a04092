"""bench/noise_bench.py: the corruptions (each makes its defect, records ground truth, is seeded),
the pool construction, the ranking/retention arithmetic, the selection rule, and one tiny
resumable run on self-made data with a tiny model (no ../shared)."""

import importlib.util
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).parent.parent / "bench" / "noise_bench.py"
_spec = importlib.util.spec_from_file_location("noise_bench", _PATH)
nb = importlib.util.module_from_spec(_spec)
sys.modules["noise_bench"] = nb
_spec.loader.exec_module(nb)

GSM = ("Tom has 3 apples and buys 4 more. How many?",
       "Tom has 3 apples.\nHe buys 4 more, so 3 + 4 = <<3+4=7>>7.\n#### 7")


def test_change_digit_changes_exactly_one_digit():
    for s, number in enumerate(["7", "52", "1,250", "-3.75", "100"]):
        new = nb.change_digit(number, random.Random(s))
        assert len(new) == len(number) and new != number
        diff = [i for i, (a, b) in enumerate(zip(number, new)) if a != b]
        assert len(diff) == 1 and new[diff[0]].isdigit()
        if len(re.sub(r"\D", "", number)) > 1:
            assert re.sub(r"\D", "", new)[0] != "0"  # no leading zero
    assert nb.change_digit("52", random.Random(1)) == nb.change_digit("52", random.Random(1))


def test_subtle_math_changes_only_the_final_number():
    for seed in range(5):
        new, info = nb.subtle_math(GSM[1], random.Random(seed))
        head = GSM[1].rsplit("#### ", 1)[0]
        assert new.startswith(head)  # the worked solution is kept
        assert new != GSM[1] and new.rsplit("#### ", 1)[1] == info["new"] != info["old"] == "7"
    a = nb.subtle_math("x is 12\n#### 1,234", random.Random(3))
    assert a[0].startswith("x is 12\n#### ") and a[1]["old"] == "1,234" and a[1]["new"] != "1,234"


def _one_span_replaced(old: str, new: str, info: dict) -> None:
    i = old.index(info["old"])
    assert new == old[:i] + info["new"] + old[i + len(info["old"]):]
    assert info["new"].lower() != info["old"].lower()


def test_replace_fact_number_then_entity_then_word():
    vocab = nb.fact_vocabulary(["We met Alice in Berlin yesterday.", "the quick brown foxes jump"])
    assert "Alice" in vocab["entity"] and "Berlin" in vocab["entity"] and "quick" in vocab["word"]
    t = "The tower is 324 metres tall."
    new, info = nb.replace_fact(t, vocab, random.Random(0))
    assert info["what"] == "number" and info["old"] == "324"
    _one_span_replaced(t, new, info)
    t = "It was built by Gustave Eiffel for the fair."
    new, info = nb.replace_fact(t, vocab, random.Random(0))
    assert info["what"] == "entity" and info["old"] in ("Gustave", "Eiffel") and info["new"] in vocab["entity"]
    _one_span_replaced(t, new, info)
    t = "it was built for the fair"
    new, info = nb.replace_fact(t, vocab, random.Random(0))
    assert info["what"] == "word" and info["new"] in vocab["word"]
    _one_span_replaced(t, new, info)
    new, info = nb.replace_fact("Health.", vocab, random.Random(0))  # a one-word label
    assert info["what"] == "any word" and new[0].isupper() and new != "Health."
    with pytest.raises(ValueError):
        nb.replace_fact("?!", vocab, random.Random(0))


def test_truncate_cuts_mid_sentence():
    t = "First we add the numbers. Then we divide by two and get the answer of nine."
    for seed in range(10):
        new, info = nb.truncate(t, random.Random(seed))
        assert t.startswith(new) and len(new) < len(t) and new[-1] not in ".!?,"
        n_words = len(new.split())
        assert 0.3 * 16 - 1 <= n_words <= 0.6 * 16
        assert info["kept_chars"] == len(new) and info["of"] == len(t)
    assert nb.truncate("Denver Broncos", random.Random(0))[0] == "Denver"
    assert nb.truncate("Business", random.Random(0))[0] == "Busi"
    with pytest.raises(ValueError):
        nb.truncate("B", random.Random(0))


def test_repeat_makes_a_degenerate_loop():
    t = "Paris is the capital of France. It is on the Seine and has many museums."
    new, info = nb.repeat(t, random.Random(0))
    assert info["unit"] == "Paris is the capital of France." and info["times"] >= 3
    assert new == " ".join([info["unit"]] * info["times"])
    assert len(new.split()) >= len(t.split())
    new, info = nb.repeat("Denver Broncos", random.Random(0))
    assert new == "Denver Denver Denver"


def test_swap_never_keeps_its_own_text_even_with_repeated_labels():
    resp = ["yes", "no", "yes", "yes", "no", "maybe"]
    src = nb.swap_cycle(resp)
    assert sorted(src) == list(range(len(resp)))  # a permutation: every answer used once
    assert all(resp[s] != r for s, r in zip(src, resp))
    with pytest.raises(ValueError):
        nb.swap_cycle(["a", "a", "a"])


def _rows(n: int, tag: str) -> list[dict]:
    return [{"prompt": f"{tag} question {i}: what is {i} + {i}?",
             "response": f"We add {i} and {i}. The total is {2 * i} in all.\n#### {2 * i}", "meta": {}}
            for i in range(n)]


def _pools(seed=0, hard_loss=None):
    reg, hard = _rows(60, "reg"), _rows(30, "hard")
    return nb.make_pools(reg, hard, 40, seed, lambda r, g: nb.subtle_math(r["response"], g), hard_loss=hard_loss)


def test_make_pools_ground_truth_and_determinism():
    p = _pools()
    base = p["base"]
    groups = [r["meta"]["group"] for r in base]
    assert len(base) == 40 and groups.count("hard") == 6 and groups.count("clean") == 34
    assert len(p["corrupt_idx"]) == 8 and all(base[i]["meta"]["group"] == "clean" for i in p["corrupt_idx"])
    for c in nb.CORRUPTIONS:
        rows = nb.pool_rows(p, c)
        changed = [i for i in range(40) if rows[i] is not base[i]]
        assert changed == p["corrupt_idx"]  # the same records, whatever the corruption
        for i in changed:
            m = rows[i]["meta"]
            assert m["group"] == "corrupt" and m["defect"] == c and m["original"] == base[i]["response"]
            assert rows[i]["prompt"] == base[i]["prompt"] and rows[i]["response"] != base[i]["response"]
    assert json.dumps(_pools(0)) == json.dumps(p)  # same seed, same pools
    assert json.dumps(_pools(1)) != json.dumps(p)


def test_hard_records_are_the_highest_loss_candidates():
    seen = {}

    def key(r) -> int:  # a stand-in for the model's loss: larger prompt number = harder
        return int(r["prompt"].split()[2].rstrip(":"))

    def loss(rows):
        seen["cand"] = [key(r) for r in rows]
        return np.array(seen["cand"], dtype=float)

    p = _pools(hard_loss=loss)
    hard = [r for r in p["base"] if r["meta"]["group"] == "hard"]
    assert len(seen["cand"]) == 24 and len(set(seen["cand"])) == 24  # 4x the 6 hard records
    # the kept hard records are the 6 highest-loss candidates, rank 1 the highest (the ranks alone
    # are 1..6 whichever 6 were kept)
    assert sorted(key(r) for r in hard) == sorted(seen["cand"])[-6:]
    by_rank = sorted(hard, key=lambda r: r["meta"]["hard_loss_rank"])
    assert [key(r) for r in by_rank] == sorted(seen["cand"], reverse=True)[:6]


def test_retention_and_random_expectation():
    corrupt = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    hard = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    order = np.array([2, 3, 4, 0, 5, 6, 7, 8, 9, 1])
    r = nb.retention([order], corrupt, hard, 0.3)
    assert r == {"corrupt_kept": 0.0, "hard_kept": 1.0, "corrupt_among_kept": 0.0, "k": 3}
    r = nb.retention([order], corrupt, hard, 0.4)
    assert r["corrupt_kept"] == 0.5 and r["corrupt_among_kept"] == 0.25
    orders = nb.rank("random", 1000, {}, float("nan"))
    rr = nb.retention(orders, np.arange(1000) < 200, np.arange(1000) >= 850, 0.3)
    assert abs(rr["corrupt_kept"] - 0.3) < 0.03 and abs(rr["hard_kept"] - 0.3) < 0.03


def test_donod_variants_rank_from_cached_terms():
    # three records: (r.z, ||G||^2, T); the third has a large gradient: NOD-alone puts it last
    stats = np.array([[-5.0, 4.0, 10], [-1.0, 1.0, 10], [20.0, 400.0, 10]])
    w_sq = 1e4
    nod = nb.rank("NOD alone mean", 3, {"donod": stats}, w_sq)[0]
    assert list(nod) == [1, 0, 2]
    don = nb.rank("DON alone mean", 3, {"donod": stats}, w_sq)[0]
    assert list(don) == [0, 1, 2]  # DON ~ -eta c r.z / ||W||: most negative r.z first
    for name in nb.donod_variants():
        o = nb.rank(name, 3, {"donod": stats}, w_sq)[0]
        assert sorted(o) == [0, 1, 2]


def _res(s, c, methods):
    return {"set": s, "corruption": c, "n": 10, "model": "m", "device": "d",
            "methods": {m: {"0.3": {"corrupt_kept": ck, "hard_kept": hk}} for m, (ck, hk) in methods.items()}}


def test_rule_picks_the_best_worst_case_margin_over_loss():
    results = [
        _res("a", "swap", {"loss (easiest)": (0.0, 0.2), nb.DEFAULT_DONOD: (0.1, 0.9), "NOD alone mean": (0.0, 0.5)}),
        _res("b", "swap", {"loss (easiest)": (0.1, 0.2), nb.DEFAULT_DONOD: (0.8, 0.2), "NOD alone mean": (0.1, 0.3)}),
    ]
    summ = {d["method"]: d for d in nb.summary(results)}
    assert summ[nb.DEFAULT_DONOD]["worst_margin"] == pytest.approx(-0.7)
    assert summ[nb.DEFAULT_DONOD]["mean_margin"] == pytest.approx(-0.05)  # (0.6 - 0.7) / 2
    assert summ["NOD alone mean"]["worst_margin"] == pytest.approx(0.1)
    assert nb.choose_donod(nb.summary(results))["method"] == "NOD alone mean"
    table = nb.render_table(results)
    assert "NOD alone mean (chosen)" in table and "| 0 / 20 |" in table


def _write_fake_gsm8k(d: Path) -> None:
    (d / "gsm8k").mkdir(parents=True)
    (d / "math").mkdir()
    with open(d / "gsm8k" / "train.jsonl", "w") as fh:
        for i in range(40):
            fh.write(json.dumps({"question": f"What is {i} + {i + 1}?",
                                 "answer": f"We add {i} and {i + 1}.\n{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"}) + "\n")
    with open(d / "math" / "test.jsonl", "w") as fh:
        for i in range(20):
            sol = f"Let $x = {i}$. Then the sum of the squares is $x^2 + {i} = {i * i + i}$. " * 6
            fh.write(json.dumps({"problem": f"Find the value of $x^2 + x$ for $x = {i}$.", "level": "Level 5",
                                 "solution": sol + f"So the answer is $\\boxed{{{i * i + i}}}$."}) + "\n")


def test_tiny_run_is_resumable(tmp_path, tiny_dir, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_fake_gsm8k(data)
    argv = ["--data-dir", str(data), "--out", str(out), "--sets", "gsm8k", "--records", "20",
            "--model", str(tiny_dir), "--device", "cpu", "--dtype", "float32", "--scorers", "donod,ifd",
            "--max-length", "512"]
    nb.main(argv)
    first = capsys.readouterr().out
    assert "torch threads" in first and "token budget" in first  # the device is printed with the figures
    files = sorted(p.name for p in (out / "results").glob("*.json"))
    assert files == [f"gsm8k.{c}.json" for c in sorted(nb.CORRUPTIONS)]
    rec = json.loads((out / "results" / "gsm8k.subtle.json").read_text())
    assert rec["n"] == 20 and rec["n_corrupt"] == 4 and rec["n_hard"] == 3
    assert set(rec["methods"]) == set(nb.method_names(["donod", "ifd"]))
    cell = rec["methods"][nb.DEFAULT_DONOD]["0.3"]
    assert cell["k"] == 6 and 0 <= cell["corrupt_kept"] <= 1 and 0 <= cell["hard_kept"] <= 1
    assert rec["groups"]["hard"]["n_tokens"] > rec["groups"]["clean"]["n_tokens"]
    pools = json.loads((out / "pools" / "gsm8k.json").read_text())
    assert len(pools["base"]) == 20 and set(pools["versions"]) == set(nb.CORRUPTIONS)
    stamp = {p: p.stat().st_mtime_ns for p in (out / "scores").glob("*.json")}
    table = (out / "table.md").read_text()
    assert "**gsm8k** (math" in table and "budget 30%" in table and "budget 70%" in table
    nb.main(argv)  # everything is there: nothing is scored again
    again = capsys.readouterr().out
    assert "skipped" in again and "token budget" not in again  # the model was not even loaded
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "scores").glob("*.json")}
    (out / "results" / "gsm8k.repeat.json").unlink()  # one result lost: recomputed from cached scores
    nb.main(argv)
    assert "token budget" not in capsys.readouterr().out
    assert (out / "results" / "gsm8k.repeat.json").exists()


def test_pack_copies_only_the_needed_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write_fake_gsm8k(src)
    (src / "other").mkdir()
    (src / "other" / "x.json").write_text("{}")
    nb.main(["--pack", str(dst), "--data-dir", str(src), "--sets", "gsm8k"])
    got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert got == ["gsm8k/train.jsonl", "math/test.jsonl"]
