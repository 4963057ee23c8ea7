"""`just smoke`: real Axolotl steps on the embedded model, its resident memory measured
against the plan; the random-weights base model; what it refuses."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from tuner.errors import TunerError
from tuner.models import ensure_embedded_model
from tuner.random_weights import random_weights_folder
from tuner.smoke import smoke


@pytest.mark.slow
def test_smoke_instruction_cpu_measures_memory_within_the_plans_band(runs):
    result = smoke("instruction", "cpu", ["steps=2"], Console(quiet=True))
    written = json.loads((runs / "instruction-cpu" / "smoke.json").read_text())
    assert written["measured"][0]["allocated"] == result.measured[0].allocated > 0.5
    assert written["estimated_allocated_gib"] > 0.5 and written["band"]["method"] == "lora"
    # Every batch padded to sequence_len: 2 sequences of 512 tokens a step.
    assert written["tokens_per_step"] == 2 * 512 and written["tokens_per_second"] > 0
    assert written["step_seconds"] > 0
    # The measured resident memory lies within the plan's stated band.
    band = written["band"]
    low = written["estimated_allocated_gib"] / (1 + max(band["high"], 0))
    assert low <= written["measured"][0]["allocated"] <= written["band_upper_gib"]
    assert written["within_band"] and written["verdict"].startswith("within the plan's band")
    # The smoke run leaves the training run alone.
    assert not (runs / "instruction-cpu" / "manifest.json").exists()


def test_random_weights_keep_the_config_and_tokenizer_and_are_built_once(tmp_path, monkeypatch):
    real = ensure_embedded_model()  # the shared converted model, before moving the cache
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path))
    folder = random_weights_folder(str(real))
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 576
    assert (folder / "tokenizer.json").read_bytes() == (real / "tokenizer.json").read_bytes()
    weights = load_file(folder / "model.safetensors")
    trained = load_file(real / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert weights[name].dtype == torch.bfloat16 and weights[name].shape == trained[name].shape
    assert not torch.allclose(weights[name].float(), trained[name].float())
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert random_weights_folder(str(real)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == built


def test_random_weights_without_a_config_say_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(TunerError, match=r"hf download acme/Unknown-7B --include"):
        random_weights_folder("acme/Unknown-7B")


@pytest.mark.parametrize(
    ("argument", "named"), [("steps=0", "steps"), ("random_weights=maybe", "random_weights")]
)
def test_smoke_names_a_bad_option(argument, named, runs):
    with pytest.raises(TunerError, match=named):
        smoke("instruction", "cpu", [argument], Console(quiet=True))
