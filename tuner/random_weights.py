"""A base model with random weights, built from its config.json and saved beside its
tokenizer, so `just smoke … random_weights=true` can measure a run's memory before the
weights are downloaded: Axolotl loads, quantises and trains it like the real one.

(Axolotl's own `reinit_weights` builds the model with `from_config` but leaves out the
load arguments, the dtype and the quantisation among them, so a QLoRA run would
measure an fp32, unquantised model.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tuner.chat import hub_cache_folder
from tuner.errors import TunerError
from tuner.project import ROOT, cache_dir

# What the folder needs besides the weights.
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def source_folder(model: str) -> Path:
    folder = Path(model) if Path(model).is_absolute() else ROOT / model
    if (folder / "config.json").is_file():
        return folder
    cached = hub_cache_folder(model) if "/" in model else None
    if cached is not None and (cached / "config.json").is_file():
        return cached
    raise TunerError(
        f"random_weights=true needs {model}'s config.json and tokenizer, not its weights: "
        f'`hf download {model} --include "*.json" "tokenizer*"`, then run again.'
    )


def random_weights_folder(model: str) -> Path:
    """`.cache/random-weights/<model>/`, built once per model (bf16, seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = source_folder(model)
    target = cache_dir() / "random-weights" / model.strip("/").replace("/", "--")
    if (target / "model.safetensors.index.json").is_file() or (
        target / "model.safetensors"
    ).is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in SMALL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, partial / name)
    config = AutoConfig.from_pretrained(partial)
    torch.manual_seed(0)
    model_object = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model_object.save_pretrained(partial)
    partial.rename(target)
    return target
