"""An experiment's results: `results.json` (every run's metrics, each cell's mean over
seeds with its interval, each comparison with its test), `report.md` and one PNG per
metric, in `runs/experiments/NAME/`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.errors import TunerError
from tuner.experiments.criteria import check_cells, criteria_markdown
from tuner.experiments.spec import Experiment, Grid, Run, experiment_dir
from tuner.experiments.validity import HEATMAP, correlate, correlations_markdown, plot_heatmap
from tuner.inference_speed import measured
from tuner.manifest import read_manifest
from tuner.plan import Plan
from tuner.significance import (
    CORRECTION,
    LEVEL,
    TEST,
    CellSummary,
    ComparisonResult,
    Documents,
    compare_runs,
    corrected,
    summarize_cell,
)

CURVES = "training-loss.png"
# (cell, seed) → TASK/METRIC → the metric as the run's evaluation wrote it.
Measured = dict[tuple[str, int], dict[str, dict[str, Any]]]


def run_metrics(run: Run, task: str, grid: Grid) -> dict[str, dict[str, Any]]:
    """TASK/METRIC → the metric as the run's evaluation wrote it."""
    path = run.results_path(task, grid)
    if not path.is_file():
        raise TunerError(f"{path} is missing: run the experiment again to evaluate that run.")
    results = json.loads(path.read_text())
    return {
        f"{name}/{metric}": values
        for name, benchmark in results["tasks"].items()
        for metric, values in benchmark["metrics"].items()
    }


def metric_of(measured: dict[str, dict[str, Any]], metric: str, run: Run) -> dict[str, Any]:
    if metric not in measured:
        raise TunerError(
            f"{run.folder}: its evaluation has no {metric}; it has {', '.join(sorted(measured))}."
        )
    return measured[metric]


def summaries(metrics: list[str], runs: list[Run], measured: Measured) -> list[CellSummary]:
    cells = list(dict.fromkeys(run.cell for run in runs))
    found = []
    for metric in metrics:
        for cell in cells:
            of_cell = [run for run in runs if run.cell == cell]
            values = [float(metric_of(measured[r.key], metric, r)["value"]) for r in of_cell]
            found.append(summarize_cell(cell, metric, [r.seed for r in of_cell], values))
    return found


def comparisons(grid: Grid, runs: list[Run], measured: Measured) -> list[ComparisonResult]:
    results = []
    for comparison in grid.comparisons:
        variable = comparison.variable

        def rest(run: Run, variable: str = variable) -> tuple:
            return (run.seed, *(v for k, v in run.values.items() if k != variable))

        side_a = {rest(r): r for r in runs if r.values[variable] == comparison.a}
        side_b = {rest(r): r for r in runs if r.values[variable] == comparison.b}
        matched = []
        for key in sorted(set(side_a) & set(side_b)):
            a, b = side_a[key], side_b[key]
            matched.append(
                tuple(
                    Documents.of(
                        comparison.metric, metric_of(measured[r.key], comparison.metric, r)
                    )
                    for r in (a, b)
                )
            )
        if not matched or not all(a.by_doc and b.by_doc for a, b in matched):
            raise TunerError(
                f"{comparison.metric} has no per-document scores to test the comparison "
                f"{variable}={comparison.b} against {comparison.a} with."
            )
        some = next(iter(side_a.values()))
        better = metric_of(measured[some.key], comparison.metric, some).get(
            "higher_is_better", True
        )
        results.append(
            compare_runs(
                variable, comparison.a, comparison.b, comparison.metric, bool(better), matched
            )
        )
    return corrected(results)


def interval(low: float | None, high: float | None) -> str:
    return "single seed" if low is None else f"[{low:.4g}, {high:.4g}]"


def markdown(
    name: str,
    hardware: str,
    experiment: Experiment,
    grid: Grid,
    cells: list[CellSummary],
    tested: list[ComparisonResult],
) -> str:
    lines = [f"# {name} on {hardware}", "", experiment.description, ""]
    if grid.note:
        lines += [f"At this scale: {grid.note}", ""]
    for metric in grid.reported_metrics:
        lines += [
            f"## {metric}",
            "",
            f"![{metric}]({plot_name(metric)})",
            "",
            f"| cell | seeds | per seed | mean | {LEVEL:.0%} CI (t over seeds) |",
            "|---|---|---|---|---|",
        ]
        for cell in (c for c in cells if c.metric == metric):
            per_seed = ", ".join(f"{v:.4g}" for v in cell.per_seed)
            lines.append(
                f"| {cell.cell} | {len(cell.seeds)} | {per_seed} | {cell.mean:.4g} | "
                f"{interval(cell.low, cell.high)} |"
            )
        lines.append("")
    if tested:
        lines += [
            "## Comparisons",
            "",
            f"Test: {TEST}. Correction across the {len(tested)} comparisons: {CORRECTION}.",
            "",
            "| comparison | metric | pairs | b - a | 95 % CI | p | p adjusted | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in tested:
            lines.append(
                f"| {r.variable}: {r.b} vs {r.a} | {r.metric} | {r.pairs} | {r.difference:+.4g} "
                f"| [{r.low:.4g}, {r.high:.4g}] | {r.p_value:.3g} | {r.p_adjusted:.3g} "
                f"| {r.verdict()} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_name(metric: str) -> str:
    return metric.replace("/", "__") + ".png"


def plot(metric: str, cells: list[CellSummary], path: Path) -> None:
    """Each cell's mean with its interval, and every seed's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [c for c in cells if c.metric == metric]
    figure, axes = plt.subplots(figsize=(max(4, 1.2 * len(ours)), 3.5))
    for x, cell in enumerate(ours):
        low = cell.mean - cell.low if cell.low is not None else 0
        high = cell.high - cell.mean if cell.high is not None else 0
        axes.errorbar([x], [cell.mean], yerr=[[low], [high]], fmt="o", capsize=6, color="C0")
        axes.scatter([x] * len(cell.per_seed), cell.per_seed, color="C1", s=12, zorder=3)
    axes.set_xticks(range(len(ours)), [c.cell for c in ours], rotation=20, ha="right")
    axes.set_ylabel(metric)
    axes.set_title(f"mean over seeds, {LEVEL:.0%} CI; dots: seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def training_record(run: Run) -> dict[str, Any]:
    """What one run's training measured: its wall time, last training and evaluation
    losses, and what it trained (the manifest's parameter counts and bytes saved)."""
    from tuner.train import loss_history

    manifest = read_manifest(run.run_dir / "manifest.json") or {}
    evaluated = loss_history(run.run_dir, "eval_loss")
    speed = measured(run.run_dir)
    return {
        "seed": run.seed,
        "training_s": manifest.get("wall_time_s"),
        "train_loss": manifest.get("final_loss"),
        "eval_loss": evaluated[-1][1] if evaluated else None,
        "inference_tokens_per_s": speed.tokens_per_second if speed else None,
        "weights": manifest.get("trained_weights"),
    }


def costs(runs: list[Run], plans: dict[str, Plan]) -> list[dict]:
    """Per cell: the planner's peak memory at its band's upper edge, and what each
    seed's training measured."""
    return [
        {
            "cell": cell,
            "planned_peak_gib": round(plan.upper_gib, 2),
            "planned_hours": plan.hours,
            "runs": [training_record(r) for r in runs if r.cell == cell],
        }
        for cell, plan in plans.items()
    ]


def mean_of(records: list[dict], key: str) -> str:
    values = [r[key] for r in records if r[key] is not None]
    return f"{sum(values) / len(values):.4g}" if values else "—"


def costs_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "## Training",
        "",
        "Per cell, the mean over its seeds; the trained parameters and bytes saved are the",
        "first seed's (every seed trains the same shapes). Inference: tokens/s generating",
        "with transformers at batch size 1, where the experiment measures it.",
        "",
        "| cell | planned peak (GiB) | time (s) | train loss | eval loss | inference "
        "(tok/s) | trained parameters | share of the base | saved (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        weights = next((r["weights"] for r in row["runs"] if r["weights"]), None) or {}
        trained = weights.get("trainable_parameters")
        fraction = weights.get("trainable_fraction")
        saved = weights.get("saved_bytes")
        lines.append(
            f"| {row['cell']} | {row['planned_peak_gib']:.1f} | "
            f"{mean_of(row['runs'], 'training_s')} | {mean_of(row['runs'], 'train_loss')} | "
            f"{mean_of(row['runs'], 'eval_loss')} | "
            f"{mean_of(row['runs'], 'inference_tokens_per_s')} | "
            f"{'—' if trained is None else f'{trained:,}'} | "
            f"{'—' if fraction is None else f'{fraction:.3%}'} | "
            f"{'—' if saved is None else f'{saved / 1e6:.3g}'} |"
        )
    return [*lines, "", f"![training loss]({CURVES})", ""]


def plot_curves(runs: list[Run], path: Path) -> None:
    """Every run's training loss against its step, one colour per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuner.train import loss_history

    cells = list(dict.fromkeys(run.cell for run in runs))
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for run in runs:
        history = loss_history(run.run_dir)
        if history:
            steps, losses = zip(*history, strict=True)
            colour = f"C{cells.index(run.cell)}"
            axes.plot(steps, losses, color=colour, alpha=0.8, linewidth=1)
    for index, cell in enumerate(cells):
        axes.plot([], [], color=f"C{index}", label=cell)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("training loss, one line per seed")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    name: str,
    hardware: str,
    experiment: Experiment,
    grid: Grid,
    runs: list[Run],
    plans: dict[str, Plan],
    console: Console,
) -> Path:
    measured = {run.key: run_metrics(run, experiment.task, grid) for run in runs}
    cells = summaries(grid.reported_metrics, runs, measured)
    tested = comparisons(grid, runs, measured)
    folders: dict[str, list[Path]] = {}
    for run in runs:
        folders.setdefault(run.cell, []).append(run.run_dir)
    checks = check_cells(grid.criteria, cells, folders)
    out = experiment_dir(name)
    spent = costs(runs, plans)
    results = {
        "experiment": name,
        "hardware": hardware,
        "task": experiment.task,
        "test": TEST,
        "correction": CORRECTION,
        "runs": [
            {
                "cell": run.cell,
                "values": run.values,
                "seed": run.seed,
                "folder": str(run.run_dir),
                "metrics": {m: measured[run.key][m]["value"] for m in grid.reported_metrics},
            }
            for run in runs
        ],
        "cells": [cell.to_json() for cell in cells],
        "costs": spent,
        "criteria": [check.to_json() for check in checks],
        "comparisons": [result.to_json() for result in tested],
    }
    related = []
    if grid.correlations:
        models = [measured[run.key] for run in runs]
        related = correlate(grid.correlations.zero_cost, grid.correlations.costly, models, 0)
        results["correlations"] = [r.to_json() for r in related]
        plot_heatmap(related, out / HEATMAP)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for metric in grid.reported_metrics:
        plot(metric, cells, out / plot_name(metric))
    plot_curves(runs, out / CURVES)
    path = out / "report.md"
    text = markdown(name, hardware, experiment, grid, cells, tested)
    sections = criteria_markdown(checks) + costs_markdown(spent)
    if related:
        sections = correlations_markdown(related) + sections
    path.write_text(text + "\n" + "\n".join(sections))
    for result in tested:
        console.print(
            f"{result.variable}: {result.b} vs {result.a} on {result.metric}: "
            f"{result.difference:+.4g} [{result.low:.4g}, {result.high:.4g}], "
            f"p={result.p_value:.3g} (adjusted {result.p_adjusted:.3g}): {result.verdict()}"
        )
    return path
