"""Success criteria an experiment states for its cells (`grid.criteria`), checked in its
report: a metric's mean over seeds under (or over) a bound, training without NaNs or
loss spikes, and results that agree across seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuner.significance import CellSummary

# A logged loss this many times the median of the ten before it is a spike; the first
# ten logged steps (the steepest fall) are not judged.
SPIKE_FACTOR = 2.0
SPIKE_WINDOW = 10


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # metric → the bound each cell's mean over seeds must stay under, or over.
    below: dict[str, float] = {}
    above: dict[str, float] = {}
    # Every run's training loss finite, and no spike (see SPIKE_FACTOR).
    stable_training: bool = False
    # The largest spread of a cell's seeds, (max - min) / |mean|, on every metric.
    seed_spread: float | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Check:
    cell: str
    criterion: str
    value: str
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def loss_problems(losses: list[float]) -> list[str]:
    """What is wrong with one run's logged training losses: non-finite values, spikes."""
    problems = [
        f"loss {value} at logged step {i + 1}"
        for i, value in enumerate(losses)
        if not math.isfinite(value)
    ]
    for i in range(SPIKE_WINDOW, len(losses)):
        before = statistics.median(losses[i - SPIKE_WINDOW : i])
        if math.isfinite(losses[i]) and losses[i] > SPIKE_FACTOR * before:
            problems.append(
                f"spike to {losses[i]:.3g} at logged step {i + 1} (median {before:.3g})"
            )
    return problems


def check_cells(
    criteria: Criteria, cells: list[CellSummary], run_folders: dict[str, list[Path]]
) -> list[Check]:
    """Every criterion on every cell. `run_folders`: cell → its runs' folders (TASK-HW/)."""
    from tuner.train import loss_history

    checks = []
    for cell in dict.fromkeys(c.cell for c in cells):
        ours = {c.metric: c for c in cells if c.cell == cell}
        for metric, bound in criteria.below.items():
            mean = ours[metric].mean
            checks.append(Check(cell, f"{metric} < {bound:g}", f"{mean:.4g}", mean < bound))
        for metric, bound in criteria.above.items():
            mean = ours[metric].mean
            checks.append(Check(cell, f"{metric} > {bound:g}", f"{mean:.4g}", mean > bound))
        if criteria.stable_training:
            problems = []
            for folder in run_folders[cell]:
                losses = [loss for _, loss in loss_history(folder)]
                found = loss_problems(losses) if losses else ["no logged loss"]
                problems += [f"{folder.parent.name}: {p}" for p in found]
            value = "; ".join(problems) or f"{len(run_folders[cell])} runs, no NaN, no spike"
            checks.append(Check(cell, "stable training", value, not problems))
        if criteria.seed_spread is not None:
            for metric, summary in ours.items():
                if len(summary.per_seed) < 2:
                    checks.append(Check(cell, f"{metric} across seeds", "one seed", False))
                    continue
                spread = (max(summary.per_seed) - min(summary.per_seed)) / abs(summary.mean)
                checks.append(
                    Check(
                        cell,
                        f"{metric} across seeds within {criteria.seed_spread:.0%}",
                        f"{spread:.1%}",
                        spread <= criteria.seed_spread,
                    )
                )
    return checks


def criteria_markdown(checks: list[Check]) -> list[str]:
    if not checks:
        return []
    lines = ["## Success criteria", "", "| cell | criterion | value | |", "|---|---|---|---|"]
    for check in checks:
        mark = "pass" if check.passed else "FAIL"
        lines.append(f"| {check.cell} | {check.criterion} | {check.value} | {mark} |")
    return [*lines, ""]
