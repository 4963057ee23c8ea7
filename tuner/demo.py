"""`just demo`: train the instruction recipe on CPU with the embedded default, evaluate
the base and the tuned model with the instruction suite's offline variant (in the
inference environment: vLLM and lm-eval), and show the comparison."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from tuner.environments import run_in_infer
from tuner.evaluate.compare import Row, rich_table
from tuner.train import train


def demo(overrides: list[str]) -> Path:
    console = Console(soft_wrap=True)
    recipe = train("instruction", "cpu", overrides)
    run = recipe.run_dir
    run_in_infer("eval", "instruction", "cpu")
    comparison = json.loads((run / "eval" / "comparison.json").read_text())
    rows = [Row(**row) for row in comparison["rows"]]
    console.print(rich_table(rows, "SmolLM2-135M-Instruct: base vs. instruction LoRA (CPU demo)"))
    console.print(
        f"Run folder: {run} (config.yaml, adapter, logs/, manifest.json; eval/ holds both "
        "models' answers and scores, comparison.md the table). `just report` renders "
        "every run with plots."
    )
    return run
