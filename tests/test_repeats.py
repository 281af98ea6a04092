"""Pool records that repeat a record of the second set (a target prompt: a leak when the target is
the evaluation set; existing data: trained on already) are counted, warned about and reported."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import tunesift
from tunesift.io.records import Record
from tunesift.io.repeats import COMMON, near_repeats_of, repeats_of, template_limit
from tunesift.report.read import read_output

POOL = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(20)]


def rec(prompt: str, response: str, error: str | None = None) -> Record:
    return Record(id=prompt, prompt=prompt, response=response, context=(), row={}, line=1, error=error)


def test_repeats_of_compares_whitespace_normalised_prompts_then_responses():
    records = [rec("What is 2+2?", "4"), rec(" What  is\n2+2? ", "four"), rec("What is 3+3?", "6"),
               rec("What is 2+2?", "4", error="defect"), rec("what is 2+2?", "4")]
    others = [rec("What is 2+2?", "4 "), rec("What is 2+2?", "Four"), rec("What is 3+3?", "6", error="bad")]
    same_prompt, same_example = repeats_of(records, others)
    # 0: prompt and response; 1: prompt only (whitespace differs, "four" is not "Four"); 2: its twin
    # in others has a defect; 3: a record with a defect is never marked; 4: case differs
    assert same_prompt.tolist() == [True, True, False, False, False]
    assert same_example.tolist() == [True, False, False, False, False]
    assert not (same_example & ~same_prompt).any()
    assert [m.shape for m in repeats_of([], others)] == [(0,), (0,)]



Q = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
     "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
     "per fresh duck egg. How much in dollars does she make every day at the farmers' market?")


def test_near_repeats_share_half_the_smaller_prompts_8_word_sequences():
    target = [rec(Q, "18"), rec("What is 2+2?", "4")]
    records = [rec(Q.replace("16 eggs", "17 eggs"), "20"),                       # a number changed: near
               rec("JANET'S ducks lay 16 eggs per day!!  " + Q[35:].upper(), "x"),  # case, punctuation
               rec("Read this carefully. " + Q + " Show your work.", "x"),        # sentences added
               rec(Q[:120], "x"),                                                # its first half: contained
               rec("Tom's cats eat 16 cans per week. " + Q[35:90], "x"),         # a quarter of it: not near
               rec("what is 2 + 2", "4"),                                        # short: the same words
               rec("What is 2+3?", "5"),                                         # short: another word
               rec(Q.replace("16 eggs", "17 eggs"), "20", error="defect")]       # a defect: never marked
    assert near_repeats_of(records, target).tolist() == [True, True, True, True, False, True, False, False]
    # exact repeats are near too; nothing is near nothing
    assert near_repeats_of([rec(Q, "18")], target).tolist() == [True]
    assert near_repeats_of(records, []).tolist() == [False] * len(records)
    assert near_repeats_of([], target).shape == (0,)


def test_near_repeats_ignore_an_8_word_template_that_many_prompts_share():
    template = "Answer the following question with a single word and nothing else at all please: "
    others = [rec(template + f"what colour is object number {i} here?", "x") for i in range(COMMON + 1)]
    one = rec(template + "which city is the capital of France?", "Paris")
    # its shared sequences are all in more than COMMON prompts (boilerplate): not near any of them
    assert not near_repeats_of([one], others)[0]
    assert near_repeats_of([one], others[:2])[0]  # in both prompts of a set of two: still counted


def test_a_small_set_s_shared_header_is_a_template_not_a_copy():
    """The template rule counted an n-gram as boilerplate only past 64 prompts: ten targets sharing
    a long header made every pool record with that header a near copy of them."""
    header = ("You are a careful assistant. Read the question below, think about it step by step, "
              "check every number twice, and answer in one short sentence. Question: ")
    fruit = ["apples", "pears", "plums", "limes", "figs", "dates", "kiwis", "melons", "grapes", "cherries"]
    targets = [rec(header + f"A shop run by family {i} sells {f} at the market every weekend in the summer season "
                            f"and keeps the rest in a cold cellar behind the house; it sold {i + 3} crates on Monday. "
                            "How many crates did it sell?", "x") for i, f in enumerate(fruit)]
    unrelated = rec(header + "Which river flows through the city of Vienna in Austria?", "The Danube.")
    copy = rec(targets[4].prompt.replace("sold 7 crates", "sold 9 crates"), "9")
    assert near_repeats_of([unrelated, copy], targets).tolist() == [False, True]
    assert template_limit(10) == 5 and template_limit(3) == 2 and template_limit(1000) == COMMON


def test_a_long_prompt_that_contains_a_target_question_is_near():
    """A pool prompt over 263 words was cut to its sketch before comparing: a few-shot prompt that
    ends with a target question whole had about 256/|A| of that question's n-grams found."""
    filler = " ".join(f"example{i} says word{i % 37} and more{i}" for i in range(180))  # 900 words
    assert near_repeats_of([rec(filler + " " + Q, "18"), rec(filler, "x")], [rec(Q, "18")]).tolist() == [True, False]
    # and the other way round: the long prompt is the target (its sketch, scaled by its size)
    assert near_repeats_of([rec(Q, "18"), rec("What is the capital of France?", "Paris")],
                           [rec(filler + " " + Q, "18")]).tolist() == [True, False]


def test_a_prompt_counts_with_the_turns_before_it_but_not_the_system_turns():
    def chat(context, prompt, response):
        return Record(id=prompt, prompt=prompt, response=response, context=tuple(context), row={}, line=1)

    target = [chat([("user", "Write a poem."), ("assistant", "Roses...")], "Continue.", "Violets..."),
              chat([("system", "Be brief.")], "What is 2+2?", "4")]
    pool = [chat([("user", "Write a story."), ("assistant", "Once...")], "Continue.", "Violets..."),  # another talk
            chat([("user", "Write a poem."), ("assistant", "Roses...")], "Continue.", "Violets..."),  # the same
            chat([], "What is 2+2?", "4"),                                                          # no system turn
            chat([("system", "Be verbose.")], "What is 2+2?", "Four.")]                             # another system
    same_prompt, same_example = repeats_of(pool, target)
    assert same_prompt.tolist() == [False, True, True, True]
    assert same_example.tolist() == [False, True, True, False]


def test_kept_target_prompts_are_counted_warned_about_by_id_and_noted_in_the_report(tmp_path, caplog):
    target = [{"instruction": "Question 3?", "output": "Answer 3."},  # a copy of pool record 3
              {"instruction": "Question  5? ", "output": "Other."},   # pool record 5's prompt only
              {"instruction": "question 7", "output": "x"},           # pool record 7's words: a near copy
              {"instruction": "Something new?", "output": "x"}]
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        sel = tunesift.select(POOL, method="delift-se", stage="task", target=target, budget=10,
                              out=tmp_path / "o", report=True)
    counts = sel.manifest()["counts"]
    kept = sel.mask
    assert {k: counts[k] for k in counts if k.startswith("target")} == {
        "target_prompts": 2, "target_copies": 1, "target_near_prompts": 1,
        "target_prompts_kept": int(kept[3]) + int(kept[5]), "target_copies_kept": int(kept[3]),
        "target_near_prompts_kept": int(kept[7])}
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["counts"] == counts
    assert kept[3] and kept[5] and kept[7]  # the target's own prompts: FL mutual information takes them
    ids = [sel.records[i].id for i in (3, 5)]
    assert "2 kept record(s) ask a prompt of the target set (1 with its response too" in caplog.text
    assert all(i in caplog.text for i in ids)
    assert f"1 kept record(s) ask a near copy of a prompt of the target set (half or more of their 8-word " \
           f"sequences shared: counts.target_near_prompts_kept): {sel.records[7].id}; " in caplog.text
    notes = read_output(tmp_path / "o").notes
    assert any("2 kept record(s) ask a prompt of the target set (1 with its response too)" in n for n in notes), notes
    assert any("1 kept record(s) ask a near copy of a prompt of the target set" in n for n in notes), notes


def test_existing_copies_are_counted_and_nothing_is_counted_without_a_second_set(tmp_path, caplog):
    existing = [{"instruction": "Question 3?", "output": "Answer 3."}]
    sel = tunesift.select(POOL, method="delift-se", stage="continual", existing=existing, budget=10)
    counts = sel.manifest()["counts"]
    assert (counts["existing_prompts"], counts["existing_copies"]) == (1, 1)
    assert counts["existing_copies_kept"] == int(sel.mask[3])
    # a pick that keeps it (the whole pool): warned about and noted as trained on already
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        tunesift.select(POOL, method="delift-se", stage="continual", existing=existing, budget=1.0,
                        out=tmp_path / "o", report=True)
    assert "1 kept record(s) ask a prompt of the existing set (1 with its response too" in caplog.text
    assert "the model was trained on these already" in caplog.text
    notes = read_output(tmp_path / "o").notes
    assert any("ask a prompt of the existing set (1 with its response too): the model was trained on them already"
               in n for n in notes), notes
    plain = tunesift.select(POOL, method="delift-se", budget=10).manifest()["counts"]
    assert not [k for k in plain if k.startswith(("target", "existing"))]


@pytest.mark.parametrize("stage,second", [("task", "target"), ("continual", "existing")])
def test_no_repeats_no_warning(stage, second, caplog):
    other = [{"instruction": "Unrelated?", "output": "Yes."}]
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        sel = tunesift.select(POOL, method="delift-se", stage=stage, budget=5, **{second: other})
    counts = sel.manifest()["counts"]
    assert counts[f"{second}_prompts"] == counts[f"{second}_copies_kept"] == counts[f"{second}_near_prompts"] == 0
    assert "ask a prompt of" not in caplog.text and "near copy" not in caplog.text
    assert np.count_nonzero(sel.mask) == 5


def test_a_near_copy_inside_a_shared_template_is_still_near():
    """Template n-grams were left out of the overlap but counted in the sizes: a target set whose
    prompts share a few-shot header longer than the question hid every near copy behind it."""
    header = ("Solve the problem step by step and give the final answer after four hashes, as in the "
              "examples below, showing every calculation you make along the way. ")
    targets = [rec(header + f"Problem {i}: a farmer has {i} cows and buys {i + 1} more. How many cows now?", "x")
               for i in range(COMMON + 5)] + [rec(header + Q, "18")]
    changed = rec(header + Q.replace("16 eggs", "17 eggs"), "20")
    other = rec(header + "Tom reads 12 pages a day for a week and then 3 more. How many pages does he read?", "x")
    assert near_repeats_of([changed, other], targets).tolist() == [True, False]


def test_long_prompts_are_compared_through_a_bounded_sketch():
    """Every 8-word sequence of every second-set prompt was kept as a tuple: ~29 GB for 100,000
    chats of 1,000 words. A sketch keeps at most SKETCH hashes a prompt and still finds a long
    near copy."""
    from tunesift.io.repeats import SKETCH, _sketch, _words

    long = " ".join(f"w{i % 997} x{i}" for i in range(3000))
    assert len(_sketch(_words(rec(long, "a")), 8)) == SKETCH
    edited = long.replace("x1500 ", "y1500 ")
    assert near_repeats_of([rec(edited, "a"), rec(long[::-1], "a")], [rec(long, "a")]).tolist() == [True, False]


def test_a_chance_overlap_with_a_long_prompt_is_not_near_and_hashes_are_stable():
    """The sketch's hits on a long target were scaled by |B| / 256 to estimate the overlap: one or
    two hits decided it, and with Python's per-process string hash the same inputs were near in
    some runs and not in others. A long prompt is now checked on its full n-grams, hashed stably."""
    from tunesift.io.repeats import _grams

    filler = " ".join(f"example{i} says word{i % 37} and more{i}" for i in range(180))  # 900 words
    shared = " ".join(filler.split()[400:410])  # 10 words of it: 3 of the record's 12 n-grams
    record = rec(shared + " then what happens to the nine apples?", "x")
    assert not near_repeats_of([record], [rec(filler, "y")])[0]  # 25% shared, under the bar
    # the n-gram hashes are the same in every process and on every machine
    assert _grams("one two three".split(), 8).tolist() == [7084696274524172330]
    assert _grams("a b c d e f g h i".split(), 8).tolist() == [8095633818550266292, 12240777331391410798]
