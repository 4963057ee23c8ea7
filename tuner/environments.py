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
    """`python -m tuner ARGS` in the inference environment (see run_in)."""
    run_in(INFER_PYTHON, *args)


def run_in(python: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """`python -m tuner ARGS` with an environment's `python`, this process's environment
    (plus `env`), its output shown as it comes; a failure is a TunerError."""
    if not python.is_file():
        raise TunerError(f"{python} does not exist: run `just setup` first.")
    command = [str(python), "-m", "tuner", *args]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env() | (env or {}))
    if done.returncode != 0:
        raise TunerError(f"`{' '.join(command)}` failed (exit code {done.returncode}); see above.")
