"""What the filter did, for a person and for the report: statistics that add up, a bar
chart of removals by rule, and quality tiers of the kept records."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuner.filter.rules import FilterPreset
from tuner.records import write_records


@dataclass(frozen=True)
class FilterStats:
    """What `just filter` kept and removed, written to stats.json. `removed_by_rule`
    counts every record a rule failed (a record may fail several); `removed_only_by_rule`
    those that rule alone removed. kept + rejected = input_records."""

    output: str
    inputs: list[str]
    input_records: int
    kept: int
    rejected: int
    kept_fraction: float
    removed_by_rule: dict[str, int]
    removed_only_by_rule: dict[str, int]
    # LSH candidates whose exact Jaccard with the record kept for their cluster fell
    # under the threshold: kept, and counted here to show what verification saved.
    near_duplicate_candidates_put_back: int
    tiers: dict[str, str]
    preset: dict[str, Any]
    options: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def statistics(
    output: Path,
    inputs: list[str],
    kept_records: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    preset: FilterPreset,
    options: dict[str, Any],
    tiers: dict[str, str],
) -> FilterStats:
    reasons = [r["meta"]["filter"]["rejected_by"] for r in rejected]
    put_back = sum(1 for r in kept_records if "lsh_candidate" in r["meta"]["filter"])
    by_rule = Counter(reason for record in reasons for reason in record)
    only_by = Counter(record[0] for record in reasons if len(record) == 1)
    return FilterStats(
        output=str(output),
        inputs=inputs,
        input_records=len(kept_records) + len(rejected),
        kept=len(kept_records),
        rejected=len(rejected),
        kept_fraction=round(len(kept_records) / (len(kept_records) + len(rejected)), 4),
        removed_by_rule=dict(by_rule.most_common()),
        removed_only_by_rule=dict(only_by.most_common()),
        near_duplicate_candidates_put_back=put_back,
        tiers=tiers,
        preset=preset.model_dump(),
        options=options,
    )


def write_tiers(out: Path, kept: list[dict[str, Any]], sizes: list[int]) -> dict[str, str]:
    """The top `size` kept records by quality score, one file per size, so that subsets
    of 10K, 100K or 1M can be compared by training on each."""
    ranked = sorted(kept, key=lambda r: r["meta"]["filter"]["quality"], reverse=True)
    files = {}
    for size in sorted(sizes):
        path = out / f"top-{size}.jsonl"
        write_records(path, ranked[:size])
        files[str(size)] = str(path)
    return files


def removals_chart(stats: FilterStats, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rules = list(stats.removed_by_rule)
    figure, axes = plt.subplots(figsize=(7, 0.5 * len(rules) + 1.8))
    positions = range(len(rules))
    axes.barh(positions, [stats.removed_by_rule[r] for r in rules], label="failed the rule")
    axes.barh(
        positions,
        [stats.removed_only_by_rule.get(r, 0) for r in rules],
        label="removed by this rule alone",
    )
    axes.set_yticks(list(positions), rules)
    axes.invert_yaxis()
    axes.set_xlabel("records")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(
        f"Removed {stats.rejected} of {stats.input_records} records "
        f"(kept {stats.kept_fraction:.0%})"
    )
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
