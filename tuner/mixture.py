"""Weighted mixtures of the project's record files (`data={a.jsonl: 0.7, b.jsonl: 0.3}`):
the research plan's mixing experiments, e.g. synthetic against human data at fixed
proportions. Axolotl concatenates datasets and has no per-dataset weights, so the
mixture is written as one file, deterministically from the run's seed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tuner.errors import TunerError
from tuner.records import read_records, write_records


def shares(weights: list[float], size: int) -> list[int]:
    """Records per source: proportional to the weights, rounded so they sum to `size`
    (largest remainders)."""
    total = sum(weights)
    exact = [w / total * size for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


def write_mixture(
    sources: dict[Path, float],
    schema: type[BaseModel],
    out: Path,
    seed: int,
    size: int | None = None,
) -> dict[str, Any]:
    """Draw each source's share (without replacement while it lasts; a source smaller
    than its share is repeated, then sampled), shuffle, and write `out` with a summary
    beside it (`out` with .json). The default size is all the sources' records together."""
    if not sources or any(not isinstance(w, int | float) or w <= 0 for w in sources.values()):
        raise TunerError(
            "data= as a mixture maps files to positive weights, e.g. "
            "data={synthetic.jsonl: 0.7, human.jsonl: 0.3}."
        )
    rng = random.Random(seed)
    records = {path: read_records(path, schema) for path in sources}
    size = size or sum(len(r) for r in records.values())
    mixture, summary = [], []
    for (path, weight), count in zip(
        sources.items(), shares(list(sources.values()), size), strict=True
    ):
        available = records[path]
        whole, rest = divmod(count, len(available))
        mixture += available * whole + rng.sample(available, rest)
        summary.append(
            {"path": str(path), "weight": weight, "available": len(available), "taken": count}
        )
    rng.shuffle(mixture)
    write_records(out, mixture)
    result = {"size": len(mixture), "seed": seed, "sources": summary}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return result
