"""Where things live: the repository's folders, the run folders and the cache."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
TASKS_DIR = RECIPES / "tasks"
HARDWARE_DIR = RECIPES / "hardware"
# Training methods an overlay does not choose (method=NAME): recipes/methods/NAME.yaml.
METHODS_DIR = RECIPES / "methods"
# The adapter recipes/methods/prompt-tuning.yaml sets, registered by tuner/prompt_tuning.py.
PROMPT_TUNING = "prompt-tuning"
# Model shapes (config.json alone) that a from-scratch recipe initialises with fresh weights.
SHAPES_DIR = RECIPES / "shapes"
BASE_RECIPE = RECIPES / "base.yaml"


def runs_dir() -> Path:
    """Run folders (`runs/TASK-HW/`); TUNER_RUNS moves them, e.g. onto a bigger disk."""
    return Path(os.environ.get("TUNER_RUNS", ROOT / "runs"))


@contextlib.contextmanager
def runs_folder(folder: Path) -> Iterator[None]:
    """TUNER_RUNS at `folder` for what runs inside, this process's and its children's."""
    before = os.environ.get("TUNER_RUNS")
    os.environ["TUNER_RUNS"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TUNER_RUNS"]
        else:
            os.environ["TUNER_RUNS"] = before


def cache_dir() -> Path:
    """Converted models and other derived files; TUNER_CACHE moves it."""
    return Path(os.environ.get("TUNER_CACHE", ROOT / ".cache"))


def data_dir() -> Path:
    """Generated, filtered and preference data (`data/`); TUNER_DATA moves it."""
    return Path(os.environ.get("TUNER_DATA", ROOT / "data"))


def run_name(task: str, hardware: str) -> str:
    """A run folder's name: `TASK-HW`."""
    return f"{task}-{hardware}"


def run_dir(task: str, hardware: str) -> Path:
    return runs_dir() / run_name(task, hardware)


def local_file(path: str) -> Path | None:
    """A dataset path of a config as a local file (relative paths from the repository
    root, where Axolotl runs), or None for a hub dataset."""
    candidate = ROOT / path
    return candidate if path and candidate.is_file() else None


def local_path(name: str) -> str:
    """A model path as the recipe writes it (relative to the repository root) made
    absolute; a hub id stays as it is."""
    candidate = ROOT / name
    return str(candidate.resolve()) if name.startswith(".") or candidate.exists() else name


def portable(path: Path) -> str:
    """A path as written into a composed config: relative to the repository root when
    it lies inside it (so the config works from any clone, run from the root), else
    absolute."""
    path = path.resolve()
    try:
        return "./" + path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)
