"""The pretrain task: a shape from recipes/shapes/ with fresh weights, full training on
conversations and plain text together. Composition and planning for the GPU targets;
on cpu the tiny shape really trains from scratch, and only the trained model is
evaluated (there is no base model with weights to compare with)."""

from __future__ import annotations

import json
import math

import pytest
from datasets import load_from_disk
from safetensors.torch import load_file

from tests.conftest import run_tuner
from tests.infer_env import run_infer
from tests.run_checks import trainer_log
from tuner.memory import architecture_for
from tuner.plan import make_plan
from tuner.project import ROOT, SHAPES_DIR
from tuner.recipes import compose

SHAPE_SIZES = {
    "llama-tiny": 3.3e6,
    "llama-tiny-wide": 6.78e6,
    "llama-125m": 134.5e6,
    "llama-500m": 502.6e6,
    "llama-1b": 1.07e9,
}


def test_each_shape_has_its_stated_size_on_smollm2s_vocabulary():
    assert sorted(p.name for p in SHAPES_DIR.iterdir()) == sorted(SHAPE_SIZES)
    for name, size in SHAPE_SIZES.items():
        arch = architecture_for(f"./recipes/shapes/{name}")
        assert arch.vocab == 49152 and arch.tied, name
        assert abs(arch.params - size) / size < 0.01, (name, arch.params)


def test_pretrain_composes_full_training_from_fresh_weights_on_every_target():
    for hardware in ("t4", "a100", "4090x8", "dgx-spark"):
        config = compose("pretrain", hardware).config
        assert config["reinit_weights"] is True and config["adapter"] is None, hardware
        assert not [key for key in config if key.startswith("lora_")], hardware
        assert not config.get("load_in_4bit") and not config.get("load_in_8bit"), hardware
        assert config["base_model"] == "./recipes/shapes/llama-125m"
        assert config["tokenizer_config"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert [d["type"] for d in config["datasets"]] == ["chat_template", "completion"]
    cpu = compose("pretrain", "cpu").config
    assert cpu["base_model"] == "./recipes/shapes/llama-tiny"
    assert cpu["tokenizer_config"].endswith("models/SmolLM2-135M-Instruct")
    assert [d["path"] for d in cpu["datasets"]] == [
        "./recipes/data/instruction.jsonl",
        "./recipes/data/pretrain-text.jsonl",
    ]


@pytest.mark.parametrize("shape", ["llama-125m", "llama-500m", "llama-1b"])
def test_the_planner_sizes_full_training_of_each_shape_on_the_4090s(shape):
    plan = make_plan("pretrain", "4090x8", [f"base_model=./recipes/shapes/{shape}"])
    assert plan.band is not None and plan.band.method == "full" and plan.fits
    # No adapter: the optimizer holds states for the model's own weights.
    assert plan.memory.adapter == 0 and plan.memory.optimizer > 0
    assert plan.steps > 0 and plan.hours and plan.hours > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("pretrain") / "runs"
    done = run_tuner("train", "pretrain", "cpu", runs=runs)
    assert done.returncode == 0, done.stderr[-5000:]
    return runs


@pytest.mark.slow
def test_the_tiny_shape_trains_from_scratch_and_its_loss_falls(trained):
    run = trained / "pretrain-cpu"
    losses = [row["loss"] for row in trainer_log(run) if "loss" in row]
    assert len(losses) == 20
    # Fresh weights predict about uniformly over the vocabulary: ln(49,152) = 10.8.
    assert abs(losses[0] - math.log(49152)) < 1.0, losses[0]
    # At the cpu overlay's 1e-3, 20 steps of a 3M model from scratch fall by about 0.6
    # nats (its perplexity by almost half); 1e-2 would fall by 4 (`learning_rate=0.01`).
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    # No adapter: the whole model is saved, with the shape's parameters.
    assert not (run / "adapter_config.json").exists()
    count = sum(tensor.numel() for tensor in load_file(run / "model.safetensors").values())
    assert abs(count - SHAPE_SIZES["llama-tiny"]) / SHAPE_SIZES["llama-tiny"] < 0.01


@pytest.mark.slow
def test_conversations_and_text_are_both_trained_on_all_their_words(trained):
    """Text rows train on every token; conversations on every turn's words (system,
    user and assistant alike), only the chat template's role headers left out."""
    from transformers import AutoTokenizer

    run = trained / "pretrain-cpu"
    tokenizer = AutoTokenizer.from_pretrained(run)
    [prepared] = [p for p in (run / "prepared").iterdir() if p.is_dir()]
    rows = load_from_disk(prepared)
    conversations = sum(1 for _ in (ROOT / "recipes/data/instruction.jsonl").open())
    texts = sum(1 for _ in (ROOT / "recipes/data/pretrain-text.jsonl").open())
    assert len(rows) == conversations + texts
    headers = {"<|im_start|>", "system", "user", "ass", "istant", "\n"}
    untrained = [
        [
            tokenizer.decode([token])
            for token, label in zip(row["input_ids"], row["labels"], strict=True)
            if label == -100
        ]
        for row in rows
    ]
    assert sum(1 for masked in untrained if not masked) == texts
    assert all(set(masked) <= headers for masked in untrained)


@pytest.mark.slow
def test_only_the_trained_model_is_evaluated(trained):
    refused = run_infer("eval", "pretrain", "cpu", "only=base", runs=trained)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "trains from scratch" in refused.stderr and "drop only=base" in refused.stderr
    done = run_infer("eval", "pretrain", "cpu", "backend=hf", "limit=2", runs=trained)
    assert done.returncode == 0, done.stderr[-4000:]
    eval_dir = trained / "pretrain-cpu" / "eval"
    assert not (eval_dir / "base").exists() and not (eval_dir / "comparison.json").exists()
    results = json.loads((eval_dir / "tuned" / "results.json").read_text())
    perplexity = results["tasks"]["tuner_perplexity_chat"]["metrics"]["word_perplexity"]
    assert math.isfinite(perplexity["value"]) and perplexity["value"] > 1
