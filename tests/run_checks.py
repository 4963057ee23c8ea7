"""Checks shared by the end-to-end tests on what a run folder holds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest


def trainer_log(run: Path) -> list[dict]:
    """The log history of the newest checkpoint of a run."""
    newest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((newest / "trainer_state.json").read_text())["log_history"]


def wandb_offline_history(run_file: Path) -> list[dict]:
    """The history rows (one per logged step, values as JSON text) of an offline W&B run.

    wandb 0.31 writes no wandb-summary.json offline and no longer ships a reader for its
    `.wandb` file, which is a LevelDB log: a 7-byte header, then 32 KiB blocks of chunks,
    each with a 7-byte header (CRC, length, kind: 1 whole record, 2-4 its first, middle
    and last parts), holding protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    raw, block, position, pending, rows = run_file.read_bytes(), 32768, 7, b"", []
    while position + 7 <= len(raw):
        if block - position % block < 7:  # the block's tail is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {item.key or "/".join(item.nested_key): item.value_json for item in items}
                )
    return rows


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
