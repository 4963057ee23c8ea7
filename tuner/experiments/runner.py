"""`just experiment NAME HW`: make the data a grid's prepare step names (the filter's
quality tiers), plan the grid on the hardware and refuse it over budget, then train and
evaluate every run not finished, then the report.

Each run (a cell at a seed) has its own runs folder, `runs/experiments/NAME/CELL/seed-S/`,
which holds the ordinary run folder `TASK-HW/` (config, checkpoints, manifest, eval/):
`just train` and `just eval` run there unchanged (TUNER_RUNS points at it). A run
whose training completed and whose evaluation is written is skipped; one stopped
mid-training resumes from its last checkpoint, as `just train` does."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tuner.environments import run_in_infer
from tuner.errors import TunerError
from tuner.experiments.report import write_report
from tuner.experiments.spec import (
    FilterStep,
    Grid,
    Run,
    expand,
    experiment_dir,
    load_experiment,
    prepared_dir,
)
from tuner.manifest import dataset_fingerprints, read_manifest, sha256_text
from tuner.options import Option, choice, parse_options, split_options
from tuner.plan import Plan, make_plan
from tuner.project import ROOT, runs_folder
from tuner.recipes import compose

EXPERIMENT_OPTIONS = {
    "fresh": Option(
        choice("true", "false"),
        "false",
        "true: train every run not finished from the start, its checkpoints deleted "
        "(`just train --fresh`), e.g. after changing the grid",
    ),
    "plan": Option(
        choice("true", "false"),
        "false",
        "true: print the grid's plan and the budget check, train nothing (a prepare "
        "step's data is made first: the plan counts it)",
    ),
}


@dataclass(frozen=True)
class GridPlan:
    """The planner's estimate of one run per cell; every seed of a cell costs the same."""

    runs: list[Run]
    plans: dict[str, Plan]
    seeds: int

    def total(self, field: str) -> float | None:
        values = [getattr(self.plans[run.cell], field) for run in self.runs]
        return None if any(v is None for v in values) else sum(values)

    def share(self, variable: str, value: str, field: str) -> float:
        return sum(
            getattr(self.plans[run.cell], field) or 0.0
            for run in self.runs
            if run.values[variable] == value
        )


def plan_grid(task: str, hardware: str, runs: list[Run], seeds: int) -> GridPlan:
    plans = {}
    for run in runs:
        if run.cell not in plans:
            with runs_folder(run.folder):
                plans[run.cell] = make_plan(task, hardware, run.overrides)
    return GridPlan(runs, plans, seeds)


def plan_table(grid_plan: GridPlan, title: str) -> Table:
    table = Table(title=title)
    for header in ("cell", "peak", "tokens", "steps", "hours", "cost", "fits"):
        table.add_column(header, justify="left" if header == "cell" else "right", no_wrap=True)
    for cell, plan in grid_plan.plans.items():
        table.add_row(
            cell,
            f"{plan.upper_gib:.1f}G",
            f"{plan.tokens / 1e6:.1f}M" if plan.tokens >= 1e5 else f"{plan.tokens / 1e3:.1f}K",
            str(plan.steps),
            "—" if plan.hours is None else f"{plan.hours:.2f}",
            "—" if plan.cost is None else f"${plan.cost:.2f}",
            "yes" if plan.fits else "NO",
        )
    return table


def budget_problems(grid_plan: GridPlan, grid: Grid) -> list[str]:
    """Why the grid is over its budget, each variable's values with their share of the
    time, so that the user sees what to trim; empty when within it."""
    over = []
    for field, limit, text in (
        ("hours", grid.budget.hours, "{:.2f} machine-hours"),
        ("cost", grid.budget.usd, "${:.2f}"),
    ):
        total = grid_plan.total(field)
        if limit is not None and total is not None and total > limit:
            over.append((field, text.format(total), text.format(limit)))
    if not over:
        return []
    field = over[0][0]
    lines = [f"the grid needs {total} against a budget of {limit}" for _, total, limit in over]
    for variable, values in grid.variables.items():
        if len(values) > 1:
            parts = ", ".join(
                f"{value} {grid_plan.share(variable, value, field):.2f}" for value in values
            )
            lines.append(f"variable {variable} ({field} per value): {parts}")
    if grid_plan.seeds > 1:
        lines.append(f"seeds: {grid_plan.seeds} (each one repeats every cell)")
    unplanned = [cell for cell, plan in grid_plan.plans.items() if not plan.fits]
    if unplanned:
        lines.append(f"cells that do not fit the card: {', '.join(unplanned)}")
    return lines


def prepared_up_to_date(step: FilterStep, out: Path, inputs: list[Path]) -> bool:
    """The filter wrote every tier, with these tiers and preset, after the input's last
    change."""
    stats_path = out / "stats.json"
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        return False
    options = stats.get("options") or {}
    return (
        all((out / f"top-{size}.jsonl").is_file() for size in step.tiers)
        and options.get("tiers") == step.tiers
        and options.get("preset") == step.preset
        and stats_path.stat().st_mtime >= max(path.stat().st_mtime for path in inputs)
    )


def prepare_data(name: str, grid: Grid, source: Path, console: Console) -> None:
    """The grid's prepare step (`just filter INPUT tiers=…` into `{prepared}`), unless
    its output is up to date."""
    if grid.prepare is None:
        return
    step, out = grid.prepare.filter, prepared_dir(name)
    inputs = [ROOT / part for part in step.input.split(",") if part]
    for path in inputs:
        if not path.is_file():
            raise TunerError(
                f"{source}: prepare.filter.input names {path}, which does not exist. Write "
                "the conversations there as the project's JSONL (experiments/README.md, "
                '"Data to prepare", shows how), or point the input at your own.'
            )
    if prepared_up_to_date(step, out, inputs):
        console.print(f"prepare: {out} is up to date with {step.input}.")
        return
    console.print(f"prepare: just filter {step.input} into {out}")
    tiers = ",".join(str(size) for size in step.tiers)
    run_in_infer("filter", step.input, f"tiers={tiers}", f"preset={step.preset}", f"out={out}")


def finished(run: Run, task: str, hardware: str, grid: Grid) -> bool:
    """Trained with the config this grid composes for it, on the same local data (a
    prepared tier written again from a changed input differs), evaluated with the grid's
    evaluation options, and timed generating where the grid asks: a changed grid,
    override or data runs it again."""
    from tuner.inference_speed import measured

    manifest = read_manifest(run.run_dir / "manifest.json") or {}
    results_path = run.results_path(task, grid)
    if manifest.get("status") != "completed" or not results_path.is_file():
        return False
    if grid.measure_inference and measured(run.run_dir) is None:
        return False
    with runs_folder(run.folder):
        recipe = compose(task, hardware, run.overrides)
    data = dataset_fingerprints(recipe.config.get("datasets") or [])
    settings = json.loads(results_path.read_text()).get("settings") or {}
    return (
        manifest.get("config_sha256") == sha256_text(recipe.to_yaml())
        and manifest.get("datasets") == data
        and all(settings.get(key) == value for key, value in grid.eval.items() if key in settings)
    )


def eval_options(grid: Grid) -> list[str]:
    options = {**grid.eval, "only": "tuned"}
    return [f"{key}={value}" for key, value in options.items()]


def run_one(run: Run, task: str, hardware: str, grid: Grid, fresh: bool) -> dict[str, float]:
    """Train (or resume) and evaluate one run; the seconds each took."""
    from tuner.train import train

    seconds = {}
    with runs_folder(run.folder):
        manifest = read_manifest(run.run_dir / "manifest.json") or {}
        start = time.monotonic()
        if fresh or manifest.get("status") != "completed":
            train(task, hardware, run.overrides, fresh=fresh)
        seconds["train_s"] = time.monotonic() - start
        if grid.measure_inference:
            from tuner.inference_speed import measure_inference

            start = time.monotonic()
            measure_inference(run.run_dir)
            seconds["inference_s"] = time.monotonic() - start
        start = time.monotonic()
        run_in_infer("eval", task, hardware, *eval_options(grid))
        seconds["eval_s"] = time.monotonic() - start
    return seconds


def read_timings(path: Path) -> dict[str, Any]:
    """Each run's seconds from earlier invocations; none where the file is missing or
    unreadable (it only feeds the rate shown and `just bench experiment`)."""
    try:
        timings = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return timings if isinstance(timings, dict) else {}


def run_experiment(name: str, hardware: str, arguments: list[str], console: Console) -> Path:
    own, overrides = split_options(arguments, EXPERIMENT_OPTIONS)
    options = parse_options(own, EXPERIMENT_OPTIONS, "experiment")
    experiment, source = load_experiment(name)
    grid = experiment.grid_for(hardware, source)
    prepare_data(name, grid, source, console)
    runs = expand(name, experiment.task, hardware, grid, overrides)
    grid_plan = plan_grid(experiment.task, hardware, runs, len(grid.seeds))
    cells = len(grid_plan.plans)
    console.print(
        plan_table(grid_plan, f"{name} on {hardware}: {cells} cells × {len(grid.seeds)} seeds")
    )
    hours, cost = grid_plan.total("hours"), grid_plan.total("cost")
    if hours is None:
        console.print(f"{len(runs)} runs; {hardware} has no throughput to time them with.")
    else:
        console.print(f"{len(runs)} runs: {hours:.2f} machine-hours, ${cost or 0:.2f} in all.")
    problems = budget_problems(grid_plan, grid)
    if problems:
        raise TunerError(
            f"{source}: over budget on {hardware}: "
            + "; ".join(problems)
            + ". Trim a variable's values or the seeds, or raise grid.budget."
        )
    if options["plan"] == "true":
        return experiment_dir(name)

    timings_path = experiment_dir(name) / "timings.json"
    timings = read_timings(timings_path)
    start = time.monotonic()
    for number, run in enumerate(runs, 1):
        label = f"[{number}/{len(runs)}] {run.cell} seed {run.seed}"
        if finished(run, experiment.task, hardware, grid):
            console.print(f"{label}: done before, skipped.")
            continue
        console.print(f"{label}: training and evaluating in {run.folder}")
        timings[f"{run.cell}/seed-{run.seed}"] = run_one(
            run, experiment.task, hardware, grid, options["fresh"] == "true"
        )
        per_run = sum(sum(t.values()) for t in timings.values()) / len(timings)
        left = (len(runs) - number) * per_run / 60
        console.print(f"{label}: done; {per_run:.0f} s per run, about {left:.0f} min left")
        timings_path.parent.mkdir(parents=True, exist_ok=True)
        partial = timings_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(timings, indent=2) + "\n")
        partial.replace(timings_path)
    report = write_report(name, hardware, experiment, grid, runs, grid_plan.plans, console)
    console.print(f"{name}: {time.monotonic() - start:.0f} s; report in {report}")
    return report
