"""`just filter … executor=slurm`: the filter's stages as datatrove's Slurm jobs, one job
array per stage, each depending on the one before, submitted with sbatch from a login
node of the cluster. The jobs run in this inference environment (its `activate`), and
every node must see the output folder.

Submitting returns at once. Once the jobs have finished, the same command writes the
outputs: datatrove records each finished task, and a stage whose tasks are all
recorded is not submitted again. While jobs of an earlier submission are still queued
or running (squeue), the command says so rather than submitting them twice.

`dry_run=true` submits nothing: datatrove writes its jobs as it would, and a stand-in
for sbatch, first on the PATH, keeps each script it is handed in `work/slurm-dry-run/`
(the sbatch arguments in its first line) and answers with a job number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.errors import TunerError

JOBS_FILE = "slurm-jobs.json"
DRY_RUN_SBATCH = """#!/bin/sh
# Keeps the job file sbatch was handed (its last argument), answers as sbatch does.
folder="$(dirname "$0")/.."
count=$(ls "$folder" | grep -c '\\.sbatch$')
for job in "$@"; do :; done
{ echo "# sbatch $*"; cat "$job"; } > "$folder/job-$((count + 1)).sbatch"
echo "Submitted batch job $((count + 1))"
"""


@dataclass(frozen=True)
class SlurmSubmission:
    """What `executor=slurm` handed to Slurm (or, dry, wrote)."""

    work: Path
    job_ids: list[str]
    dry_run: bool
    scripts: list[Path]


def stage_executors(work: Path, stage_list: list[Any], options: dict[str, Any]) -> list[Any]:
    from datatrove.executor.slurm import SlurmPipelineExecutor

    executors: list[Any] = []
    for name, pipeline, tasks in stage_list:
        executors.append(
            SlurmPipelineExecutor(
                pipeline=pipeline,
                tasks=tasks,
                workers=min(options["workers"], tasks),
                time=options["time"],
                partition=options["partition"],
                job_name=f"filter-{name.replace(' ', '-')}",
                logging_dir=str(work / "logs" / name),
                venv_path=str(Path(sys.executable).with_name("activate")),
                depends=executors[-1] if executors else None,
                mail_type="NONE",
            )
        )
    return executors


def submit(
    work: Path, stage_list: list[Any], options: dict[str, Any], console: Console
) -> SlurmSubmission | None:
    """Submit the stages not finished; None when every stage has finished."""
    if not options["partition"]:
        raise TunerError("filter: executor=slurm needs the partition to queue in: partition=NAME.")
    executors = stage_executors(work, stage_list, options)
    if not any(executor.get_incomplete_ranks() for executor in executors):
        return None
    refuse_while_queued(work)
    dry = options["dry_run"] == "true"
    env_path = os.environ["PATH"]
    if dry:
        folder = work / "slurm-dry-run"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "bin").mkdir(parents=True)
        stand_in = folder / "bin" / "sbatch"
        stand_in.write_text(DRY_RUN_SBATCH)
        stand_in.chmod(0o755)
        os.environ["PATH"] = f"{stand_in.parent}{os.pathsep}{env_path}"
    elif shutil.which("sbatch") is None:
        raise TunerError(
            "filter: executor=slurm submits with sbatch, which is not on this machine. Run it "
            "on the cluster's login node, or add dry_run=true to write the jobs only."
        )
    try:
        with console.status("Submitting the filter's stages to Slurm…"):
            executors[-1].run()  # submits the stages it depends on first
    finally:
        os.environ["PATH"] = env_path
    ids = [str(e.job_id) for e in executors if e.job_id not in (None, -1)]
    (work / JOBS_FILE).write_text(json.dumps({"job_ids": ids, "dry_run": dry}) + "\n")
    scripts = sorted((work / "slurm-dry-run").glob("*.sbatch")) if dry else []
    return SlurmSubmission(work, ids, dry, scripts)


def refuse_while_queued(work: Path) -> None:
    record = work / JOBS_FILE
    if not record.is_file() or shutil.which("squeue") is None:
        return
    earlier = json.loads(record.read_text())
    if earlier.get("dry_run") or not earlier.get("job_ids"):
        return
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%i", "--jobs", ",".join(earlier["job_ids"])],
        capture_output=True,
        text=True,
    )
    if listed.stdout.strip():
        raise TunerError(
            f"filter: the Slurm jobs submitted before ({', '.join(earlier['job_ids'])}) are "
            "still queued or running. Run the same command again once they finish."
        )
