"""Running the inference environment's stages (vLLM, generation, preferences) from the
tests, which run in the training environment: as the Justfile does, a subprocess of
.venvs/infer's python."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tuner.project import ROOT

INFER_PYTHON = ROOT / ".venvs" / "infer" / "bin" / "python"


def infer_env(data: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    if data is not None:
        env["TUNER_DATA"] = str(data)
    return env


def tuner_command(*args: str) -> list[str]:
    return [str(INFER_PYTHON), "-m", "tuner", *args]


def run_infer(
    *args: str, data: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`python -m tuner ARGS` in the inference environment, output captured."""
    return subprocess.run(
        tuner_command(*args),
        cwd=ROOT,
        env=infer_env(data),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
