"""The tuned model as plain weights for vLLM: the run's LoRA adapter merged into its
base model (PEFT's merge_and_unload), written once to `runs/TASK-HW/eval/merged/` and
reused while the adapter is unchanged.

Why not vLLM's LoRA support: with LoRA enabled, vLLM cannot return prompt log-probs,
which every log-likelihood task (multiple choice, perplexity) needs — the LoRA logits
path indexes one row per request where prompt log-probs have one per token
(vllm-project/vllm#16668; on the CPU build it fails in `bgmv_shrink`). Merged weights
run the same engine, with the same flags, as the base model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.console import Console

from tuner.manifest import sha256_file

STAMP = "merged-from.json"


def merged_model(adapter: Path, base_model: str, dtype: str, out: Path, console: Console) -> Path:
    source = {
        "adapter": str(adapter),
        "adapter_sha256": sha256_file(adapter / "adapter_model.safetensors"),
        "base_model": base_model,
        "dtype": dtype,
    }
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == source:
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with console.status(f"Merging the adapter of {adapter} into {base_model}…"):
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype))
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        shutil.rmtree(out, ignore_errors=True)
        merged.save_pretrained(out)
        AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    stamp.write_text(json.dumps(source, indent=2) + "\n")
    return out
