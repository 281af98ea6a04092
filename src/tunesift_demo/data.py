"""Synthetic instruction-tuning data for ``make demo``, with known-bad records planted in it.

(Over 500 lines on purpose: most of it is word lists and prompt templates of the eight task
families, kept together with the generator that uses them.)

:func:`generate_demo` builds ``n`` records in Alpaca schema::

    {"id": "demo-0001", "instruction": ..., "input": ..., "output": ...,
     "meta": {"family": ..., "corrupted": bool, "duplicate_of": id-or-None}}

The selector reads only ``id``, ``instruction``, ``input`` and ``output``; ``meta`` is ground
truth for the demo, which reports how many corrupted records and near-duplicates a selection kept.

Task families
-------------
Eight families of short tasks that a 135M instruct model can partly do. Each has 4-5 prompt
templates (some put everything in ``instruction``, some use ``input``), and every answer is
computed, so it is correct, and under 40 words:

``arithmetic``  add, subtract or multiply small numbers: "What is 17 + 25?" -> "17 + 25 = 42."
``capital``     capital of one of 40 countries -> "The capital of Japan is Tokyo."
``uppercase``   rewrite a 2-5 word phrase in capital letters -> "THE RED KITE".
``antonym``     opposite of a common word -> "The opposite of hot is cold."
``count``       number of items in a 3-8 item list -> "There are 5 items in the list."
``sentiment``   a one-sentence review written from positive or negative parts -> "Positive."
``sort``        3-5 distinct numbers, ascending or descending as asked -> "5, 9, 12".
``numword``     a number from 1 to 999 written in English words -> its digits, "342".

Originals are drawn with distinct underlying items (no two records ask for the capital of the
same country, say), so the only near-duplicates are the planted ones. That holds up to about
n = 350; beyond it the capital and antonym families run out of items and reuse them with other
templates (and past about n = 1,100 repeat whole prompts), unmarked.

Near-duplicates
---------------
``round(0.1 * n)`` records are light paraphrases of another (original) record: the same input
and answer, with the instruction reworded by one or two edits (a "Please", a synonym, a
contraction, dropped final punctuation). ``meta.duplicate_of`` names the original, which
always comes earlier in the file.

Corruption protocol
-------------------
After the clean set is built and ids are assigned, exactly ``round(corrupt * n)`` records,
chosen uniformly at random, get the clean output of a *different* record from a *different*
family (for example, a capital-city question answered with "5, 9, 12"), so the mismatch is
unambiguous; ``meta.corrupted`` is ``True`` for them. Donors are taken from the clean outputs,
so a corrupted output is always some real answer to the wrong question. Duplicates and their
originals are corrupted independently.

Everything is drawn from one ``random.Random(seed)``: the same arguments give the same records.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

from tunesift.errors import OptionError

__all__ = ["FAMILIES", "generate_demo", "write_demo"]

DUPLICATE_SHARE = 0.1

# A generated task: (instruction, input, output, key). ``key`` names the underlying item (the
# country, the numbers) so that originals can avoid asking the same thing twice.
_Task = tuple[str, str, str, object]

# --------------------------------------------------------------------------------------------
# Embedded tables
# --------------------------------------------------------------------------------------------

CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Nigeria": "Abuja",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Mexico": "Mexico City",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "New Zealand": "Wellington",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Greece": "Athens",
    "Ireland": "Dublin",
    "Netherlands": "Amsterdam",
    "Belgium": "Brussels",
    "Hungary": "Budapest",
    "Czech Republic": "Prague",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "South Korea": "Seoul",
    "Indonesia": "Jakarta",
    "Colombia": "Bogota",
    "Cuba": "Havana",
}

ANTONYMS: dict[str, str] = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "up": "down",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "hard": "soft",
    "high": "low",
    "young": "old",
    "rich": "poor",
    "strong": "weak",
    "wet": "dry",
    "loud": "quiet",
    "thick": "thin",
    "clean": "dirty",
    "heavy": "light",
    "long": "short",
    "push": "pull",
    "win": "lose",
    "begin": "end",
    "buy": "sell",
    "true": "false",
    "inside": "outside",
    "above": "below",
    "first": "last",
    "easy": "difficult",
    "safe": "dangerous",
    "cheap": "expensive",
    "wide": "narrow",
    "give": "take",
    "love": "hate",
    "day": "night",
    "arrive": "leave",
    "remember": "forget",
    "accept": "refuse",
    "ancient": "modern",
    "asleep": "awake",
    "brave": "cowardly",
    "near": "far",
    "friend": "enemy",
    "question": "answer",
    "north": "south",
    "east": "west",
    "always": "never",
    "increase": "decrease",
}

_WORDS = (
    "the red kite flies high over a quiet green hill near old stone houses and tall trees "
    "while small dogs run after bright yellow balls in the warm summer sun every morning"
).split()

_ITEMS = (
    "apple pear plum banana cherry grape lemon mango peach melon orange kiwi "
    "cat dog horse cow sheep goat rabbit mouse tiger lion zebra bear "
    "chair table lamp sofa desk shelf bed mirror clock rug"
).split()

_PRODUCTS = ["phone", "blender", "jacket", "book", "laptop", "backpack", "kettle", "movie"]
_ASPECTS = ["quality", "design", "battery", "price", "service", "packaging", "sound"]
_POS_OPENERS = ["I loved this", "I really like this", "What a great", "Very happy with this"]
_NEG_OPENERS = [
    "I hated this",
    "I really dislike this",
    "What a terrible",
    "Very unhappy with this",
]
_POS_ADJS = ["excellent", "wonderful", "fantastic", "great", "superb"]
_NEG_ADJS = ["awful", "terrible", "horrible", "poor", "disappointing"]
_POS_ENDINGS = ["I would buy it again.", "Highly recommended!", "Worth every penny."]
_NEG_ENDINGS = ["I want my money back.", "Do not buy it.", "A complete waste of money."]

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_to_words(value: int) -> str:
    """English words for 0 <= value <= 999, US style: 342 -> "three hundred forty-two"."""
    if not 0 <= value <= 999:
        raise ValueError(f"number_to_words: {value} is outside 0..999")
    if value < 20:
        return _ONES[value]
    if value < 100:
        tens, ones = divmod(value, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(value, 100)
    words = f"{_ONES[hundreds]} hundred"
    return words + (f" {number_to_words(rest)}" if rest else "")


# --------------------------------------------------------------------------------------------
# Family generators: each takes the Random and returns one task.
# --------------------------------------------------------------------------------------------


def _arithmetic(rng: random.Random) -> _Task:
    op = rng.choice(["+", "-", "×"])
    if op == "+":
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        result, word, verb = a + b, "plus", f"Add {a} and {b}."
    elif op == "-":
        a = rng.randint(10, 90)
        b = rng.randint(1, a - 1)
        result, word, verb = a - b, "minus", f"Subtract {b} from {a}."
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        result, word, verb = a * b, "times", f"Multiply {a} by {b}."
    expr = f"{a} {op} {b}"
    instruction, inp = rng.choice(
        [
            (f"What is {expr}?", ""),
            (f"What is {a} {word} {b}?", ""),
            (f"Calculate {expr}.", ""),
            (verb, ""),
            ("Solve this arithmetic problem.", expr),
        ]
    )
    return instruction, inp, f"{expr} = {result}.", (a, op, b)


def _capital(rng: random.Random) -> _Task:
    country = rng.choice(sorted(CAPITALS))
    instruction, inp = rng.choice(
        [
            (f"What is the capital of {country}?", ""),
            (f"Name the capital city of {country}.", ""),
            (f"Which city is the capital of {country}?", ""),
            ("What is the capital of this country?", country),
            ("Give the capital city of the country below.", country),
        ]
    )
    return instruction, inp, f"The capital of {country} is {CAPITALS[country]}.", country


def _uppercase(rng: random.Random) -> _Task:
    phrase = " ".join(rng.sample(_WORDS, rng.randint(2, 5)))
    instruction, inp = rng.choice(
        [
            ("Convert the following text to uppercase.", phrase),
            ("Rewrite this phrase in all capital letters.", phrase),
            ("Make every letter in this text uppercase.", phrase),
            (f'Write "{phrase}" in uppercase letters.', ""),
        ]
    )
    return instruction, inp, phrase.upper(), phrase


def _antonym(rng: random.Random) -> _Task:
    word = rng.choice(sorted(ANTONYMS))
    instruction, inp = rng.choice(
        [
            (f'What is the opposite of "{word}"?', ""),
            (f'Give an antonym for the word "{word}".', ""),
            ("Write the opposite of this word.", word),
            ("What is the antonym of the following word?", word),
        ]
    )
    return instruction, inp, f"The opposite of {word} is {ANTONYMS[word]}.", word


def _count(rng: random.Random) -> _Task:
    items = rng.sample(_ITEMS, rng.randint(3, 8))
    listing = ", ".join(items)
    instruction, inp = rng.choice(
        [
            ("How many items are in the following list?", listing),
            ("Count the items in this list.", listing),
            ("How many words are in this comma-separated list?", listing),
            (f"How many items are in this list: {listing}?", ""),
        ]
    )
    return instruction, inp, f"There are {len(items)} items in the list.", tuple(sorted(items))


def _sentiment(rng: random.Random) -> _Task:
    positive = rng.random() < 0.5
    opener = rng.choice(_POS_OPENERS if positive else _NEG_OPENERS)
    adj = rng.choice(_POS_ADJS if positive else _NEG_ADJS)
    ending = rng.choice(_POS_ENDINGS if positive else _NEG_ENDINGS)
    product, aspect = rng.choice(_PRODUCTS), rng.choice(_ASPECTS)
    review = f"{opener} {product}. The {aspect} is {adj}. {ending}"
    instruction, inp = rng.choice(
        [
            ("Classify the sentiment of this review as positive or negative.", review),
            ("Is the following review positive or negative?", review),
            ("What is the sentiment of this product review?", review),
            (f"Review: {review}\nIs this review positive or negative?", ""),
        ]
    )
    return instruction, inp, "Positive." if positive else "Negative.", review


def _sort(rng: random.Random) -> _Task:
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    listing = ", ".join(map(str, numbers))
    descending = rng.random() < 0.25
    if descending:
        instruction, inp = rng.choice(
            [
                ("Sort these numbers from largest to smallest.", listing),
                (f"Arrange {listing} in descending order.", ""),
            ]
        )
    else:
        instruction, inp = rng.choice(
            [
                ("Sort these numbers in ascending order.", listing),
                ("Sort the following numbers from smallest to largest.", listing),
                (f"Arrange {listing} in ascending order.", ""),
            ]
        )
    output = ", ".join(map(str, sorted(numbers, reverse=descending)))
    return instruction, inp, output, (tuple(sorted(numbers)), descending)


def _numword(rng: random.Random) -> _Task:
    value = rng.randint(1, 999)
    words = number_to_words(value)
    instruction, inp = rng.choice(
        [
            (f'Write the number "{words}" in digits.', ""),
            ("Convert this number word to digits.", words),
            (f"What is {words} written as a number?", ""),
            ("Write the following number using digits.", words),
        ]
    )
    return instruction, inp, str(value), value


FAMILIES: dict[str, Callable[[random.Random], _Task]] = {
    "arithmetic": _arithmetic,
    "capital": _capital,
    "uppercase": _uppercase,
    "antonym": _antonym,
    "count": _count,
    "sentiment": _sentiment,
    "sort": _sort,
    "numword": _numword,
}

# --------------------------------------------------------------------------------------------
# Paraphrases for near-duplicates
# --------------------------------------------------------------------------------------------

_SYNONYMS = [
    ("What is", "What's"),
    ("Calculate", "Compute"),
    ("Name the", "Tell me the"),
    ("Which city is", "What city is"),
    ("Give the", "Provide the"),
    ("Give an", "Provide an"),
    ("Convert", "Change"),
    ("Rewrite", "Write"),
    ("following", "given"),
    ("this", "the"),
    ("numbers", "values"),
    ("Sort", "Order"),
    ("Arrange", "Put"),
    ("Count", "Tally"),
    ("Classify", "Label"),
    ("Write", "Give"),
    ("Add", "Sum"),
    ("Subtract", "Take away"),
]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _paraphrase(instruction: str, rng: random.Random) -> str:
    """A light rewording of ``instruction`` that keeps its meaning; never equal to it."""
    question = instruction.endswith("?") or "\n" in instruction

    def please(text: str) -> str:
        if "please" in text.lower():
            return text
        if question:  # "Please what is ...?" is not English
            return "Please answer: " + text
        return "Please " + _lower_first(text)

    def synonym(text: str) -> str:
        options = [(old, new) for old, new in _SYNONYMS if old in text]
        if not options:
            return text
        old, new = rng.choice(options)
        return text.replace(old, new, 1)

    def punctuation(text: str) -> str:
        if text.endswith((".", "?")) and "\n" not in text:
            return text[:-1]
        return text

    def trailing_please(text: str) -> str:
        if text.endswith(".") and "\n" not in text and "please" not in text.lower():
            return text[:-1] + ", please."
        return text

    edits = [please, synonym, punctuation, trailing_please]
    rng.shuffle(edits)
    result = instruction
    wanted = rng.randint(1, 2)
    applied = 0
    for edit in edits:
        changed = edit(result)
        if changed != result:
            result, applied = changed, applied + 1
            if applied == wanted:
                break
    if result == instruction:  # every edit was a no-op: still guarantee a visible change
        result = "Kindly answer: " + instruction
    return result


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def _validate(n: object, corrupt: object, seed: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise OptionError(f"demo data: n must be an integer >= 10, got {n!r}")
    if (
        isinstance(corrupt, bool)
        or not isinstance(corrupt, (int, float))
        or not math.isfinite(corrupt)
        or not 0 <= corrupt < 1
    ):
        raise OptionError(f"demo data: corrupt must be a number in [0, 1), got {corrupt!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"demo data: seed must be an integer, got {seed!r}")


def _original(family: str, rng: random.Random, keys: set, texts: set) -> _Task:
    """One task of ``family`` with a fresh item if possible, else at least fresh wording."""
    make = FAMILIES[family]
    task = make(rng)
    for _ in range(60):  # fresh underlying item (country, numbers, ...)
        if (family, task[3]) not in keys and task[:2] not in texts:
            return task
        task = make(rng)
    for _ in range(60):  # the family ran out of items: settle for a new prompt
        if task[:2] not in texts:
            return task
        task = make(rng)
    return task


def _build(n: int, corrupt: float, seed: int) -> tuple[list[dict], list[str]]:
    """The demo records and, index for index, the clean output each had before corruption."""
    _validate(n, corrupt, seed)
    rng = random.Random(seed)
    names = list(FAMILIES)

    n_dup = round(DUPLICATE_SHARE * n)
    n_orig = n - n_dup
    # Families in shuffled rounds, so each appears n_orig / 8 times, give or take one.
    families: list[str] = []
    while len(families) < n_orig:
        batch = names[:]
        rng.shuffle(batch)
        families.extend(batch)
    families = families[:n_orig]

    keys: set = set()
    texts: set = set()
    rows: list[dict] = []
    for family in families:
        instruction, inp, output, key = _original(family, rng, keys, texts)
        keys.add((family, key))
        texts.add((instruction, inp))
        rows.append({"family": family, "instruction": instruction, "input": inp, "output": output})

    for source in rng.sample(rows, n_dup):
        instruction = _paraphrase(source["instruction"], rng)
        rows.append({**source, "instruction": instruction, "source": source})

    rng.shuffle(rows)
    # A duplicate always comes after its original: swap the pair where it does not.
    position = {id(row): i for i, row in enumerate(rows)}
    for i, row in enumerate(list(rows)):
        if "source" in row:
            j = position[id(row["source"])]
            if j > i:
                rows[i], rows[j] = rows[j], rows[i]
                position[id(rows[i])], position[id(rows[j])] = i, j

    width = max(4, len(str(n)))
    ids = {id(row): f"demo-{i + 1:0{width}d}" for i, row in enumerate(rows)}
    records = [
        {
            "id": ids[id(row)],
            "instruction": row["instruction"],
            "input": row["input"],
            "output": row["output"],
            "meta": {
                "family": row["family"],
                "corrupted": False,
                "duplicate_of": ids[id(row["source"])] if "source" in row else None,
            },
        }
        for row in rows
    ]
    clean = [record["output"] for record in records]

    for i in sorted(rng.sample(range(n), round(corrupt * n))):
        family = records[i]["meta"]["family"]
        donors = [
            j
            for j, other in enumerate(records)
            if other["meta"]["family"] != family and clean[j] != clean[i]
        ]
        records[i]["output"] = clean[rng.choice(donors)]
        records[i]["meta"]["corrupted"] = True
    return records, clean


def generate_demo(n: int = 240, *, corrupt: float = 0.2, seed: int = 0) -> list[dict]:
    """``n`` Alpaca-style demo records; ``round(corrupt * n)`` of them have a wrong response.

    See the module docstring for the families, near-duplicates and the corruption protocol.
    Raises :class:`~tunesift.errors.OptionError` unless ``n >= 10`` and ``0 <= corrupt < 1``.
    """
    return _build(n, corrupt, seed)[0]


def write_demo(
    path: str | os.PathLike[str], n: int = 240, *, corrupt: float = 0.2, seed: int = 0
) -> None:
    """Write :func:`generate_demo` records to ``path`` as UTF-8 JSONL, atomically.

    The file is written to a temporary file in the same folder (created if missing) and moved
    into place with :func:`os.replace`, so a reader never sees a half-written file.
    """
    records = generate_demo(n, corrupt=corrupt, seed=seed)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
