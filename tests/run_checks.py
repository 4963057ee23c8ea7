"""Checks shared by the end-to-end tests on what a run folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def trainer_log(run: Path) -> list[dict]:
    """The log history of the newest checkpoint of a run."""
    newest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((newest / "trainer_state.json").read_text())["log_history"]


def harness_results(eval_dir: Path, label: str) -> dict:
    """lm-eval's own results JSON for one model (one harness call per few-shot count;
    the local suites need one)."""
    [path] = (eval_dir / label).glob("call-0/*/results_*.json")
    return json.loads(path.read_text())["results"]


def assert_comparison_matches_the_harness_json(eval_dir: Path) -> dict:
    """Every row of the comparison recomputed from lm-eval's own results files."""
    comparison = json.loads((eval_dir / "comparison.json").read_text())
    base, tuned = harness_results(eval_dir, "base"), harness_results(eval_dir, "tuned")
    checked = 0
    for row in comparison["rows"]:
        key = f"{row['metric']},none"
        if key not in base.get(row["task"], {}):
            continue  # the project's own additions (distinct-n, judge scores)
        b, t = base[row["task"]][key], tuned[row["task"]][key]
        assert row["base"] == pytest.approx(b) and row["tuned"] == pytest.approx(t)
        assert row["delta"] == pytest.approx(t - b)
        if b:
            assert row["relative"] == pytest.approx((t - b) / abs(b))
        stderr = base[row["task"]].get(f"{row['metric']}_stderr,none")
        if isinstance(stderr, float):
            assert row["base_stderr"] == pytest.approx(stderr)
            assert row["delta_stderr"] is not None
        checked += 1
    assert checked >= 4, comparison["rows"]
    return comparison
