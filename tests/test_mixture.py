"""Weighted mixtures of record files through `data={a.jsonl: w, b.jsonl: w}`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuner.errors import TunerError
from tuner.mixture import shares
from tuner.recipes import compose
from tuner.records import Conversation, read_records, write_records


def records(tag: str, n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"{tag} question {i}"},
                {"role": "assistant", "content": f"{tag} answer {i}"},
            ],
            "meta": {"source": tag},
        }
        for i in range(n)
    ]


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    synthetic, human = tmp_path / "synthetic.jsonl", tmp_path / "human.jsonl"
    write_records(synthetic, records("synthetic", 30))
    write_records(human, records("human", 10))
    return synthetic, human


def test_shares_follow_the_weights_and_sum_to_the_size():
    assert shares([0.7, 0.3], 10) == [7, 3]
    assert shares([1, 1, 1], 10) == [4, 3, 3]
    assert sum(shares([0.2, 0.5, 0.3], 7)) == 7


def test_a_mixture_is_written_in_the_run_folder_with_the_given_proportions(runs, sources):
    synthetic, human = sources
    recipe = compose(
        "instruction", "cpu", [f"data={{{synthetic}: 0.5, {human}: 0.5}}", "data_size=40"]
    )
    [entry] = recipe.config["datasets"]
    mixture = runs / "instruction-cpu" / "mixture.jsonl"
    assert entry["path"] == str(mixture) and entry["type"] == "chat_template"
    mixed = read_records(mixture, Conversation)
    assert Counter(r.meta["source"] for r in mixed) == {"synthetic": 20, "human": 20}
    # The 10 human records are each repeated twice to reach their share of 20.
    assert set(
        Counter(r.messages[0].content for r in mixed if r.meta["source"] == "human").values()
    ) == {2}
    summary = json.loads(mixture.with_suffix(".json").read_text())
    assert [s["taken"] for s in summary["sources"]] == [20, 20]
    # The same seed gives the same file.
    before = mixture.read_bytes()
    compose("instruction", "cpu", [f"data={{{synthetic}: 0.5, {human}: 0.5}}", "data_size=40"])
    assert mixture.read_bytes() == before
    assert recipe.overrides["data_size"] == 40


def test_the_default_size_is_all_records_together(runs, sources):
    synthetic, human = sources
    compose("instruction", "cpu", [f"data={{{synthetic}: 3, {human}: 1}}"])
    mixed = read_records(runs / "instruction-cpu" / "mixture.jsonl", Conversation)
    assert Counter(r.meta["source"] for r in mixed) == {"synthetic": 30, "human": 10}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data={a.jsonl: 0}"], "positive weights"),
        (["data_size=10"], "data_size= sizes a mixture"),
    ],
)
def test_bad_mixtures_say_what_to_write(runs, overrides, message):
    with pytest.raises(TunerError, match=message):
        compose("instruction", "cpu", overrides)
