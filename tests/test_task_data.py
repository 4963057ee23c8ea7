"""Every task's data path, offline: Axolotl's own preprocessing reads the task's local
JSONL with the task's real dataset settings on the embedded model's tokenizer, keeps
every example, and trains on the answers only, each ending on the end-of-turn token."""

from __future__ import annotations

import json
import subprocess

import pytest
from datasets import load_from_disk

from tuner.models import END_OF_TURN, ensure_embedded_model
from tuner.project import ROOT
from tuner.recipes import compose, task_names
from tuner.train import axolotl_env, write_config

pytestmark = pytest.mark.slow

# Where each local dataset keeps the text the model must learn to write.
ANSWER = {
    "instruction": lambda row: row["conversations"][-1]["value"],
    "chat": lambda row: row["messages"][-1]["content"],
    "code": lambda row: row["solution"],
    "math": lambda row: row["response"],
    "medical": lambda row: row["output"],
    "legal": lambda row: row["answer"],
    "tool-use": lambda row: row["conversations"][-1]["value"],
    "summarization": lambda row: row["highlights"],
    "creative": lambda row: row["story"],
}


def preprocess(task: str, *overrides: str):
    """`axolotl preprocess` on the composed cpu config; the prepared dataset it saved."""
    ensure_embedded_model()
    recipe = compose(task, "cpu", list(overrides))
    config = write_config(recipe)
    done = subprocess.run(
        ["axolotl", "preprocess", str(config)],
        cwd=ROOT,
        env=axolotl_env(recipe),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [prepared] = [p for p in (recipe.run_dir / "prepared").iterdir() if p.is_dir()]
    return recipe, load_from_disk(prepared)


@pytest.mark.parametrize("task", sorted(ANSWER))
def test_sft_task_data_keeps_every_example_and_trains_on_the_answer(task, runs):
    from transformers import AutoTokenizer

    recipe, dataset = preprocess(task)
    source = [json.loads(line) for line in (ROOT / recipe.meta["local_data"]).open()]
    assert len(dataset) == len(source), "examples dropped (too long for sequence_len?)"

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        row = dataset[index]
        trained = [
            t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
        ]
        prompt = [
            t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100
        ]
        trained_text = tokenizer.decode(trained)
        assert ANSWER[task](source[index]).strip() in trained_text
        assert trained_text.rstrip().endswith(END_OF_TURN)
        assert "<|im_start|>user" in tokenizer.decode(prompt)


def test_preference_data_keeps_every_pair_in_the_chat_template(runs):
    # The tokenizer is the embedded model's either way; no SFT run needed to read the data.
    recipe, dataset = preprocess("dpo", f"base_model={ensure_embedded_model()}")
    source = [json.loads(line) for line in (ROOT / recipe.meta["local_data"]).open()]
    assert len(dataset) == len(source)
    for row, original in zip(dataset, source, strict=True):
        assert original["prompt"] in row["prompt"] and "<|im_start|>user" in row["prompt"]
        assert original["chosen"][-1]["content"] in row["chosen"]
        assert original["rejected"][-1]["content"] in row["rejected"]


def test_every_task_is_covered():
    assert sorted([*ANSWER, "dpo"]) == task_names()
