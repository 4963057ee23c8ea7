"""How fast a trained run generates: its base model with its adapter (PEFT: LoRA or a
prompt-tuning soft prompt) or its full weights, answering chat prompts one at a time
with transformers, greedy, a fixed number of new tokens each: tokens/s at batch size 1,
the inference speed a comparison of LoRA with prompt tuning reports. An experiment asks
for it with `measure_inference: true`, and its report puts it beside the training costs.

vLLM is not the engine here: it cannot load a prompt-tuning adapter, and the two
methods must be timed alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner.evaluate.suites import FIXTURES_DIR
from tuner.manifest import read_manifest, sha256_file
from tuner.parameters import ADAPTER_FILE, weight_files
from tuner.project import local_path

RESULT = "inference.json"
PROMPTS = FIXTURES_DIR / "chat.jsonl"


@dataclass(frozen=True)
class InferenceSpeed:
    tokens_per_second: float
    new_tokens: int  # over every prompt, each generating the same number
    seconds: float
    prompts: int
    device: str
    dtype: str
    weights_sha256: str  # of the adapter or model file timed: a retrained run is timed again

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def weights_digest(run_dir: Path) -> str:
    return sha256_file(weight_files(run_dir)[0])


def measured(run_dir: Path) -> InferenceSpeed | None:
    """The speed measured for the run's current weights; None where there is none."""
    try:
        speed = InferenceSpeed(**json.loads((run_dir / RESULT).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return speed if speed.weights_sha256 == weights_digest(run_dir) else None


def measure_inference(run_dir: Path, prompts: int = 4, new_tokens: int = 32) -> InferenceSpeed:
    """Times the run generating and writes RUN/inference.json; a run already timed with
    these weights is not timed again."""
    if (known := measured(run_dir)) is not None:
        return known
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.generate.backends import cpu_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else cpu_dtype()
    adapter = (run_dir / ADAPTER_FILE).is_file()
    base = str((read_manifest(run_dir / "manifest.json") or {})["base_model"])
    source = local_path(base) if adapter else run_dir
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, run_dir)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)  # with the chat template it trained
    questions = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    inputs = []
    for question in questions[:prompts]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        inputs.append(ids.to(device))
    settings = {
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,  # every answer as long: the rates compare
    }
    with torch.no_grad():
        model.generate(
            input_ids=inputs[0], **{**settings, "max_new_tokens": 2, "min_new_tokens": 2}
        )
        generated = 0
        start = time.perf_counter()
        for ids in inputs:
            generated += model.generate(input_ids=ids, **settings).shape[1] - ids.shape[1]
        seconds = time.perf_counter() - start
    speed = InferenceSpeed(
        tokens_per_second=round(generated / seconds, 2),
        new_tokens=generated,
        seconds=round(seconds, 3),
        prompts=len(inputs),
        device=device,
        dtype=dtype,
        weights_sha256=weights_digest(run_dir),
    )
    (run_dir / RESULT).write_text(speed.to_json() + "\n")
    return speed
