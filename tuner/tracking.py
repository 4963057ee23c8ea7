"""Where a training's curves go: TensorBoard always, W&B and MLflow when the environment
names them.

TensorBoard's event files are written offline into the run folder by every recipe
(`use_tensorboard` in recipes/base.yaml). W&B and MLflow are chosen at launch, from the
variables their own clients read, and handed to Axolotl as its command-line options
(`--wandb-project`, `--mlflow-experiment-name`): the composed config.yaml stays the same
whatever the environment, so a run interrupted without W&B resumes with it, and a seed's
finished run is still recognised as finished.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuner.errors import TunerError

# The project's name for its runs where the user names no W&B project or MLflow
# experiment (WANDB_PROJECT, MLFLOW_EXPERIMENT_NAME).
DEFAULT_PROJECT = "llm-tuner"


@dataclass(frozen=True)
class Trackers:
    """The trackers of one training, and how Axolotl is told."""

    names: tuple[str, ...]
    axolotl_args: list[str] = field(default_factory=list)
    # Variables set only where the user set none: W&B is off unless chosen.
    env_defaults: dict[str, str] = field(default_factory=dict)


# A process that must log nowhere but its folder (a smoke test).
UNTRACKED = Trackers((), env_defaults={"WANDB_MODE": "disabled"})


def tracker_run_name(run_dir: Path) -> str:
    """The run's name in W&B and MLflow: `TASK-HW`, under the folders that set a seed's
    run or an experiment's cell apart (`seeds/seed-43/math-a100`,
    `experiments/NAME/CELL/pretrain-cpu`), so that runs of one study differ by name."""
    parts = run_dir.parts
    starts = [i for i, part in enumerate(parts[:-1]) if part in ("seeds", "experiments")]
    return "/".join(parts[starts[-1] :]) if starts else run_dir.name


def chosen_trackers(config: Mapping[str, Any], run_dir: Path, env: Mapping[str, str]) -> Trackers:
    """TensorBoard when the config asks (every recipe does); W&B with WANDB_API_KEY in the
    environment (or a `wandb_project` the user set); MLflow with MLFLOW_TRACKING_URI (or
    an `mlflow_experiment_name` the user set). Keys the user set win over these. A
    tracker that would fail once the model is loaded is refused here, before launch."""
    names: list[str] = ["tensorboard"] if config.get("use_tensorboard") else []
    args: list[str] = []
    defaults: dict[str, str] = {}
    name = tracker_run_name(run_dir)

    if config.get("wandb_project") or env.get("WANDB_API_KEY"):
        names.append("wandb")
        if not config.get("wandb_project"):
            args.append(f"--wandb-project={env.get('WANDB_PROJECT') or DEFAULT_PROJECT}")
        if not config.get("wandb_name"):
            args.append(f"--wandb-name={name}")
    else:
        defaults["WANDB_MODE"] = "disabled"

    if config.get("mlflow_experiment_name") or env.get("MLFLOW_TRACKING_URI"):
        if importlib.util.find_spec("mlflow") is None:
            raise TunerError(
                "MLFLOW_TRACKING_URI is set, but this environment has no mlflow to log with. "
                "Install it (`.venvs/train/bin/pip install mlflow-skinny`), or unset "
                "MLFLOW_TRACKING_URI to train without MLflow."
            )
        uri = env.get("MLFLOW_TRACKING_URI", "")
        allowed = env.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1")
        if uri and urlparse(uri).scheme in ("", "file") and not allowed:
            raise TunerError(
                f"MLFLOW_TRACKING_URI={uri} is a local folder, which MLflow 3 logs to only "
                "with MLFLOW_ALLOW_FILE_STORE=true (its file store is in maintenance mode). "
                "Set that, or point MLFLOW_TRACKING_URI at a tracking server "
                "(`mlflow server`, then http://HOST:5000)."
            )
        names.append("mlflow")
        if not config.get("mlflow_experiment_name"):
            experiment = env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            args.append(f"--mlflow-experiment-name={experiment}")
        if not config.get("mlflow_run_name"):
            args.append(f"--mlflow-run-name={name}")
    return Trackers(tuple(names), args, defaults)
