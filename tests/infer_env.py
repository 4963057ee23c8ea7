"""Running the inference environment's stages (vLLM, generation, preferences) from the
tests, which run in the training environment: as the Justfile does, a subprocess of
.venvs/infer's python."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tuner.environments import INFER_PYTHON, subprocess_env
from tuner.project import ROOT


def infer_env(data: Path | None = None, runs: Path | None = None) -> dict[str, str]:
    env = subprocess_env()
    if data is not None:
        env["TUNER_DATA"] = str(data)
    if runs is not None:
        env["TUNER_RUNS"] = str(runs)
    return env


def tuner_command(*args: str) -> list[str]:
    return [str(INFER_PYTHON), "-m", "tuner", *args]


def infer_json(script: str) -> Any:
    """Run a Python script in the inference environment; the JSON it prints last."""
    done = run_infer("-c", script, module=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_infer(
    *args: str,
    data: Path | None = None,
    runs: Path | None = None,
    module: bool = True,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """`python -m tuner ARGS` (or `python ARGS` when not `module`) in the inference
    environment, output captured."""
    return subprocess.run(
        tuner_command(*args) if module else [str(INFER_PYTHON), *args],
        cwd=ROOT,
        env=infer_env(data, runs),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
