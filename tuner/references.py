"""The planner against published peak-memory measurements (bench/published-memory.yaml):
each row's estimate as its source counts, the relative error, and from those errors
the band per method that `just plan` prints beside its estimate."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Literal

import yaml

from tuner.errors import TunerError
from tuner.memory import GIB, MemoryEstimate, Training, architecture_for, estimate
from tuner.project import ROOT

PUBLISHED = ROOT / "bench" / "published-memory.yaml"
TARGET = 0.2  # every estimate within 20 % of its figure


@dataclass(frozen=True)
class Reference:
    name: str
    source: str
    model: str
    measured: float
    unit: Literal["GiB", "GB"]
    counter: Literal["allocated", "active", "reserved", "unstated"]
    training: Training
    unstated: tuple[str, ...] = ()
    not_modelled: str | None = None
    # Where the source's framework builds the model otherwise than its config.json
    # says (LitGPT never ties the LM head to the embedding when fine-tuning).
    shape: dict[str, Any] = field(default_factory=dict)

    def estimate(self, training: Training | None = None) -> MemoryEstimate:
        architecture = replace(architecture_for(self.model), **self.shape)
        return estimate(architecture, training or self.training)

    def as_counted(self, training: Training | None = None) -> float:
        """The estimate in the source's unit and counter: PyTorch's counters see
        neither the CUDA context nor managed memory (paged optimizer states)."""
        memory = self.estimate(training)
        value = memory.reserved if self.counter == "reserved" else memory.allocated
        return value / (GIB if self.unit == "GiB" else 1e9)

    def matching(self, key: str) -> int | None:
        """The value of an unstated setting at which the estimate equals the figure
        (the estimate grows with batch and length), found by bisection."""
        low, high = 1, 1 << 20
        if self.as_counted(replace(self.training, **{key: high})) < self.measured:
            return None
        while low < high:
            middle = (low + high) // 2
            if self.as_counted(replace(self.training, **{key: middle})) < self.measured:
                low = middle + 1
            else:
                high = middle
        return low


@dataclass(frozen=True)
class Comparison:
    reference: Reference
    estimated: float
    error: float  # estimate / figure - 1
    matching: dict[str, int | None] = field(default_factory=dict)

    @property
    def within_target(self) -> bool:
        return abs(self.error) <= TARGET

    def as_dict(self) -> dict[str, Any]:
        ref = self.reference
        memory = ref.estimate()
        row: dict[str, Any] = {
            "name": ref.name,
            "source": ref.source,
            "model": ref.model,
            "method": ref.training.method,
            "gpus": ref.training.gpus,
            "counter": ref.counter,
            "measured": ref.measured,
            "unit": ref.unit,
            "estimated": round(self.estimated, 2),
            "relative_error": round(self.error, 3),
            "within_20_percent": self.within_target,
            "breakdown_gib": memory.gib(),
            "peak_phase": memory.phase,
        }
        if self.matching:
            row["unstated_value_matching_figure"] = self.matching
        if ref.not_modelled and not self.within_target:
            row["why_it_misses"] = ref.not_modelled
        return row


def load_references() -> list[Reference]:
    try:
        rows = yaml.safe_load(PUBLISHED.read_text())
        return [
            Reference(
                **{k: v for k, v in row.items() if k not in ("training", "unstated")},
                training=Training(**row["training"]),
                unstated=tuple(row.get("unstated", ())),
            )
            for row in rows
        ]
    except (yaml.YAMLError, TypeError, KeyError) as error:
        raise TunerError(
            f"{PUBLISHED.relative_to(ROOT)}: a row does not parse ({error})."
        ) from None


@cache
def comparisons() -> tuple[Comparison, ...]:
    found = []
    for ref in load_references():
        estimated = ref.as_counted()
        matching = {key: ref.matching(key) for key in ref.unstated[:1]}
        found.append(Comparison(ref, estimated, estimated / ref.measured - 1, matching))
    return tuple(found)


@dataclass(frozen=True)
class ErrorBand:
    """The relative errors measured on the reference rows of one method."""

    method: str
    low: float
    high: float
    rows: int

    def upper(self, estimated: float) -> float:
        """The largest true value the band allows: where the planner underestimated
        most, the truth was estimate / (1 + error)."""
        return estimated / (1 + min(self.low, 0.0))


@cache
def error_bands() -> dict[str, ErrorBand]:
    """Per method, from every row: a row the planner misses for a reason it names
    still says how far a real run can be from the estimate."""
    by_method: dict[str, list[float]] = {}
    for comparison in comparisons():
        by_method.setdefault(comparison.reference.training.method, []).append(comparison.error)
    return {
        method: ErrorBand(method, min(errors), max(errors), len(errors))
        for method, errors in by_method.items()
    }
