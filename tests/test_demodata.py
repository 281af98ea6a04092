"""The synthetic demo dataset: shape, determinism, correct answers, planted corruption."""

from __future__ import annotations

import json
import re

import pytest

from tunesift.errors import OptionError
from tunesift_demo.data import (
    ANTONYMS,
    CAPITALS,
    FAMILIES,
    _build,
    generate_demo,
    number_to_words,
    write_demo,
)

ARITH = re.compile(r"^(\d+) ([+\-×]) (\d+) = (-?\d+)\.$")


@pytest.fixture(scope="module")
def built() -> tuple[list[dict], list[str]]:
    return _build(240, 0.2, 0)


def test_default_shape(built):
    records, _ = built
    assert len(records) == 240
    assert len({r["id"] for r in records}) == 240
    assert records[0]["id"] == "demo-0001"
    for r in records:
        assert set(r) == {"id", "instruction", "input", "output", "meta"}
        assert set(r["meta"]) == {"family", "corrupted", "duplicate_of"}
        assert r["meta"]["family"] in FAMILIES
        assert all(isinstance(r[k], str) for k in ("instruction", "input", "output"))
        assert r["instruction"] and r["output"]
        assert len(r["output"].split()) < 40
    assert len(FAMILIES) >= 6
    assert {r["meta"]["family"] for r in records} == set(FAMILIES)


def test_generate_demo_matches_build(built):
    assert generate_demo() == built[0]


def test_deterministic_and_seed_dependent():
    assert generate_demo(50, seed=3) == generate_demo(50, seed=3)
    a = generate_demo(50, seed=3)
    b = generate_demo(50, seed=4)
    assert [(r["instruction"], r["input"]) for r in a] != [
        (r["instruction"], r["input"]) for r in b
    ]


@pytest.mark.parametrize(
    "n, corrupt", [(10, 0.0), (10, 0.25), (10, 0.96), (37, 0.5), (240, 0.2), (1000, 0.33)]
)
def test_exact_corrupted_count(n, corrupt):
    records = generate_demo(n, corrupt=corrupt, seed=n)
    assert len(records) == n
    assert len({r["id"] for r in records}) == n
    assert sum(r["meta"]["corrupted"] for r in records) == round(corrupt * n)


def test_corrupted_output_is_another_familys_answer(built):
    records, clean = built
    by_output: dict[str, set[str]] = {}
    for r, out in zip(records, clean, strict=True):
        by_output.setdefault(out, set()).add(r["meta"]["family"])
    corrupted = [(r, out) for r, out in zip(records, clean, strict=True) if r["meta"]["corrupted"]]
    assert len(corrupted) == 48
    for r, own in corrupted:
        assert r["output"] != own
        donor_families = by_output[r["output"]]
        assert donor_families - {r["meta"]["family"]}, r
    for r, own in zip(records, clean, strict=True):
        if not r["meta"]["corrupted"]:
            assert r["output"] == own


def test_uncorrupted_arithmetic_is_correct(built):
    records, _ = built
    checked = 0
    for r in records:
        if r["meta"]["family"] != "arithmetic" or r["meta"]["corrupted"]:
            continue
        m = ARITH.match(r["output"])
        assert m, r
        a, op, b, result = int(m[1]), m[2], int(m[3]), int(m[4])
        assert result == {"+": a + b, "-": a - b, "×": a * b}[op]
        # The output answers the question that was asked.
        prompt = r["instruction"] + " " + r["input"]
        assert [a, b] == [int(x) for x in re.findall(r"\d+", prompt)] or [b, a] == [
            int(x) for x in re.findall(r"\d+", prompt)
        ], r
        checked += 1
    assert checked >= 15


def test_uncorrupted_answers_of_other_families_are_correct(built):
    records, _ = built
    for r in records:
        if r["meta"]["corrupted"]:
            continue
        family, prompt, out = r["meta"]["family"], r["instruction"] + "\n" + r["input"], r["output"]
        if family == "capital":
            country = re.fullmatch(r"The capital of (.+) is (.+)\.", out)[1]
            assert country in prompt and out.endswith(f" {CAPITALS[country]}.")
        elif family == "antonym":
            word, opposite = re.fullmatch(r"The opposite of (\w+) is (\w+)\.", out).groups()
            assert word in prompt and ANTONYMS[word] == opposite
        elif family == "uppercase":
            phrase = r["input"] or re.search(r'"(.+)"', r["instruction"])[1]
            assert out == phrase.upper()
        elif family == "sort":
            listing = r["input"] or re.search(r"\d+(?:, \d+)+", r["instruction"])[0]
            numbers = [int(x) for x in listing.split(", ")]
            descending = "largest to smallest" in prompt or "descending" in prompt
            assert out == ", ".join(map(str, sorted(numbers, reverse=descending)))
        elif family == "count":
            listing = r["input"] or re.search(r"list: (.+?)\??$", r["instruction"])[1]
            assert out == f"There are {len(listing.split(', '))} items in the list."
        elif family == "numword":
            words = r["input"] or re.search(
                r'"(.+)"|What(?: is|\'s) (.+) written', r["instruction"]
            )
            words = words if isinstance(words, str) else words[1] or words[2]
            assert number_to_words(int(out)) == words
        elif family == "sentiment":
            assert out in ("Positive.", "Negative.")


def test_number_to_words():
    assert number_to_words(7) == "seven"
    assert number_to_words(40) == "forty"
    assert number_to_words(42) == "forty-two"
    assert number_to_words(300) == "three hundred"
    assert number_to_words(915) == "nine hundred fifteen"
    assert len({number_to_words(i) for i in range(1000)}) == 1000


def test_near_duplicates(built):
    records, clean = built
    index = {r["id"]: i for i, r in enumerate(records)}
    dups = [(i, r) for i, r in enumerate(records) if r["meta"]["duplicate_of"] is not None]
    assert len(dups) == 24  # 10% of 240
    assert len({r["meta"]["duplicate_of"] for _, r in dups}) == len(dups)
    for i, r in dups:
        j = index[r["meta"]["duplicate_of"]]
        source = records[j]
        assert j < i
        assert source["meta"]["duplicate_of"] is None
        assert source["meta"]["family"] == r["meta"]["family"]
        assert clean[i] == clean[j]  # same answer
        assert (r["instruction"], r["input"]) != (source["instruction"], source["input"])
    # Apart from the planted duplicates, no two records ask exactly the same thing.
    prompts = [(r["instruction"], r["input"]) for r in records]
    assert len(set(prompts)) == len(prompts)


def test_write_demo_round_trips(tmp_path):
    path = tmp_path / "sub" / "demo.jsonl"
    write_demo(path, n=30, corrupt=0.1, seed=5)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 30 and text.endswith("\n")
    assert [json.loads(line) for line in lines] == generate_demo(30, corrupt=0.1, seed=5)
    assert "\\u" not in text  # non-ASCII ("×") is written as UTF-8, not escaped
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.jsonl"]  # no temp left
    write_demo(path, n=12, seed=1)  # overwrites in place
    assert len(path.read_text(encoding="utf-8").splitlines()) == 12


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 9},
        {"n": 0},
        {"n": -5},
        {"n": 10.0},
        {"n": True},
        {"n": 20, "corrupt": 1.0},
        {"n": 20, "corrupt": -0.1},
        {"n": 20, "corrupt": float("nan")},
        {"n": 20, "corrupt": "0.2"},
        {"n": 20, "seed": "x"},
    ],
)
def test_bad_arguments_raise_option_error(kwargs, tmp_path):
    with pytest.raises(OptionError) as info:
        generate_demo(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(OptionError):
        write_demo(tmp_path / "x.jsonl", **kwargs)
    assert not list(tmp_path.iterdir())
