"""The two environments `just setup` builds (scripts/bootstrap.sh): `.venvs/train` (Axolotl)
and `.venvs/infer` (vLLM, lm-eval). A stage that needs the other one runs there as a
subprocess of that environment's python, from the repository root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tuner.errors import TunerError
from tuner.project import ROOT

VENVS = Path(os.environ.get("TUNER_VENVS", ROOT / ".venvs"))
INFER_PYTHON = VENVS / "infer" / "bin" / "python"
TRAIN_PYTHON = VENVS / "train" / "bin" / "python"


def subprocess_env() -> dict[str, str]:
    """This process's environment without the markers of its own virtual environment,
    which would leak into the other one."""
    return {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}


def run_in_infer(*args: str) -> None:
    """`python -m tuner ARGS` in the inference environment, its output shown as it
    comes; a failure is a TunerError."""
    if not INFER_PYTHON.is_file():
        raise TunerError(f"{INFER_PYTHON} does not exist: run `just setup` first.")
    command = [str(INFER_PYTHON), "-m", "tuner", *args]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env())
    if done.returncode != 0:
        raise TunerError(f"`{' '.join(command)}` failed (exit code {done.returncode}); see above.")
