"""`just demo`: train the instruction recipe on CPU with the embedded default, then show
the base model's and the tuned model's answers to the same prompts side by side."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuner.project import ROOT
from tuner.train import train

# Prompts the local instruction data does not contain; greedy decoding, so each run of
# the same adapter gives the same answers.
DEMO_PROMPTS = [
    "Give three tips for staying focused while studying.",
    "Rewrite this sentence in the passive voice: The committee approved the budget.",
    "Classify the sentiment of this review as positive or negative: The battery died after a day.",
]


def answers(
    model_dir: str, adapter_dir: Path | None, prompts: list[str], max_new_tokens: int = 96
) -> list[str]:
    """Greedy answers through the model's own chat template (the one training used)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    replies = []
    for prompt in prompts:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[0][inputs["input_ids"].shape[1] :]
        replies.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return replies


def demo(overrides: list[str]) -> Path:
    console = Console(soft_wrap=True)
    recipe = train("instruction", "cpu", overrides)
    run = recipe.run_dir
    base_model = str(ROOT / recipe.config["base_model"])
    base = answers(base_model, None, DEMO_PROMPTS)
    tuned = answers(base_model, run, DEMO_PROMPTS)

    table = Table(
        title="SmolLM2-135M-Instruct: base vs. instruction LoRA (CPU demo)", show_lines=True
    )
    table.add_column("prompt", ratio=1)
    table.add_column("base", ratio=2)
    table.add_column("tuned", ratio=2)
    for prompt, before, after in zip(DEMO_PROMPTS, base, tuned, strict=True):
        table.add_row(prompt, before, after)
    console.print(table)
    comparison = run / "demo.json"
    rows = [
        {"prompt": p, "base": b, "tuned": t}
        for p, b, t in zip(DEMO_PROMPTS, base, tuned, strict=True)
    ]
    comparison.write_text(json.dumps(rows, indent=2) + "\n")
    console.print(f"Run folder: {run} (config.yaml, adapter, logs/, manifest.json, demo.json)")
    return run
