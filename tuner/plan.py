"""`just plan TASK HW`: before renting the card — will the composed recipe fit, how
many tokens and steps, how long and at what cost; and if it does not fit, which
overrides would make it.

Time comes from the training FLOPs over the card's peak dense 16-bit throughput at an
assumed utilisation (printed with the result): per token, the forward pass costs
2 FLOPs per weight of the linear layers and the LM head plus the causal attention
(2·L·s·h), the backward pass twice that for full fine-tuning, once that with an adapter
(no weight gradients for the frozen base), and gradient checkpointing adds a forward.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tuner.errors import TunerError
from tuner.hardware import GpuProfile, gpu_profile
from tuner.memory import GIB, Architecture, MemoryEstimate, Training, architecture_for, estimate
from tuner.options import (
    Option,
    fraction,
    non_negative,
    parse_options,
    positive_int,
    split_options,
)
from tuner.project import ROOT, local_file
from tuner.recipes import ComposedRecipe, compose, hardware_names, task_names
from tuner.references import ErrorBand, error_bands

# Characters per token when a local dataset is sized without its model's tokenizer.
CHARS_PER_TOKEN = 4.0
# Model FLOPs utilisation assumed for the time estimate; `mfu=` overrides it.
UTILISATION = {"16-bit": 0.40, "quantized": 0.25}
HEADROOM = 0.95  # of the card's memory: the driver and other processes keep some

# The project's own options, beside Axolotl's keys as overrides.
PLAN_OPTIONS = {
    "rows": Option(positive_int, None, "rows of data (local data is counted)"),
    "tokens_per_row": Option(positive_int, None, "tokens per row"),
    "price": Option(non_negative, None, "price per hour of the machine (the overlay's)"),
    "mfu": Option(fraction, None, "assumed model FLOPs utilisation, 0 to 1 (40 %; 25 % quantised)"),
}


@dataclass(frozen=True)
class Workload:
    rows: int
    tokens_per_row: float
    source: str


@dataclass(frozen=True)
class Plan:
    task: str
    hardware: str
    model: str
    memory: MemoryEstimate
    # The planner's error on the published rows of this method, and the resident peak
    # at the band's upper edge: "fits" means fits there.
    band: ErrorBand | None
    upper_gib: float
    card_gib: float | None
    fits: bool | None
    # Fits only with part of the paged optimizer states in CPU memory.
    paging: bool
    workload: Workload
    # Devices the run is spread over: the overlay's GPUs on each of `nodes` machines.
    nodes: int
    devices: int
    tokens: float
    steps: int
    hours: float | None
    cost: float | None
    utilisation: float
    price_per_hour: float | None
    suggestions: list[str]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory"] = {**self.memory.gib(), "phase": self.memory.phase}
        data["largest_part"] = self.memory.largest_part()
        return data


def model_for(recipe: ComposedRecipe) -> str:
    """The base model's name or folder; a recipe that starts from another task's merged
    model has that task's base model's shape."""
    model = str(recipe.config["base_model"])
    if recipe.starts_from and not (ROOT / model / "config.json").is_file():
        starts_from = compose(recipe.starts_from, recipe.hardware, formats=False)
        return str(starts_from.config["base_model"])
    return model


def local_files(config: dict[str, Any]) -> list[Path]:
    found = (local_file(str(d.get("path", ""))) for d in config.get("datasets") or [])
    return [path for path in found if path is not None]


def workload_for(recipe: ComposedRecipe, rows: int | None, tokens_per_row: int | None) -> Workload:
    """Rows and tokens per row: measured on local JSONL files, else the task's
    `tuner.dataset` sizes (from the dataset card), else what the user passes."""
    files = local_files(recipe.config)
    if files and rows is None:
        lines = [line for f in files for line in f.read_text().splitlines() if line.strip()]
        chars = sum(len(line) for line in lines)
        measured = Workload(len(lines), chars / CHARS_PER_TOKEN / max(len(lines), 1), "measured")
        return replace(measured, tokens_per_row=tokens_per_row or measured.tokens_per_row)
    known = recipe.meta.get("dataset") or {}
    rows = rows or known.get("rows")
    tokens_per_row = tokens_per_row or known.get("tokens_per_row")
    if not rows or not tokens_per_row:
        raise TunerError(
            f"The size of {recipe.task}'s data is unknown: pass rows=N tokens_per_row=M "
            "(or give the task `tuner.dataset: {rows, tokens_per_row}`)."
        )
    return Workload(int(rows), float(tokens_per_row), "dataset card" if known else "given")


def steps_and_tokens(config: dict[str, Any], workload: Workload, gpus: int) -> tuple[int, float]:
    """Optimizer steps, and the tokens the model processes (padding and packing
    included) over the run."""
    sequence = int(config.get("sequence_len", 2048))
    per_row = min(workload.tokens_per_row, sequence)
    batch = int(config.get("micro_batch_size", 1)) * int(
        config.get("gradient_accumulation_steps", 1)
    )
    epochs = float(config.get("num_epochs", 1))
    if config.get("sample_packing"):
        sequences = math.ceil(workload.rows * per_row / sequence)
        tokens_per_sequence = float(sequence)
    else:
        sequences = workload.rows
        tokens_per_sequence = per_row
    steps = math.ceil(sequences * epochs / (batch * gpus))
    if config.get("max_steps"):
        # Transformers' Trainer runs max_steps whatever the epochs: past the data's end
        # it starts over (TrainingArguments.max_steps, "overrides num_train_epochs").
        steps = int(config["max_steps"])
    return steps, steps * batch * gpus * tokens_per_sequence


def flops_per_token(arch: Architecture, training: Training, sequence: float) -> float:
    forward = 2.0 * (arch.linear_params + training.head_outputs(arch) * arch.hidden)
    forward += 2.0 * arch.layers * sequence * arch.hidden
    passes = 2.0 if training.adapter else 3.0
    if training.gradient_checkpointing:
        passes += 1.0
    return forward * passes


def upper_edge(memory: MemoryEstimate, band: ErrorBand | None) -> float:
    """The resident peak with the allocated part at the error band's upper edge."""
    allocated = memory.allocated
    resident = memory.resident
    return resident - allocated + (band.upper(allocated) if band else allocated)


def suggestions(
    arch: Architecture, training: Training, limit: float, cuda_context_gib: float
) -> list[str]:
    """Overrides, applied one after another in this order, until the estimate fits."""
    steps: list[tuple[str, Training]] = []
    current = training
    if not current.gradient_checkpointing:
        current = replace(current, gradient_checkpointing=True)
        steps.append(("gradient_checkpointing=true", current))
    if not (current.chunked_loss or current.chunked_upcast):
        current = replace(current, chunked_upcast=True)
        steps.append(("chunked_cross_entropy=true (the loss upcast a chunk at a time)", current))
    while current.micro_batch > 1:
        current = replace(current, micro_batch=current.micro_batch // 2)
        keep = "raise gradient_accumulation_steps to keep the batch"
        steps.append((f"micro_batch_size={current.micro_batch} ({keep})", current))
    if current.adapter == "lora" and current.weight_bits == 16:
        current = replace(current, adapter="qlora", weight_bits=4)
        steps.append(("adapter=qlora load_in_4bit=true", current))
    if current.optimizer in ("adamw", "adamw_8bit") and not current.paged_optimizer:
        current = replace(current, optimizer="adamw_8bit", paged_optimizer=True)
        steps.append(("optimizer=paged_adamw_8bit", current))
    while current.sequence_len > 512:
        current = replace(current, sequence_len=current.sequence_len // 2)
        steps.append((f"sequence_len={current.sequence_len}", current))
    chosen = []
    for override, candidate in steps:
        chosen.append(override)
        band = error_bands().get(candidate.method)
        if upper_edge(estimate(arch, candidate, cuda_context_gib), band) <= limit:
            return chosen
    return [*chosen, "nothing above fits: a card with more memory, or more GPUs with ZeRO-3"]


def make_plan(task: str, hardware: str, arguments: list[str]) -> Plan:
    own, overrides = split_options(arguments, PLAN_OPTIONS)
    options = parse_options(own, PLAN_OPTIONS, "plan")
    recipe = compose(task, hardware, overrides, formats=False)
    config = recipe.config
    profile: GpuProfile | None = gpu_profile(recipe.meta, hardware)
    gpus = (profile.count if profile else 1) * recipe.nodes
    model = model_for(recipe)
    arch = architecture_for(model)
    training = Training.from_config(config, gpus)
    context_gib = 0.5 if profile else 0.0
    memory = estimate(arch, training, context_gib)
    band = error_bands().get(training.method)
    upper = upper_edge(memory, band)
    card_gib = profile.memory_gib if profile else host_memory_gib()
    fits = upper <= card_gib * GIB * HEADROOM
    paging = fits and upper + memory.paged_optimizer > card_gib * GIB * HEADROOM
    workload = workload_for(recipe, options["rows"], options["tokens_per_row"])
    steps, tokens = steps_and_tokens(config, workload, gpus)
    quantized = training.weight_bits < 16
    utilisation = options["mfu"] or UTILISATION["quantized" if quantized else "16-bit"]
    hours = cost = None
    price = options["price"]
    if profile and profile.peak_tflops:
        sequence = float(config.get("sequence_len", 2048))
        flops = tokens * flops_per_token(arch, training, sequence)
        hours = flops / (profile.peak_tflops * 1e12 * gpus * utilisation) / 3600
        price = price if price is not None else profile.price_per_hour
        # The price is one machine's: each of the nodes costs it.
        cost = hours * price * recipe.nodes if price is not None else None
    advice = [] if fits else suggestions(arch, training, card_gib * GIB * HEADROOM, context_gib)
    return Plan(
        task=task,
        hardware=hardware,
        model=model,
        memory=memory,
        band=band,
        upper_gib=upper / GIB,
        card_gib=card_gib,
        fits=fits,
        paging=paging,
        workload=workload,
        nodes=recipe.nodes,
        devices=gpus,
        tokens=tokens,
        steps=steps,
        hours=hours,
        cost=cost,
        utilisation=utilisation,
        price_per_hour=price,
        suggestions=advice,
    )


def host_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def all_plans() -> list[Plan]:
    return [make_plan(t, h, []) for t in task_names() for h in hardware_names()]


def band_text(plan: Plan) -> str:
    band = plan.band
    if band is None:
        return "no published row of this method to measure the planner's error on"
    return (
        f"the planner's error on {band.rows} published {band.method} rows: "
        f"{band.low:+.0%} to {band.high:+.0%}, so up to {plan.upper_gib:.1f} GiB"
    )


def verdict(plan: Plan) -> str:
    upper = plan.upper_gib
    limit = (plan.card_gib or 0) * HEADROOM
    if plan.paging:
        paged = upper + plan.memory.paged_optimizer / GIB - limit
        return (
            f"fits by paging: up to {upper:.1f} of {plan.card_gib:.0f} GiB on the card, and up "
            f"to {paged:.1f} GiB of the paged optimizer states in CPU memory (slower steps)"
        )
    if plan.fits:
        return f"fits: up to {upper:.1f} of {plan.card_gib:.0f} GiB, {limit - upper:.1f} GiB spare"
    return f"does not fit: up to {upper:.1f} GiB over {limit:.1f} usable of {plan.card_gib:.0f} GiB"


def print_plan(plan: Plan, console: Console) -> None:
    memory = plan.memory
    title = f"{plan.task} on {plan.hardware}: peak memory per device ({plan.model})"
    table = Table(title=title, caption=f"the peak falls in the {memory.phase} phase")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for part, gib in memory.gib().items():
        table.add_row(part, f"{gib:.2f}")
    console.print(table)
    console.print(
        f"Estimate {memory.resident / GIB:.1f} GiB on the device ({band_text(plan)}); "
        f"the largest part: {memory.largest_part().replace('_', ' ')}."
    )
    console.print(("✓ " if plan.fits else "✗ ") + verdict(plan))
    for override in plan.suggestions:
        console.print(f"  try: {override}")
    w = plan.workload
    spread = f" over {plan.nodes} nodes, {plan.devices} devices" if plan.nodes > 1 else ""
    console.print(
        f"Data: {w.rows:,} rows × {w.tokens_per_row:,.0f} tokens ({w.source}); "
        f"{plan.tokens:,.0f} tokens to train in {plan.steps:,} steps{spread}."
    )
    if plan.hours is not None:
        machines = f" × {plan.nodes} machines" if plan.nodes > 1 else ""
        cost = f", about {plan.cost:,.2f} at {plan.price_per_hour}/h{machines}" if plan.cost else ""
        console.print(
            f"Time: about {plan.hours:,.1f} h at {plan.utilisation:.0%} of the card's peak "
            f"(an assumption: mfu= overrides it){cost}."
        )


def plans_table(plans: list[Plan]) -> Table:
    hardware = list(dict.fromkeys(p.hardware for p in plans))
    table = Table(
        title="Peak GiB per device (the band's upper edge) / card · hours · cost "
        "(just plan TASK HW for details)"
    )
    table.add_column("task")
    for name in hardware:
        table.add_column(name, justify="center")
    for task in dict.fromkeys(p.task for p in plans):
        cells = []
        for name in hardware:
            plan = next(p for p in plans if p.task == task and p.hardware == name)
            mark = "✓ paging" if plan.paging else "✓" if plan.fits else "✗"
            cell = f"{mark} {plan.upper_gib:.1f}/{plan.card_gib:.0f}"
            if plan.hours is not None:
                cell += f" · {plan.hours:.1f} h"
            if plan.cost:
                cell += f" · {plan.cost:.0f}"
            cells.append(cell)
        table.add_row(task, *cells)
    return table


def plans_json(plans: list[Plan]) -> str:
    return json.dumps([p.as_dict() for p in plans], indent=2, default=str)
