"""`just smoke TASK HW [key=value …]`: a few real Axolotl steps on the rented card, before
the hours-long run, with the peak memory measured beside `just plan`'s estimate.

The config is the one `just train` composes, with the same overrides, changed only
where a short measurement needs it:
- `max_steps` a few steps;
- every batch padded to `sequence_len`, the longest a batch can be, which is what
  the plan assumes;
- no checkpoints or evaluation;
- the output in `runs/TASK-HW/smoke/`;
- the memory probe (tuner/memory_probe.py) as an Axolotl plugin.

With `random_weights=true` the base model is built from its config.json with random
weights (tuner/random_weights.py), so the check needs the config and the tokenizer, not
the weights. On `cpu` the measurement is the training process's resident memory: its
peak less what it held before the model loaded (Python and the libraries), against
the plan's host estimate. glibc runs with a fixed mmap threshold there, so every
freed tensor of 128 KiB or more goes back to the system at once and resident memory
follows the live tensors, as PyTorch's CUDA counters do. Under glibc's default the
freed memory stays resident and grows from step to step (4.3, then 5.4 GiB in two
steps of the embedded model at 3.3 GiB of live tensors): that measures the C
allocator, not the run.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tuner.containers import run_in_image, should_dispatch
from tuner.errors import TunerError
from tuner.hardware import check_machine, detect_gpus, gpu_profile
from tuner.launch import launcher_args
from tuner.logged import run_logged
from tuner.memory import GIB
from tuner.options import Option, choice, parse_options, positive_int, split_options
from tuner.plan import PLAN_OPTIONS, Plan, make_plan
from tuner.project import ROOT, portable
from tuner.random_weights import random_weights_folder
from tuner.recipes import ComposedRecipe, compose
from tuner.train import axolotl_env, ensure_base_model
from tuner.validation import validate

# The project's own options, beside Axolotl's keys as overrides.
SMOKE_OPTIONS = {
    "steps": Option(positive_int, 4, "training steps; the first is not timed"),
    "random_weights": Option(
        choice("true", "false"),
        "false",
        "true: build the base model from its config.json, no weights download",
    ),
}
PROBE = "tuner.memory_probe.MemoryProbe"
LIVE_TENSORS_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
HINT = "Nothing of the training run is touched: `just smoke` writes only runs/TASK-HW/smoke/."


@dataclass(frozen=True)
class Measured:
    """One device's peak (a GPU), or the host process's (cpu), in GiB."""

    where: str
    allocated: float
    reserved: float


@dataclass(frozen=True)
class SmokeResult:
    task: str
    hardware: str
    model: str
    random_weights: bool
    steps: int
    sequence_len: int
    tokens_per_step: int
    step_seconds: float  # the median step after the first, which warms up
    tokens_per_second: float
    estimated_allocated_gib: float
    estimated_reserved_gib: float
    band_upper_gib: float
    band: dict[str, Any] | None
    measured: list[Measured]
    within_band: bool
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def smoke_config(recipe_config: dict[str, Any], steps: int, out: Path) -> dict[str, Any]:
    config = dict(recipe_config)
    config.update(
        max_steps=steps,
        pad_to_sequence_len=True,
        save_strategy="no",
        val_set_size=0,
        eval_strategy="no",
        logging_steps=1,
        output_dir=portable(out),
        dataset_prepared_path=portable(out / "prepared"),
        plugins=[*(config.get("plugins") or []), PROBE],
    )
    config.pop("save_steps", None)
    config.pop("eval_steps", None)
    config.pop("resume_from_checkpoint", None)
    return config


def measurements(out: Path, cpu: bool) -> tuple[list[Measured], list[float]]:
    found = sorted(out.glob("memory-rank*.json"))
    if not found:
        raise TunerError(f"Axolotl finished, but its memory probe wrote nothing in {out}.")
    rows, steps = [], []
    for path in found:
        probe = json.loads(path.read_text())
        steps = steps or probe["step_seconds"]
        if cpu or "device" not in probe:
            held = (probe["peak_resident"] - probe["resident_before_model"]) / GIB
            rows.append(Measured("host process (resident)", round(held, 2), round(held, 2)))
        else:
            device = probe["device"]
            rows.append(
                Measured(
                    f"rank {probe['rank']}: {device['name']}",
                    round(device["allocated"] / GIB, 2),
                    round(device["reserved"] / GIB, 2),
                )
            )
    return rows, steps


def allocated_band(plan: Plan) -> tuple[float, float]:
    """The planned allocation corrected by the error band's two edges, in bytes."""
    allocated, band = plan.memory.allocated, plan.band
    if band is None:
        return allocated, allocated
    return allocated / (1 + max(band.high, 0.0)), band.upper(allocated)


def judge(plan: Plan, measured: list[Measured]) -> tuple[bool, str]:
    """Within the band: the largest device's allocation lies between the estimate
    corrected by the band's two edges. Fits: its reserved memory, with the CUDA
    context, is under the card's size."""
    memory = plan.memory
    peak = max(m.allocated for m in measured) * GIB
    low, high = allocated_band(plan)
    within = low <= peak <= high
    where = (
        "within the plan's band"
        if within
        else "above the plan's band: trust the measurement"
        if peak > high
        else "below the plan's band"
    )
    reserved = max(m.reserved for m in measured) + memory.cuda_context / GIB
    card = plan.card_gib or 0
    fits = f"fits: {reserved:.1f} of {card:.0f} GiB" if reserved <= card else "does not fit"
    return within, f"{where}; {fits}"


def run_axolotl(recipe: ComposedRecipe, out: Path, cpu: bool, console: Console) -> None:
    """Axolotl's preprocess and train on the smoke config, from a fresh output folder."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config_path = out / "config.yaml"
    config_path.write_text(recipe.to_yaml())
    env = axolotl_env(recipe)
    if cpu:
        env.update(LIVE_TENSORS_ENV)
    log = out / "axolotl.log"
    ensure_base_model(recipe, env, log)
    rel = os.path.relpath(config_path, ROOT)
    console.print(f"Smoke test: {recipe.config['max_steps']} steps → {out}")
    run_logged(["axolotl", "preprocess", rel], env, log, HINT)
    run_logged(["axolotl", "train", rel, *launcher_args(recipe)], env, log, HINT)


def result_of(
    recipe: ComposedRecipe,
    plan: Plan,
    random_weights: bool,
    measured: list[Measured],
    step_seconds: list[float],
) -> SmokeResult:
    config = recipe.config
    timed = step_seconds[1:] or step_seconds
    step = statistics.median(timed) if timed else 0.0
    sequence = int(config.get("sequence_len", 2048))
    sequences = int(config.get("micro_batch_size", 1)) * int(
        config.get("gradient_accumulation_steps", 1)
    )
    profile = gpu_profile(recipe.meta, recipe.hardware)
    rows = 2 if config.get("rl") else 1
    tokens = sequences * rows * sequence * (profile.count if profile else 1)
    within, verdict = judge(plan, measured)
    return SmokeResult(
        task=recipe.task,
        hardware=recipe.hardware,
        model=plan.model,
        random_weights=random_weights,
        steps=int(config["max_steps"]),
        sequence_len=sequence,
        tokens_per_step=tokens,
        step_seconds=round(step, 3),
        tokens_per_second=round(tokens / step, 1) if step else 0.0,
        estimated_allocated_gib=round(plan.memory.allocated / GIB, 2),
        estimated_reserved_gib=round(plan.memory.reserved / GIB, 2),
        band_upper_gib=round(allocated_band(plan)[1] / GIB, 2),
        band=asdict(plan.band) if plan.band else None,
        measured=measured,
        within_band=within,
        verdict=verdict,
    )


def smoke(task: str, hardware: str, arguments: list[str], console: Console) -> SmokeResult | None:
    """The measured result; None when it ran inside the hardware's image, which wrote
    and printed it."""
    own, overrides = split_options(arguments, SMOKE_OPTIONS)
    options = parse_options(own, SMOKE_OPTIONS, "smoke")
    if split_options(overrides, PLAN_OPTIONS)[0]:
        raise TunerError(f"smoke: {', '.join(PLAN_OPTIONS)} are `just plan`'s options.")
    draft = compose(task, hardware, overrides, formats=False)
    profile = gpu_profile(draft.meta, hardware)
    if profile is not None and should_dispatch():
        run_in_image(hardware, ["smoke", task, hardware, *arguments])
        return None
    if options["random_weights"] == "true":
        base = draft.config["base_model"]
        overrides = [*overrides, f"base_model={portable(random_weights_folder(str(base)))}"]

    recipe = compose(task, hardware, overrides)
    out = recipe.run_dir / "smoke"
    recipe = replace(recipe, config=smoke_config(recipe.config, options["steps"], out))
    report = validate(recipe)
    if not report.ok:
        raise TunerError(report.summary())
    if profile is not None:
        check_machine(hardware, profile, detect_gpus())
    plan = make_plan(task, hardware, overrides)
    run_axolotl(recipe, out, profile is None, console)
    random_weights = options["random_weights"] == "true"
    result = result_of(recipe, plan, random_weights, *measurements(out, profile is None))
    path = recipe.run_dir / "smoke.json"
    path.write_text(json.dumps(result.as_dict(), indent=2))
    print_smoke(result, console)
    console.print(f"Wrote {path}")
    return result


def print_smoke(result: SmokeResult, console: Console) -> None:
    table = Table(title=f"smoke: {result.task} on {result.hardware} ({result.model})")
    for column in ("where", "allocated GiB", "reserved GiB", "plan GiB", "plan's upper edge"):
        table.add_column(column, justify="right" if "GiB" in column or "edge" in column else "left")
    for row in result.measured:
        table.add_row(
            row.where,
            f"{row.allocated:.2f}",
            f"{row.reserved:.2f}",
            f"{result.estimated_allocated_gib:.2f}",
            f"{result.band_upper_gib:.2f}",
        )
    console.print(table)
    console.print(
        f"{result.steps} steps of {result.tokens_per_step:,} tokens: "
        f"{result.step_seconds:.2f} s a step, {result.tokens_per_second:,.0f} tokens/s."
    )
    console.print(("✓ " if result.within_band else "✗ ") + result.verdict)
