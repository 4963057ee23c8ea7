"""`just slurm TASK HW nodes=N`: a Slurm batch job, `runs/TASK-HW/train.sbatch`, that
trains the run on N machines of a cluster. Submit it with `sbatch`.

Slurm starts one task per machine (`srun`); each runs the same `just train TASK HW
nodes=N …` with the rendezvous set from Slurm's own variables: the job's first host as
MASTER_ADDR, SLURM_NODEID as NODE_RANK. The checkout must lie on a filesystem every
machine sees (as home and project folders do on clusters): the run folder, the
environments and the config are read there. `image=true` runs the target's image on
every machine instead (Docker on the host network, as `just train` dispatches it).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.containers import image_tag, run_command
from tuner.errors import TunerError
from tuner.hardware import gpu_profile
from tuner.launch import processes_per_node
from tuner.options import Option, Options, choice, parse_options, slurm_time, split_options
from tuner.project import ROOT
from tuner.recipes import ComposedRecipe, compose
from tuner.validation import validate

RENDEZVOUS_PORT = 29500


OPTIONS: Options = {
    "partition": Option(str, None, "the Slurm partition to queue in (the cluster's default)"),
    "time": Option(
        slurm_time, None, "the job's time limit, HH:MM:SS (default: twice `just plan`'s estimate)"
    ),
    "image": Option(
        choice("true", "false"),
        "false",
        "run the target's image on every machine (Docker) instead of the shared environments",
    ),
}


@dataclass(frozen=True)
class BatchJob:
    path: Path
    nodes: int
    text: str


def write_job(task: str, hardware: str, arguments: list[str]) -> BatchJob:
    own, train_arguments = split_options(arguments, OPTIONS)
    options = parse_options(own, OPTIONS, "slurm")
    recipe = compose(task, hardware, train_arguments)
    if recipe.nodes < 2:
        raise TunerError(
            f"slurm: give the number of machines, e.g. `just slurm {task} {hardware} nodes=2`; "
            f"on one machine `just train {task} {hardware}` needs no batch job."
        )
    if gpu_profile(recipe.meta, hardware) is None:
        raise TunerError(f"slurm: {hardware} is not a GPU target; choose one with GPUs.")
    report = validate(recipe)
    if not report.ok:
        raise TunerError(report.summary())
    train = ["train", task, hardware, *train_arguments]
    text = job_text(recipe, train, options)
    path = recipe.run_dir / "train.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return BatchJob(path, recipe.nodes, text)


def job_text(recipe: ComposedRecipe, train: list[str], options: dict[str, Any]) -> str:
    hardware = recipe.hardware
    directives = {
        "job-name": f"llm-tuner-{recipe.task}-{hardware}",
        "nodes": str(recipe.nodes),
        "ntasks-per-node": "1",
        "gpus-per-node": str(processes_per_node(recipe)),
        "exclusive": None,
        "time": options["time"] or time_limit(train),
        # Slurm opens the log before the script runs: from the checkout, not the folder
        # sbatch was called in.
        "chdir": str(ROOT),
        "output": str(recipe.run_dir / "logs" / "slurm-%j.out"),
    }
    if options["partition"]:
        directives["partition"] = options["partition"]
    if options["image"] == "true":
        runner = shlex.join(run_command(hardware, train, host_network=True))
        how = f"the {image_tag(hardware)} image on each machine (`just build {hardware}` there)"
    else:
        runner = shlex.join([".venvs/bin/just", *train])
        how = "the checkout's environments (.venvs/, on the shared filesystem)"
    lines = ["#!/bin/bash", f"# Written by `just slurm {shlex.join(train[1:])}`: {how}."]
    lines += [f"#SBATCH --{k}" + (f"={v}" if v is not None else "") for k, v in directives.items()]
    lines += [
        "set -euo pipefail",
        "# The rendezvous: the job's first machine, and each machine's number.",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_PORT={RENDEZVOUS_PORT}",
        "srun --kill-on-bad-exit=1 bash -c "
        + shlex.quote(f"NODE_RANK=$SLURM_NODEID exec {runner}"),
        "",
    ]
    return "\n".join(lines)


def time_limit(train: list[str]) -> str:
    """Twice the planner's estimate, at least an hour, in whole hours."""
    from tuner.plan import make_plan

    _, task, hardware, *arguments = train
    plan = make_plan(task, hardware, arguments)
    hours = max(1, math.ceil(2 * (plan.hours or 0.5)))
    return f"{hours}:00:00"
