"""The validity study (an experiment's `correlations:`): does a metric that costs nothing
rank the models as a costly one does? Every run of the grid is one model. For each
zero-cost metric and each costly one: Spearman's ρ over the models, with a percentile
bootstrap interval that resamples each metric's documents (all the models answered the
same documents) and recomputes every model's value from them, then ρ. Each metric is
first oriented by its `higher_is_better`, so that ρ > 0 means that the two agree on
which model is better.

The interval covers the noise of the metrics on a finite set of documents, not the
choice of models: with few models ρ takes few values, and the report says how many."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from tuner.errors import TunerError
from tuner.significance import LEVEL, RESAMPLES, Documents, aggregate

# ρ whose whole interval lies above this stands in for the costly metric; one whose
# interval lies above 0 agrees in direction only.
STANDS_IN = 0.7
HEATMAP = "correlations.png"


@dataclass(frozen=True)
class Correlation:
    zero_cost: str
    costly: str
    rho: float
    low: float
    high: float
    models: int
    # Every model scores the same on one of the two metrics: it ranks nothing.
    tied: bool

    @property
    def verdict(self) -> str:
        if self.tied:
            return "cannot tell: every model scores the same on one of the two"
        if self.low > STANDS_IN:
            return f"stands in (interval above {STANDS_IN})"
        if self.low > 0:
            return "agrees in direction only"
        if self.high < 0:
            return "ranks the models the other way"
        return "does not track it"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def resampled_values(
    metric: str, per_model: list[dict[str, Any]], resamples: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each model's value of `metric` (models,) and on every resample of its documents
    (models, resamples), oriented so that higher is better. `resamples` (resamples, n)
    holds uniform draws in [0, 1), scaled to each metric's count of documents: the
    metrics of the same documents draw the same ones. A metric
    without per-document scores (distinct-n) keeps its value in every resample."""
    sign = 1.0 if per_model[0].get("higher_is_better", True) else -1.0
    values = np.array([float(m["value"]) for m in per_model])
    documents = [Documents.of(metric, m) for m in per_model]
    shared = sorted(set.intersection(*(set(d.by_doc) for d in documents)), key=str)
    if not shared:
        return sign * values, sign * np.repeat(values[:, None], len(resamples), axis=1)
    picks = (resamples[:, : len(shared)] * len(shared)).astype(int)
    drawn = np.stack([d.array(shared)[picks] for d in documents])
    return sign * values, sign * aggregate(metric, drawn, documents[0].pairs)


def spearman_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ρ of x[:, j] with y[:, j] for every column j: Pearson's r of the ranks (ties
    share their mean rank); 0 where either side ranks nothing."""
    rx, ry = rankdata(x, axis=0), rankdata(y, axis=0)
    rx, ry = rx - rx.mean(axis=0), ry - ry.mean(axis=0)
    norms = np.sqrt((rx**2).sum(axis=0) * (ry**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=0) / norms
    return np.where(norms > 0, rho, 0.0)


def correlate(
    zero_cost: list[str],
    costly: list[str],
    measured: list[dict[str, dict[str, Any]]],
    seed: int,
) -> list[Correlation]:
    """`measured`: per model, TASK/METRIC → the metric as its results.json holds it."""
    if len(measured) < 3:
        raise TunerError(
            f"correlations need at least 3 models (runs of the grid); it has {len(measured)}. "
            "Add values to a variable or seeds."
        )
    # One set of draws for every metric: a document's draw is shared where metrics share it.
    metrics = (*zero_cost, *costly)
    longest = max(len(Documents.of(m, measured[0][m]).by_doc) or 1 for m in metrics)
    draws = np.random.default_rng(seed).random((RESAMPLES, longest))
    found = {
        metric: resampled_values(metric, [model[metric] for model in measured], draws)
        for metric in metrics
    }
    tail = (1 - LEVEL) / 2
    results = []
    for z in zero_cost:
        for c in costly:
            (z_value, z_drawn), (c_value, c_drawn) = found[z], found[c]
            rho = float(spearman_columns(z_value[:, None], c_value[:, None])[0])
            spread = spearman_columns(z_drawn, c_drawn)
            low, high = np.quantile(spread, [tail, 1 - tail])
            tied = bool(np.ptp(z_value) == 0 or np.ptp(c_value) == 0)
            results.append(Correlation(z, c, rho, float(low), float(high), len(measured), tied))
    return results


def correlations_markdown(found: list[Correlation]) -> list[str]:
    models = found[0].models
    lines = [
        "## Zero-cost metrics against the costly ones",
        "",
        f"Spearman's ρ over the {models} models (the grid's runs), each metric oriented so "
        f"that higher is better; {LEVEL:.0%} interval from a percentile bootstrap over the "
        f"documents ({RESAMPLES} resamples). A zero-cost metric stands in for a costly one "
        f"when its whole interval lies above {STANDS_IN}. With {models} models ρ takes few "
        "values, and the interval does not cover the choice of models.",
        "",
        f"![correlations]({HEATMAP})",
        "",
        f"| zero-cost | costly | ρ | {LEVEL:.0%} CI | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in found:
        lines.append(
            f"| {r.zero_cost} | {r.costly} | {r.rho:+.2f} | [{r.low:+.2f}, {r.high:+.2f}] "
            f"| {r.verdict} |"
        )
    lines += ["", "### Conclusion", ""]
    for costly in dict.fromkeys(r.costly for r in found):
        ours = [r for r in found if r.costly == costly]
        standing = [r for r in ours if r.low > STANDS_IN and not r.tied]
        ranking = [r for r in ours if not r.tied]
        if standing:
            names = ", ".join(f"{r.zero_cost} (ρ {r.rho:+.2f})" for r in standing)
            lines.append(f"- {costly}: {names} can stand in for it.")
        elif not ranking:
            lines.append(
                f"- {costly}: cannot tell; on every pair one metric scores all the models "
                "the same (a task too hard or too easy for them, or too few documents)."
            )
        else:
            best = max(ranking, key=lambda r: r.low)
            lines.append(
                f"- {costly}: no zero-cost metric stands in for it; the closest is "
                f"{best.zero_cost}, ρ {best.rho:+.2f} [{best.low:+.2f}, {best.high:+.2f}] "
                f"({best.verdict})."
            )
    tied = sorted(
        {
            r.zero_cost
            for r in found
            if r.tied and r.zero_cost not in {t.zero_cost for t in found if not t.tied}
        }
    )
    if tied:
        lines.append(
            f"- {', '.join(tied)}: in no pair do both sides rank the models (every model "
            "scores the same on one of them)."
        )
    return [*lines, ""]


def plot_heatmap(found: list[Correlation], path: Path) -> None:
    """ρ of every zero-cost (rows) and costly (columns) pair, its interval written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(r.zero_cost for r in found))
    columns = list(dict.fromkeys(r.costly for r in found))
    # A tied pair ranks nothing: left blank, not drawn as ρ 0.
    grid = np.array(
        [[np.nan if r.tied else r.rho for r in found if r.zero_cost == z] for z in rows]
    )
    figure, axes = plt.subplots(figsize=(2.2 * len(columns) + 3, 0.55 * len(rows) + 1.6))
    image = axes.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for r in found:
        y, x = rows.index(r.zero_cost), columns.index(r.costly)
        text = "tied" if r.tied else f"{r.rho:+.2f}\n[{r.low:+.2f}, {r.high:+.2f}]"
        axes.text(x, y, text, ha="center", va="center", fontsize=7)
    axes.set_xticks(range(len(columns)), columns, rotation=15, ha="right", fontsize=8)
    axes.set_yticks(range(len(rows)), rows, fontsize=8)
    axes.set_title(f"Spearman's ρ over {found[0].models} models, {LEVEL:.0%} CI")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
