"""Base against tuned, metric by metric: both values with their standard errors, the
absolute and the relative delta with theirs.

With one training run, the delta's standard error is paired where both models scored
the same documents (the standard error of the per-document differences: base and tuned
answer the same questions, so their errors are correlated and the paired one is the
right, usually smaller, figure); otherwise the two standard errors combine as if
independent. With several training seeds (`seeds=N`), the tuned value is their mean,
its error the standard error over the seeds, and the delta's error the spread of the
bootstrap below. The relative delta's standard error treats the base value as the fixed
reference.

Each delta with per-document scores gets a two-sided p-value from a paired bootstrap
(tuner.significance): over the documents for one run, over the seeds and then the
documents for several, corrected across the rows with Benjamini-Hochberg.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

from rich.table import Table

from tuner.significance import ALPHA, Bootstrap, Documents, adjusted, bootstrap_test


@dataclass(frozen=True)
class Row:
    task: str
    metric: str
    base: float
    base_stderr: float | None
    tuned: float
    tuned_stderr: float | None
    delta: float
    delta_stderr: float | None
    relative: float | None
    relative_stderr: float | None
    higher_is_better: bool
    paired: bool
    documents: int | None
    # Training runs the tuned value is the mean of.
    seeds: int = 1
    p_value: float | None = None
    p_adjusted: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < ALPHA

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_stderr(values: list[float]) -> float | None:
    """The standard error of the mean of `values` (None for fewer than two)."""
    if len(values) < 2:
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def mean_metric(per_sample: dict[str, float], higher_is_better: bool) -> dict[str, Any]:
    """A metric that is the mean of its per-document scores, as results.json holds one."""
    values = list(per_sample.values())
    return {
        "value": statistics.fmean(values),
        "stderr": mean_stderr(values),
        "higher_is_better": higher_is_better,
        "per_sample": per_sample,
    }


def paired_stderr(base: dict[str, float], tuned: dict[str, float]) -> float | None:
    shared = sorted(set(base) & set(tuned))
    if len(shared) != len(base) or len(shared) != len(tuned):
        return None
    return mean_stderr([tuned[d] - base[d] for d in shared])


def combined_stderr(first: float | None, second: float | None) -> float | None:
    if first is None or second is None:
        return None
    return math.hypot(first, second)


def delta_test(metric: str, base: dict[str, Any], tuned: list[dict[str, Any]]) -> Bootstrap | None:
    """The paired bootstrap of tuned - base over the documents each seed's run and the
    base both scored: the seeds resampled, then the documents (one seed: the documents)."""
    first = Documents.of(metric, base)
    units = []
    for seed in tuned:
        second = Documents.of(metric, seed)
        docs = sorted(set(first.by_doc) & set(second.by_doc))
        if len(docs) < 2 or first.pairs != second.pairs:
            return None
        units.append((first.array(docs), second.array(docs)))
    return bootstrap_test(metric, units, first.pairs)


def with_significance(rows: list[Row], p_values: list[float | None]) -> list[Row]:
    tested = [i for i, p in enumerate(p_values) if p is not None]
    corrected = dict(zip(tested, adjusted([p_values[i] for i in tested]), strict=True))
    return [
        replace(row, p_value=p_values[i], p_adjusted=corrected.get(i)) for i, row in enumerate(rows)
    ]


def tuned_value(tuned: list[dict[str, Any]]) -> tuple[float, float | None]:
    """One run's value and standard error; over several seeds, their mean and its
    standard error over the seeds."""
    if len(tuned) == 1:
        return tuned[0]["value"], tuned[0]["stderr"]
    values = [seed["value"] for seed in tuned]
    return statistics.fmean(values), mean_stderr(values)


def compare(base: dict[str, Any], tuned: list[dict[str, Any]]) -> list[Row]:
    """Rows for every metric the base and every tuned run hold, in the base's order, each
    delta tested. `tuned`: the results of one training run, or of each seed's."""
    p_values: list[float | None] = []
    rows = []
    for task, base_task in base["tasks"].items():
        for metric, b in base_task["metrics"].items():
            t = [run["tasks"].get(task, {}).get("metrics", {}).get(metric) for run in tuned]
            if any(seed is None for seed in t):
                continue
            value, stderr = tuned_value(t)
            delta = value - b["value"]
            test = delta_test(metric, b, t)
            if len(t) == 1:
                paired = paired_stderr(b.get("per_sample") or {}, t[0].get("per_sample") or {})
            else:
                paired = test.stderr if test is not None else None
            delta_stderr = paired if paired is not None else combined_stderr(b["stderr"], stderr)
            relative = delta / abs(b["value"]) if b["value"] else None
            relative_stderr = (
                delta_stderr / abs(b["value"])
                if relative is not None and delta_stderr is not None
                else None
            )
            p_values.append(test.p_value if test is not None else None)
            rows.append(
                Row(
                    task=task,
                    metric=metric,
                    base=b["value"],
                    base_stderr=b["stderr"],
                    tuned=value,
                    tuned_stderr=stderr,
                    delta=delta,
                    delta_stderr=delta_stderr,
                    relative=relative,
                    relative_stderr=relative_stderr,
                    higher_is_better=bool(b.get("higher_is_better", True)),
                    paired=paired is not None,
                    documents=base_task.get("samples"),
                    seeds=len(t),
                )
            )
    return with_significance(rows, p_values)


def with_stderr(
    value: float | None,
    stderr: float | None,
    percent: bool = False,
    joiner: str = " ",
    mark: str = "",
) -> str:
    """`value ± stderr` (the terminal table puts the error on a line of its own), with
    `mark` after the value."""
    if value is None:
        return "—"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = (f"{value * scale:+.1f}{unit}" if percent else f"{value:.4g}") + mark
    if stderr is not None:
        text += joiner + (f"± {stderr * scale:.1f}{unit}" if percent else f"± {stderr:.2g}")
    return text


def cells(row: Row, joiner: str = " ") -> list[str]:
    """The row's values after its task and metric; a significant delta is starred."""
    return [
        with_stderr(row.base, row.base_stderr, joiner=joiner),
        with_stderr(row.tuned, row.tuned_stderr, joiner=joiner),
        with_stderr(row.delta, row.delta_stderr, joiner=joiner, mark=" *" * row.significant),
        with_stderr(row.relative, row.relative_stderr, percent=True, joiner=joiner),
    ]


def metric_name(row: Row) -> str:
    return f"{row.metric} {'↑' if row.higher_is_better else '↓'}"


HEADERS = ["task", "metric", "base", "tuned", "Δ", "Δ relative"]


def significance_note(rows: list[Row]) -> str:
    seeds = max((row.seeds for row in rows), default=1)
    if seeds == 1:
        return (
            "* significant at 0.05: paired bootstrap over the documents, Benjamini-Hochberg "
            "across the rows. One training run (a single seed): the spread between training "
            "seeds is not in these figures; `just eval … seeds=N` or `just experiment` runs seeds."
        )
    return (
        f"tuned: the mean of {seeds} training seeds, ± its standard error over them. Δ's error "
        "and * (significant at 0.05): paired bootstrap over the seeds, then the documents, "
        "Benjamini-Hochberg across the rows."
    )


def p_cell(row: Row) -> str:
    if row.p_value is None:
        return "—"
    return f"{row.p_value:.3g} ({row.p_adjusted:.3g})"


def markdown_table(rows: list[Row]) -> str:
    headers = [*HEADERS, "p (adjusted)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += [
        "| " + " | ".join([row.task, metric_name(row), *cells(row), p_cell(row)]) + " |"
        for row in rows
    ]
    return "\n".join(lines) + "\n\n" + significance_note(rows) + "\n"


def rich_table(rows: list[Row], title: str) -> Table:
    """Fits 80 columns: the task above its metric, each value above its error."""
    table = Table(title=title, caption=significance_note(rows))
    table.add_column("task / metric", no_wrap=True)
    for header in HEADERS[2:]:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(f"{row.task}\n{metric_name(row)}", *cells(row, joiner="\n"))
    return table
