"""Proxy tasks and behavioural metrics: every generated answer checked by working the
question out again from its text, the same items for the same seed, and the scoring
of replies. Running them through lm-eval is in test_plumbing.py."""

from __future__ import annotations

import datetime
import json
import re

import pytest

from tuner.evaluate import proxy
from tuner.evaluate.behaviour import agreement, robustness_drop

ITEMS = 200


def docs(name: str, seed: int = 1234) -> list[dict]:
    return proxy.dataset(name, items=ITEMS, seed=seed)["test"].to_list()


def worked_out(question: str) -> str:
    """The answer to a proxy question, from its text alone."""
    if match := re.match(r"What is (-?\d+) ([+\-×]) (-?\d+)\?", question):
        a, op, b = int(match[1]), match[2], int(match[3])
        return str({"+": a + b, "-": a - b, "×": a * b}[op])
    if match := re.match(r"What comes next in the sequence (.*), …\?", question):
        terms = match[1].split(", ")
        if all(re.fullmatch(r"-?\d+", t) for t in terms):
            numbers = [int(t) for t in terms]
            if numbers[1] - numbers[0] == numbers[2] - numbers[1]:
                return str(numbers[-1] + numbers[1] - numbers[0])
            return str(numbers[-1] * numbers[1] // numbers[0])
        period = next(p for p in range(1, len(terms)) if terms[p:] == terms[:-p])
        return terms[len(terms) - period]
    if match := re.match(r"Repeat these words exactly, in the same order: (.*)\. End", question):
        return match[1]
    if match := re.match(r'Spell the word "(\w+)" backwards', question):
        return match[1][::-1]
    if match := re.match(r"Write these words in reverse order: (.*)\. End", question):
        return " ".join(match[1].split()[::-1])
    if match := re.match(r"What date is (\d+) days after (\S+)\?", question):
        start = datetime.date.fromisoformat(match[2])
        return (start + datetime.timedelta(days=int(match[1]))).isoformat()
    if match := re.match(r"Today is (\w+)\. What day of the week is it in (\d+) days", question):
        start = proxy.WEEKDAYS.index(match[1])
        return proxy.WEEKDAYS[(start + int(match[2])) % 7]
    if match := re.match(r"How many (\w+) are there in ([\d.]+) (\w+)\?", question):
        factor = next(f for big, small, f in proxy.UNITS if (small, big) == (match[1], match[3]))
        return f"{float(match[2]) * factor:g}"
    raise AssertionError(f"no worked answer for {question!r}")


@pytest.mark.parametrize("name", ["arithmetic", "sequences", "copy_reverse", "dates_units"])
def test_every_answer_is_the_questions_and_the_seed_fixes_the_items(name):
    items = docs(name)
    assert len(items) == ITEMS
    for item in items:
        assert worked_out(item["question"]) == item["answer"], item
        assert item["question"].endswith(proxy.ANSWER_LINE)
    assert docs(name) == items and docs(name, seed=7) != items
    kinds = {item["kind"] for item in items}
    assert len(kinds) == 3 if name != "arithmetic" else kinds == {"arithmetic"}


def test_additions_carry_and_noisy_items_keep_their_numbers_and_answers():
    clean, noisy = docs("arithmetic"), docs("noisy")
    for item in clean:
        if "+" in item["question"]:
            a, b = (int(n) for n in re.findall(r"\d+", item["question"])[:2])
            assert any(
                int(x) + int(y) >= 10 for x, y in zip(str(a)[::-1], str(b)[::-1], strict=False)
            )
    assert [n["answer"] for n in noisy] == [c["answer"] for c in clean]
    numbers = [re.findall(r"\d+|[+\-×]", item["question"]) for item in clean]
    assert [re.findall(r"\d+|[+\-×]", item["question"]) for item in noisy] == numbers
    changed = sum(n["question"] != c["question"] for n, c in zip(noisy, clean, strict=True))
    assert changed > ITEMS * 0.8


def test_paraphrases_of_an_item_share_its_answer_and_group():
    items = docs("paraphrased")
    assert len(items) == 3 * ITEMS
    for first, second, swapped in zip(items[::3], items[1::3], items[2::3], strict=True):
        assert first["group"] == second["group"] == swapped["group"]
        assert first["answer"] == second["answer"] == swapped["answer"]
        a, op, b = re.match(r"What is (\d+) ([+×]) (\d+)", first["question"]).groups()
        assert swapped["question"].startswith(f"What is {b} {op} {a}?")


def test_answers_are_read_after_the_last_answer_line():
    assert proxy.extracted_answer("Let me think.\nAnswer: 1,234.\n") == "1234"
    assert proxy.extracted_answer("answer: 3\nActually... Answer: **Wednesday**") == "wednesday"
    assert proxy.extracted_answer("The result is 12.") is None
    assert proxy.is_correct({"answer": "elppa"}, 'Answer: "ELPPA"')
    assert not proxy.is_correct({"answer": "12"}, "Answer: 13")


@pytest.mark.parametrize(
    ("form", "reply", "verdict"),
    [
        ("json", '{"answer": 42}', (True, True)),
        ("json", '```json\n{"answer": 41}\n```', (True, False)),
        ("json", 'Sure! {"answer": 42}', (False, False)),
        ("json", '{"answer": 42, "why": "sum"}', (False, False)),
        ("number", " 42\n", (True, True)),
        ("number", "42.", (False, False)),
        ("prefix", "RESULT: 42\nbecause", (True, True)),
        ("prefix", "Result: 42", (False, False)),
    ],
)
def test_a_stated_format_is_kept_or_not(form, reply, verdict):
    assert proxy.format_verdict({"format": form, "answer": "42"}, reply) == verdict


def test_formatted_items_name_their_format_in_the_question():
    for item in docs("formatted"):
        assert proxy.FORMATS[item["format"]] in item["question"]
        json.dumps(item)


def test_agreement_counts_an_item_only_when_every_asking_answered_alike():
    answers = [
        {"doc": {"group": "1"}, "text": "Answer: 7"},
        {"doc": {"group": "1"}, "text": "so answer: 7."},
        {"doc": {"group": "2"}, "text": "Answer: 7"},
        {"doc": {"group": "2"}, "text": "Answer: 8"},
        {"doc": {"group": "3"}, "text": "no idea"},
        {"doc": {"group": "3"}, "text": "no idea"},
    ]
    assert agreement(answers) == {"1": 1.0, "2": 0.0, "3": 0.0}


def test_robustness_drop_pairs_the_same_items():
    clean = {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.0}
    noisy = {"0": 0.0, "1": 1.0, "2": 1.0, "4": 1.0}
    assert robustness_drop(clean, noisy) == {"0": 1.0, "1": 0.0, "2": -1.0}
