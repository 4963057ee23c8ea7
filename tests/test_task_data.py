"""Every task's data path, offline: Axolotl's own preprocessing reads the task's local
JSONL with the task's real dataset settings on the embedded model's tokenizer, keeps
every example, and trains on the answers only, each ending on the end-of-turn token."""

from __future__ import annotations

import json
import shutil

import pytest
from datasets import load_from_disk

from tuner.models import END_OF_TURN, ensure_embedded_model
from tuner.project import ROOT
from tuner.recipes import compose, task_names
from tuner.train import DEFAULT_ENV, OFFLINE_ENV, write_config

pytestmark = pytest.mark.slow

# Where each local dataset keeps the text the model must learn to write (every
# assistant turn of a conversation).
ANSWERS = {
    "instruction": lambda row: [row["conversations"][-1]["value"]],
    "chat": lambda row: [m["content"] for m in row["messages"] if m["role"] == "assistant"],
    "code": lambda row: [row["solution"]],
    "math": lambda row: [row["response"]],
    "medical": lambda row: [row["output"]],
    "legal": lambda row: [row["answer"]],
    "tool-use": lambda row: [row["conversations"][-1]["value"]],
    "summarization": lambda row: [row["highlights"]],
    "creative": lambda row: [row["story"]],
}


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory):
    """Axolotl offline, on the embedded model, writing into a throwaway runs folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNER_RUNS", str(tmp_path_factory.mktemp("runs")))
        for key, value in {**OFFLINE_ENV, **DEFAULT_ENV}.items():
            patch.setenv(key, value)
        yield ensure_embedded_model()


def preprocess(task: str, *overrides: str):
    """Axolotl's own preprocessing (what `axolotl preprocess` runs, here in-process to
    load Axolotl once for all tasks) on the composed cpu config; the dataset it saved."""
    from axolotl.cli.preprocess import do_cli

    recipe = compose(task, "cpu", list(overrides))
    shutil.rmtree(recipe.run_dir / "prepared", ignore_errors=True)  # one prepared set per call
    do_cli(config=str(write_config(recipe)))
    [prepared] = [p for p in (recipe.run_dir / "prepared").iterdir() if p.is_dir()]
    data = ROOT / recipe.config["datasets"][0]["path"]
    source = [json.loads(line) for line in data.open()]
    return source, load_from_disk(prepared)


def split_by_labels(tokenizer, row) -> tuple[str, str]:
    """(the text the loss ignores, the text the model is trained to write)."""
    pairs = list(zip(row["input_ids"], row["labels"], strict=True))
    ignored = tokenizer.decode([token for token, label in pairs if label == -100])
    trained = tokenizer.decode([token for token, label in pairs if label != -100])
    return ignored, trained


@pytest.mark.parametrize("task", sorted(ANSWERS))
def test_sft_task_data_keeps_every_example_and_trains_on_the_answer(task, offline):
    from transformers import AutoTokenizer

    source, dataset = preprocess(task)
    assert len(dataset) == len(source), "examples dropped (too long for sequence_len?)"

    tokenizer = AutoTokenizer.from_pretrained(offline)
    expected = [[answer.strip() for answer in ANSWERS[task](row)] for row in source]
    for row in dataset:  # shuffled by Axolotl: match each row to its source by content
        prompt, trained = split_by_labels(tokenizer, row)
        [answers] = [a for a in expected if all(answer in trained for answer in a)][:1]
        # Exactly the answers, each closed by the end-of-turn token, and nothing else.
        assert trained.replace(END_OF_TURN, " ").split() == " ".join(answers).split()
        assert trained.count(END_OF_TURN) == len(answers)
        assert trained.rstrip().endswith(END_OF_TURN), "the model must learn to end its turn"
        assert "<|im_start|>user" in prompt and "<|im_start|>assistant" in prompt


def test_preference_data_keeps_every_pair_in_the_chat_template(offline):
    # The tokenizer is the embedded model's either way; no SFT run needed to read the data.
    source, dataset = preprocess("dpo", f"base_model={offline}")
    assert len(dataset) == len(source)
    by_prompt = {row["prompt"]: row for row in source}
    for row in dataset:
        [original] = [by_prompt[p] for p in by_prompt if f"user\n{p}<|im_end|>" in row["prompt"]]
        assert original["chosen"][-1]["content"] in row["chosen"]
        assert original["rejected"][-1]["content"] in row["rejected"]


def test_own_records_given_with_data_are_read_by_axolotl(offline, tmp_path):
    """What the generation and preference stages write trains through `data=`."""
    from transformers import AutoTokenizer

    conversations = tmp_path / "generated.jsonl"
    conversations.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {n} times 3?"},
                        {"role": "assistant", "content": f"{n} times 3 is {n * 3}."},
                    ],
                    "meta": {"source": "test"},
                }
            )
            + "\n"
            for n in range(12)
        )
    )
    source, dataset = preprocess("instruction", f"data={conversations}")
    assert len(dataset) == len(source) == 12
    tokenizer = AutoTokenizer.from_pretrained(offline)
    for row in dataset:
        _, trained = split_by_labels(tokenizer, row)
        assert trained.startswith(tuple(f"{n} times 3 is {n * 3}." for n in range(12)))

    pairs_file = tmp_path / "prefs.jsonl"
    pairs_file.write_text(
        json.dumps(
            {
                "messages": [{"role": "user", "content": "Is 7 prime?"}],
                "chosen": {"role": "assistant", "content": "Yes, 7 is prime."},
                "rejected": {"role": "assistant", "content": "No."},
            }
        )
        + "\n"
    )
    _, dataset = preprocess("dpo", f"base_model={offline}", f"data={pairs_file}")
    [row] = dataset
    assert "Is 7 prime?" in row["prompt"] and "Yes, 7 is prime." in row["chosen"]


def test_every_task_is_covered():
    # dpo's pairs are read above; pretrain's every-token data path is in test_pretrain.py;
    # micro-judge's pairs, tokenised as its scorer reads them, in test_chat_format.py.
    assert sorted([*ANSWERS, "dpo", "micro-judge", "pretrain"]) == task_names()
