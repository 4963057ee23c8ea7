"""Prompt tuning as a method (`method=prompt-tuning`): composed over every overlay and
validated with the plugin's keys, sized by the planner, trained by Axolotl through the
project's plugin, and evaluated by lm-eval's hf backend with the PEFT adapter."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from tests.conftest import run_tuner
from tests.infer_env import infer_json, run_infer
from tuner.errors import TunerError
from tuner.inference_speed import measure_inference
from tuner.memory import Training, architecture_for, staying
from tuner.project import ROOT
from tuner.recipes import compose, hardware_names
from tuner.validation import validate

METHOD = "method=prompt-tuning"


@pytest.mark.parametrize("hardware", hardware_names())
def test_prompt_tuning_composes_over_each_overlay_and_validates(hardware):
    recipe = compose("instruction", hardware, [METHOD])
    config = recipe.config
    assert config["adapter"] == "prompt-tuning"
    # The method's plugin joins the overlay's (cpu loads one of its own) rather than
    # replacing it.
    overlay_plugins = compose("instruction", hardware).config.get("plugins", [])
    assert config["plugins"] == [*overlay_plugins, "tuner.prompt_tuning.PromptTuningPlugin"]
    assert not [key for key in config if key.startswith("lora_")]
    assert config["sample_packing"] is False and not config.get("load_in_4bit")
    assert recipe.overrides["method"] == "prompt-tuning"
    report = validate(recipe)
    assert report.ok, report.summary()


def test_a_bad_plugin_value_and_a_task_with_its_own_adapter_are_refused():
    report = validate(compose("instruction", "cpu", [METHOD, "num_virtual_tokens=0"]))
    assert not report.ok and "num_virtual_tokens" in report.summary()
    with pytest.raises(TunerError, match="pretrain sets its own adapter"):
        compose("pretrain", "cpu", [METHOD])
    with pytest.raises(TunerError, match="choose one of: prompt-tuning"):
        compose("instruction", "cpu", ["method=prefix"])


def test_the_planner_trains_the_virtual_tokens_alone_on_longer_sequences():
    config = compose("instruction", "a100", [METHOD, "num_virtual_tokens=50"]).config
    training = Training.from_config(config, gpus=1)
    assert training.sequence_len == config["sequence_len"] + 50
    arch = architecture_for(config["base_model"])
    # PEFT keeps the 50 embeddings in fp32; AdamW's two moments and the gradient alike.
    parts = staying(arch, training)
    assert parts["adapter"] == 50 * arch.hidden * 4
    assert parts["optimizer"] == 2 * 50 * arch.hidden * 4


@pytest.mark.slow
def test_prompt_tuning_trains_and_is_evaluated_through_the_hf_backend(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    args = ["instruction", "cpu", f"base_model={tiny_model}", "max_steps=4", METHOD]
    trained = run_tuner("train", *args, runs=runs)
    assert trained.returncode == 0, trained.stderr[-4000:]
    run = runs / "instruction-cpu"
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["num_virtual_tokens"] == 20
    hidden = json.loads((tiny_model / "config.json").read_text())["hidden_size"]
    manifest = json.loads((run / "manifest.json").read_text())
    weights = manifest["trained_weights"]
    assert weights["trainable_parameters"] == 20 * hidden
    assert weights["saved_bytes"] == (run / "adapter_model.safetensors").stat().st_size
    assert weights["trainable_fraction"] == pytest.approx(20 * hidden / weights["base_parameters"])
    assert manifest["overrides"][-1] == METHOD

    refused = run_infer("eval", "instruction", "cpu", "backend=vllm", runs=runs)
    assert refused.returncode == 2 and "is prompt tuning" in refused.stderr
    assert "Traceback" not in refused.stderr
    done = run_infer("eval", "instruction", "cpu", "only=tuned", "limit=2", runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((run / "eval" / "tuned" / "results.json").read_text())
    assert results["settings"]["backend"] == "hf"
    assert f"peft={run}" in (run / "eval" / "tuned" / "lm-eval.log").read_text()
    answers = results["tasks"]["tuner_ifeval"]["metrics"]["prompt_level_strict_acc"]
    assert len(answers["per_sample"]) == 2

    # Timed generating with its soft prompt, as the experiments' reports give it; a run
    # already timed with these weights is not timed again.
    speed = measure_inference(run, prompts=2, new_tokens=8)
    assert speed.new_tokens == 16 and speed.tokens_per_second > 0
    assert json.loads((run / "inference.json").read_text()) == asdict(speed)
    assert measure_inference(run) == speed


@pytest.mark.slow
def test_lm_eval_scores_the_tokens_it_sent_under_a_prompt_tuning_adapter(tmp_path):
    """SmolLM2 with 20 random virtual tokens: the log-likelihood lm-eval logs for a
    document is the one PEFT's model gives its tokens. PEFT's logits are 20 positions
    longer than the tokens sent; lm-eval's hf backend counts a continuation's position
    from the end of the logits (`inplen + logits.shape[0] - padding_len_inp`), so the
    prepended positions are skipped, as this checks."""
    from tuner.models import ensure_embedded_model

    model = ensure_embedded_model()
    adapter, out = tmp_path / "adapter", tmp_path / "lm-eval"
    make = f"""
import torch
from peft import PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
base = AutoModelForCausalLM.from_pretrained({str(model)!r})
config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20)
get_peft_model(base, config).save_pretrained({str(adapter)!r})
print("{{}}")
"""
    infer_json(make)
    args = f"pretrained={model},dtype=float32,peft={adapter}"
    ran = run_infer(
        "-m", "tuner.evaluate.lm_eval_main", "--model", "hf",
        "--model_args", args, "--tasks", "tuner_perplexity_instruction",
        "--include_path", str(ROOT / "evaluate" / "tasks"), "--limit", "2",
        "--output_path", str(out), "--log_samples", module=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    [samples] = out.glob("*/samples_tuner_perplexity_instruction_*.jsonl")
    logged = [json.loads(line) for line in samples.read_text().splitlines()]
    check = f"""
import json, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({str(model)!r})
base = AutoModelForCausalLM.from_pretrained({str(model)!r}, dtype=torch.float32)
model = PeftModel.from_pretrained(base, {str(adapter)!r}).eval()
scores = []
for text in {[row["target"] for row in logged]!r}:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    ids = torch.tensor([[tokenizer.bos_token_id] + ids])
    with torch.no_grad():
        logits = model(ids).logits[0, 20:-1]
    scores.append(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum().item())
print(json.dumps(scores))
"""
    expected = infer_json(check)
    for row, score in zip(logged, expected, strict=True):
        assert math.isclose(float(row["resps"][0][0]), score, rel_tol=1e-3), (row, score)
