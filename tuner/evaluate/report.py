"""`just report`: one Markdown report over every run folder (tasks × hardware) with
PNG plots — base vs tuned bars per benchmark, training-loss curves from the trainer's
state — a link to each run's TensorBoard events, and the data stages' statistics where
`data/` holds them; `report.json` beside it says the same for programs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.errors import TunerError
from tuner.project import data_dir, runs_dir
from tuner.train import loss_history


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as problem:
        raise TunerError(
            f"{path} is not valid JSON ({problem}). Re-run the stage that wrote it, or "
            "delete it to leave it out of the report."
        ) from None


def run_folders(root: Path) -> list[Path]:
    """Run folders: those a training run or an evaluation wrote into."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and ((p / "manifest.json").is_file() or (p / "eval").is_dir())
    )


def describe_run(run: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"run": run.name}
    if (run / "manifest.json").is_file():
        manifest = read_json(run / "manifest.json")
        for key in (
            "task",
            "hardware",
            "status",
            "base_model",
            "wall_time_s",
            "final_loss",
            "trackers",
        ):
            entry[key] = manifest.get(key)
    entry["loss"] = loss_history(run)
    # Where the trainer's TensorBoard callback writes (its logging_dir, output_dir/runs).
    if (run / "runs").is_dir():
        entry["tensorboard"] = str(run / "runs")
    comparison = run / "eval" / "comparison.json"
    if comparison.is_file():
        data = read_json(comparison)
        if "rows" not in data or "settings" not in data:
            raise TunerError(
                f"{comparison} lacks 'rows' or 'settings'; run `just eval` for this run again."
            )
        entry["comparison"] = data
    elif (run / "eval").is_dir():
        entry["evaluated"] = sorted(p.parent.name for p in (run / "eval").glob("*/results.json"))
    return entry


def data_statistics(root: Path) -> list[dict[str, Any]]:
    """Statistics the filter and preference stages wrote (`stats.json` beside their
    outputs), told apart by what they count."""
    found = []
    if root.is_dir():
        for stats in sorted(root.rglob("stats.json")):
            data = read_json(stats)
            kind = (
                "filter"
                if "removed_by_rule" in data
                else "preferences"
                if "pairs" in data
                else None
            )
            if kind:
                found.append({"kind": kind, "folder": str(stats.parent), **data})
    return found


def comparison_plot(entry: dict[str, Any], path: Path) -> None:
    """Base and tuned side by side, one panel per benchmark (their metrics have their
    own scales), with standard-error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in entry["comparison"]["rows"]:
        by_task.setdefault(row["task"], []).append(row)
    figure, axes = plt.subplots(1, len(by_task), figsize=(4.5 * len(by_task), 4.2), squeeze=False)
    width = 0.4
    for axis, (task, rows) in zip(axes[0], by_task.items(), strict=True):
        positions = range(len(rows))
        for offset, side in ((-width / 2, "base"), (width / 2, "tuned")):
            axis.bar(
                [p + offset for p in positions],
                [r[side] for r in rows],
                width,
                yerr=[r[f"{side}_stderr"] or 0 for r in rows],
                capsize=3,
                label=side,
            )
        axis.set_xticks(list(positions), [r["metric"] for r in rows], rotation=40, ha="right")
        axis.tick_params(axis="x", labelsize=7)
        axis.set_title(task, fontsize=9)
    axes[0][0].legend()
    figure.suptitle(f"{entry['run']}: base vs tuned")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def loss_plot(entry: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*entry["loss"], strict=True)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, losses, marker=".")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(f"{entry['run']}: training loss")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_section(entry: dict[str, Any], out: Path) -> list[str]:
    from tuner.evaluate.compare import Row, markdown_table

    lines = [f"## {entry['run']}", ""]
    if entry.get("status"):
        lines.append(
            f"Trained: {entry['status']}, base model `{entry.get('base_model')}`, "
            f"{entry.get('wall_time_s')} s, final loss {entry.get('final_loss')}."
        )
        lines.append("")
    if entry["loss"]:
        name = f"loss-{entry['run']}.png"
        loss_plot(entry, out / name)
        lines += [f"![training loss]({name})", ""]
    if entry.get("tensorboard"):
        events = entry["tensorboard"]
        others = [t for t in entry.get("trackers") or [] if t != "tensorboard"]
        lines += [
            f"Curves: TensorBoard events in [{events}]({os.path.relpath(events, out)}) "
            f"(`tensorboard --logdir {events}`)"
            + (f"; also logged to {', '.join(others)}." if others else "."),
            "",
        ]
    if "comparison" in entry:
        comparison = entry["comparison"]
        rows = [Row(**row) for row in comparison["rows"]]
        name = f"eval-{entry['run']}.png"
        if rows:
            comparison_plot(entry, out / name)
        settings = comparison["settings"]
        lines.append(
            f"Evaluation: {settings['suite']} suite ({settings['variant']}), "
            f"{settings['harness']}, backend {settings['backend']}, {settings['dtype']}, "
            f"chat template {'on' if settings['apply_chat_template'] else 'off'}, "
            f"seed {settings['seed']}, limit {settings['limit']}; identical for both models."
        )
        lines += ["", markdown_table(rows)]
        if rows:
            lines += [f"![base vs tuned]({name})", ""]
    elif entry.get("evaluated"):
        lines += [f"Evaluated ({', '.join(entry['evaluated'])}); no comparison yet.", ""]
    return lines


def data_section(stats: list[dict[str, Any]]) -> list[str]:
    lines = ["## Data stages", ""]
    for item in stats:
        if item["kind"] == "filter":
            lines.append(
                f"- filter `{item['folder']}`: {item['kept']} of {item['input_records']} kept "
                f"({item['kept_fraction']:.1%}); removed by rule: {item['removed_by_rule']}; "
                f"chart: `{item['folder']}/removals.png`"
            )
        else:
            lines.append(
                f"- preferences `{item['folder']}`: {item.get('pairs')} pairs from "
                f"{item.get('input_records')} prompts; dropped: {item.get('dropped')}; "
                f"histogram: `{item['folder']}/scores.png`"
            )
    return [*lines, ""]


def write_report(out: Path | None, console: Console) -> Path:
    runs = runs_dir()
    out = out or runs / "report"
    entries = [describe_run(run) for run in run_folders(runs) if run != out]
    stats = data_statistics(data_dir())
    if not entries and not stats:
        raise TunerError(
            f"Nothing to report: {runs} holds no run folders and {data_dir()} no filter or "
            "preference statistics. Train (`just train TASK HW`) or run `just demo` first."
        )
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Fine-tuning report", "", f"{len(entries)} runs from `{runs}`.", ""]
    with console.status("Plotting…"):
        for entry in entries:
            lines += run_section(entry, out)
        if stats:
            lines += data_section(stats)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "report.json").write_text(
        json.dumps({"runs": entries, "data": stats}, indent=2, default=str) + "\n"
    )
    return path
