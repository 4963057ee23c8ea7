"""Confidence intervals and significance: for an experiment's cells and comparisons,
and for each delta of `just eval`'s base-vs-tuned comparison (one pair of runs, the
bootstrap over its documents alone).

- A cell's value is the mean over its seeds of each seed's metric, with a Student t
  interval over the seeds (none for one seed: it says single-seed).
- A comparison (value b of a variable against value a) pairs the runs that differ only
  in that variable: same seed, same other values. Its difference is the mean over
  those pairs of b's metric minus a's. The interval and the p-value come from a paired
  hierarchical bootstrap: resample the pairs (seeds), then within each the documents,
  the same documents for a and b, and recompute the metric from the resampled
  documents (a corpus perplexity from the summed log-likelihoods and words, not a mean
  of per-document perplexities). The p-value is two-sided, from the bootstrap
  distribution shifted to the null (Berg-Kirkpatrick et al., 2012, "An Empirical
  Investigation of Statistical Significance in NLP", section 2.2): the share of
  resamples whose difference strays from the observed one by at least the observed
  difference. The interval is the matching symmetric one, the observed difference plus
  or minus the 95th percentile of that stray, so that it excludes 0 exactly when the
  uncorrected p-value is below 0.05 (up to the resamples' granularity).
- p-values across an experiment's comparisons are corrected with Benjamini-Hochberg
  (scipy.stats.false_discovery_control): the verdict "significant at 0.05" is read
  from the adjusted p-value."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

RESAMPLES = 2000
LEVEL = 0.95
ALPHA = 0.05
CORRECTION = "Benjamini-Hochberg (false discovery rate)"
TEST = (
    f"paired hierarchical bootstrap over seeds and documents, {RESAMPLES} resamples, "
    "two-sided, with the symmetric interval that matches it"
)


@dataclass(frozen=True)
class Documents:
    """One run's per-document scores of one metric: a value per document (`pairs` False)
    or a [log-likelihood, words or bytes] pair (`pairs` True), by doc_id."""

    metric: str
    by_doc: dict[str, Any]
    pairs: bool

    @classmethod
    def of(cls, metric: str, values: dict[str, Any]) -> Documents:
        """From a metric as the project's results.json holds it."""
        if values.get("per_sample_pairs"):
            return cls(metric, values["per_sample_pairs"], pairs=True)
        return cls(metric, values.get("per_sample") or {}, pairs=False)

    def array(self, docs: list[str]) -> np.ndarray:
        return np.asarray([self.by_doc[d] for d in docs], dtype=float)


def aggregate(metric: str, values: np.ndarray, pairs: bool) -> np.ndarray:
    """The metric (its name alone, or TASK/METRIC, or METRIC/FILTER) from per-document
    scores along the second-to-last axis of a (…, documents) or (…, documents, 2) array."""
    if not pairs:
        return values.mean(axis=-1)
    per_unit = -values[..., 0].sum(axis=-1) / values[..., 1].sum(axis=-1)
    if "bits_per_byte" in metric.split("/"):
        return per_unit / math.log(2)
    return np.exp(per_unit)


@dataclass(frozen=True)
class CellSummary:
    cell: str
    metric: str
    seeds: list[int]
    per_seed: list[float]
    mean: float
    low: float | None
    high: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize_cell(cell: str, metric: str, seeds: list[int], values: list[float]) -> CellSummary:
    mean = float(np.mean(values))
    low = high = None
    if len(values) > 1:
        spread = stats.sem(values)
        if spread > 0:
            low, high = stats.t.interval(LEVEL, len(values) - 1, loc=mean, scale=spread)
        else:
            low = high = mean
    return CellSummary(cell, metric, seeds, values, mean, low, high)


@dataclass(frozen=True)
class ComparisonResult:
    variable: str
    a: str
    b: str
    metric: str
    higher_is_better: bool
    pairs: int
    documents: int
    difference: float
    low: float
    high: float
    p_value: float
    p_adjusted: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < ALPHA

    def verdict(self) -> str:
        if not self.significant:
            return "not significant at 0.05"
        better = (self.difference > 0) == self.higher_is_better
        return f"significant at 0.05: {self.b} {'better' if better else 'worse'} than {self.a}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant, "verdict": self.verdict()}


def paired_bootstrap(
    metric: str,
    units: list[tuple[np.ndarray, np.ndarray]],
    pairs: bool,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """The observed difference (b - a, averaged over units) and its bootstrap
    distribution. `units`: per pair of runs, a's and b's scores on the same documents."""
    rng = np.random.default_rng(seed)
    observed = float(
        np.mean([aggregate(metric, b, pairs) - aggregate(metric, a, pairs) for a, b in units])
    )
    count = len(units)
    # differences[u, k]: unit u's difference under the document draw of slot k, so that
    # a unit drawn into two slots gets two independent document resamples.
    differences = np.empty((count, count, resamples))
    for u, (a, b) in enumerate(units):
        for k in range(count):
            docs = rng.integers(0, len(a), size=(resamples, len(a)))
            differences[u, k] = aggregate(metric, b[docs], pairs) - aggregate(
                metric, a[docs], pairs
            )
    picks = rng.integers(0, count, size=(resamples, count))
    slots = np.arange(count)
    return observed, differences[picks, slots, np.arange(resamples)[:, None]].mean(axis=1)


@dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap's verdict on b - a: the observed difference, the half-width of
    its symmetric interval, the two-sided p-value, and the standard deviation of the
    resampled differences (a standard error over everything resampled)."""

    difference: float
    half_width: float
    p_value: float
    stderr: float


def bootstrap_test(
    metric: str, units: list[tuple[np.ndarray, np.ndarray]], pairs: bool
) -> Bootstrap:
    observed, resampled = paired_bootstrap(metric, units, pairs)
    stray = np.abs(resampled - observed)
    p_value = (1 + np.count_nonzero(stray >= abs(observed))) / (1 + len(resampled))
    return Bootstrap(
        observed, float(np.quantile(stray, LEVEL)), float(p_value), float(resampled.std(ddof=1))
    )


def compare_runs(
    variable: str,
    a: str,
    b: str,
    metric: str,
    higher_is_better: bool,
    matched: list[tuple[Documents, Documents]],
) -> ComparisonResult:
    """b against a over the matched runs (each pair scored on the same documents)."""
    units = []
    documents = 0
    for first, second in matched:
        docs = sorted(set(first.by_doc) & set(second.by_doc))
        units.append((first.array(docs), second.array(docs)))
        documents += len(docs)
    test = bootstrap_test(metric, units, matched[0][0].pairs)
    return ComparisonResult(
        variable,
        a,
        b,
        metric,
        higher_is_better,
        len(units),
        documents,
        test.difference,
        test.difference - test.half_width,
        test.difference + test.half_width,
        test.p_value,
    )


def adjusted(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values, in the same order."""
    if not p_values:
        return []
    return [float(p) for p in stats.false_discovery_control(p_values, method="bh")]


def corrected(results: list[ComparisonResult]) -> list[ComparisonResult]:
    return [
        replace(r, p_adjusted=p)
        for r, p in zip(results, adjusted([r.p_value for r in results]), strict=True)
    ]
