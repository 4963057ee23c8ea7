"""Proxy tasks: small problems generated from a seed, each with one exact answer, so that
a model's skill costs nothing to measure and every run sees the same items. lm-eval
builds each task's documents by calling these functions (`custom_dataset:` in
evaluate/tasks/tuner_proxy_*.yaml, with the task's `metadata`: `items`, `seed`).

- arithmetic: addition, subtraction and multiplication of multi-digit numbers, every
  addition with at least one carry;
- sequences: the next term of an arithmetic or geometric progression, or of a
  repeating pattern of letters;
- copy and reverse: a list of words repeated, a word spelt backwards, a list in
  reverse order;
- dates and units: a date some days later, a weekday, a quantity in other units.

The behavioural variants reuse the arithmetic items:
- noisy: each question with typos, odd casing and spacing in its words (never in its
  numbers), same document ids, so accuracy can be paired with the clean items';
- paraphrased: each item asked three ways (the operands swapped in one), the answers
  of a group compared (see behaviour.py);
- formatted: each item with an output format to keep (a JSON object, a bare number,
  the answer in words after a fixed prefix).

Each document: `question` (the prompt's text), `answer` (the exact answer), `kind`,
and where it applies `group`, `format`.
"""

from __future__ import annotations

import datetime
import json
import random
import re
from collections.abc import Callable
from typing import Any

ANSWER_LINE = 'End with a line of the form "Answer: X".'
WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "lamp",
    "tiger",
    "paper",
    "honey",
    "window",
    "garden",
    "violin",
    "copper",
    "forest",
    "candle",
    "rocket",
    "pepper",
    "marble",
    "silver",
    "orange",
    "button",
    "ladder",
    "island",
    "planet",
    "meadow",
)
UNITS = (
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("kilometres", "metres", 1000),
    ("kilograms", "grams", 1000),
    ("litres", "millilitres", 1000),
    ("days", "hours", 24),
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


Document = dict[str, Any]


def with_carry(rng: random.Random, digits: int) -> tuple[int, int]:
    """Two numbers of `digits` digits whose sum carries at least once."""
    while True:
        low, high = 10 ** (digits - 1), 10**digits - 1
        a, b = rng.randint(low, high), rng.randint(low, high)
        if any(int(x) + int(y) >= 10 for x, y in zip(str(a)[::-1], str(b)[::-1], strict=False)):
            return a, b


def arithmetic_item(rng: random.Random) -> tuple[int, str, int, int]:
    """(a, operator, b, result)."""
    operator = rng.choice("+-*")
    if operator == "*":
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        return a, operator, b, a * b
    a, b = with_carry(rng, rng.randint(3, 5))
    if operator == "-":
        a, b = max(a, b), min(a, b)
        return a, operator, b, a - b
    return a, operator, b, a + b


SYMBOLS = {"+": "+", "-": "-", "*": "×"}


def arithmetic(rng: random.Random) -> Document:
    a, operator, b, result = arithmetic_item(rng)
    question = f"What is {a} {SYMBOLS[operator]} {b}? {ANSWER_LINE}"
    return {"question": question, "answer": str(result), "kind": "arithmetic"}


def sequence(rng: random.Random) -> Document:
    kind = rng.choice(("arithmetic progression", "geometric progression", "letter pattern"))
    if kind == "arithmetic progression":
        start, step = rng.randint(-20, 50), rng.choice([n for n in range(-9, 13) if n])
        terms = [start + step * i for i in range(6)]
        shown, answer = terms[:5], str(terms[5])
    elif kind == "geometric progression":
        start, ratio = rng.randint(1, 9), rng.choice((2, 3))
        terms = [start * ratio**i for i in range(6)]
        shown, answer = terms[:5], str(terms[5])
    else:
        period = rng.randint(2, 4)
        unit = rng.sample("ABCDEFGHJKLMNPQRSTUVWXYZ", period)
        length = rng.randint(2 * period + 1, 3 * period + 2)
        terms = [unit[i % period] for i in range(length + 1)]
        shown, answer = terms[:length], terms[length]
    listed = ", ".join(str(t) for t in shown)
    question = f"What comes next in the sequence {listed}, …? {ANSWER_LINE}"
    return {"question": question, "answer": answer, "kind": kind}


def copy_reverse(rng: random.Random) -> Document:
    kind = rng.choice(("copy", "reverse word", "reverse list"))
    words = rng.sample(WORDS, rng.randint(3, 6))
    if kind == "copy":
        listed = " ".join(words)
        question = f"Repeat these words exactly, in the same order: {listed}. {ANSWER_LINE}"
        answer = listed
    elif kind == "reverse word":
        question = f'Spell the word "{words[0]}" backwards. {ANSWER_LINE}'
        answer = words[0][::-1]
    else:
        question = f"Write these words in reverse order: {' '.join(words)}. {ANSWER_LINE}"
        answer = " ".join(reversed(words))
    return {"question": question, "answer": answer, "kind": kind}


def dates_units(rng: random.Random) -> Document:
    kind = rng.choice(("date", "weekday", "units"))
    if kind == "date":
        start = datetime.date(2024, 1, 1) + datetime.timedelta(days=rng.randint(0, 700))
        days = rng.randint(3, 60)
        later = start + datetime.timedelta(days=days)
        question = (
            f"What date is {days} days after {start.isoformat()}? Give it as YYYY-MM-DD. "
            f"{ANSWER_LINE}"
        )
        answer = later.isoformat()
    elif kind == "weekday":
        first, days = rng.randrange(7), rng.randint(2, 40)
        question = f"Today is {WEEKDAYS[first]}. What day of the week is it in {days} days? "
        question += ANSWER_LINE
        answer = WEEKDAYS[(first + days) % 7]
    else:
        big, small, factor = rng.choice(UNITS)
        amount = rng.randint(2, 40) + rng.choice((0, 0.5))
        value = amount * factor
        shown = f"{amount:g}"
        question = f"How many {small} are there in {shown} {big}? {ANSWER_LINE}"
        answer = f"{value:g}"
    return {"question": question, "answer": answer, "kind": kind}


def noisy(text: str, rng: random.Random) -> str:
    """`text` with typos (a swapped or dropped letter), random casing and doubled spaces
    in its words; numbers, symbols and the answer line's "Answer: X" kept as they are."""
    body, _, tail = text.partition(ANSWER_LINE)
    words = []
    for word in body.split(" "):
        if word.isalpha() and len(word) > 3 and rng.random() < 0.3:
            i = rng.randrange(len(word) - 1)
            word = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif word.isalpha() and len(word) > 4 and rng.random() < 0.15:
            i = rng.randrange(1, len(word) - 1)
            word = word[:i] + word[i + 1 :]
        if word.isalpha() and rng.random() < 0.25:
            word = word.upper() if rng.random() < 0.5 else word.lower()
        words.append(word)
    spaced = "".join(w + (" " if rng.random() < 0.75 else "  ") for w in words).rstrip(" ")
    return f"{spaced} {ANSWER_LINE}{tail}".replace("  " + ANSWER_LINE, " " + ANSWER_LINE)


PARAPHRASES = (
    "What is {a} {op} {b}? " + ANSWER_LINE,
    "Compute {a} {op} {b} and give the result. " + ANSWER_LINE,
    "What is {b} {op} {a}? " + ANSWER_LINE,
)


def paraphrased(rng: random.Random) -> list[Document]:
    """One item asked three ways: two wordings, and the operands swapped (so only for
    the commutative operators)."""
    while True:
        a, operator, b, result = arithmetic_item(rng)
        if operator != "-":
            break
    group = rng.getrandbits(32)
    return [
        {
            "question": template.format(a=a, op=SYMBOLS[operator], b=b),
            "answer": str(result),
            "kind": "paraphrase",
            "group": str(group),
        }
        for template in PARAPHRASES
    ]


FORMATS = {
    "json": 'Reply with only a JSON object of the form {"answer": N} and nothing else.',
    "number": "Reply with the number alone: no words, no punctuation.",
    "prefix": 'Reply with one line that starts with "RESULT:" followed by the number.',
}


def formatted(rng: random.Random) -> Document:
    a, operator, b, result = arithmetic_item(rng)
    name = rng.choice(sorted(FORMATS))
    question = f"What is {a} {SYMBOLS[operator]} {b}? {FORMATS[name]}"
    return {"question": question, "answer": str(result), "kind": "format", "format": name}


def documents(make: Callable[[random.Random], Document], items: int, seed: int) -> list[Document]:
    rng = random.Random(seed)
    return [make(rng) for _ in range(items)]


def as_dataset(docs: list[Document]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def dataset(name: str, items: int = 50, seed: int = 1234, **_: Any) -> Any:
    """The documents of proxy task `name` as lm-eval's custom_dataset returns them."""
    if name == "noisy":
        rng = random.Random(seed + 1)
        docs = [
            {**doc, "question": noisy(doc["question"], rng), "kind": "noisy arithmetic"}
            for doc in documents(arithmetic, items, seed)
        ]
    elif name == "paraphrased":
        rng = random.Random(seed)
        docs = [doc for _ in range(items) for doc in paraphrased(rng)]
    else:
        docs = documents(GENERATORS[name], items, seed)
    return as_dataset(docs)


GENERATORS: dict[str, Callable[[random.Random], Document]] = {
    "arithmetic": arithmetic,
    "sequences": sequence,
    "copy_reverse": copy_reverse,
    "dates_units": dates_units,
    "formatted": formatted,
}


ANSWER = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)


def normalized(text: str) -> str:
    """Case, surrounding quotes and punctuation, runs of spaces and thousands separators
    do not count."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return " ".join(text.strip().strip("\"'`*.").split()).lower()


def extracted_answer(reply: str) -> str | None:
    """What follows the last "Answer:" of a reply, normalized; None without one."""
    found = ANSWER.findall(reply)
    return normalized(found[-1].splitlines()[0]) if found else None


def is_correct(doc: Document, reply: str) -> bool:
    return extracted_answer(reply) == normalized(doc["answer"])


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def format_verdict(doc: Document, reply: str) -> tuple[bool, bool]:
    """(was the stated format kept, is the answer in it right)."""
    text = reply.strip()
    if doc["format"] == "json":
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError:
            return False, False
        if not isinstance(value, dict) or set(value) != {"answer"}:
            return False, False
        return True, str(value["answer"]).strip() == doc["answer"]
    if doc["format"] == "number":
        kept = NUMBER.fullmatch(text) is not None
        return kept, kept and text == doc["answer"]
    first = text.splitlines()[0] if text else ""
    if not first.startswith("RESULT:"):
        return False, False
    return True, first.removeprefix("RESULT:").strip() == doc["answer"]
