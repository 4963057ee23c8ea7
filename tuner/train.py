"""Run a composed recipe with Axolotl and record the run.

Axolotl runs as a subprocess of this environment's own `axolotl` command, from the
repository root, on the config written to `runs/TASK-HW/config.yaml`: exactly what a
user could run by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.chat import chat_format, facts_for, saved_chat, stop_on_end_of_turn
from tuner.containers import driver_problem, host_driver, in_image, run_in_image, should_dispatch
from tuner.doctor import multi_gpu_preflight, unified_memory_preflight
from tuner.errors import TunerError
from tuner.hardware import check_machine, detect_gpus, gpu_profile
from tuner.launch import Rendezvous, launcher_args, multi_process, rendezvous
from tuner.logged import run_logged
from tuner.manifest import (
    dataset_fingerprints,
    git_commit,
    library_versions,
    read_manifest,
    sha256_text,
    write_manifest,
)
from tuner.options import parse_options, split_options
from tuner.parameters import trained_weights
from tuner.project import ROOT, portable, run_dir, runs_folder
from tuner.recipes import RECIPE_OPTIONS, ComposedRecipe, compose
from tuner.seeds import SEEDS_KEY, SEEDS_OPTIONS, seed_runs
from tuner.tracking import UNTRACKED, Trackers, chosen_trackers
from tuner.validation import validate

console = Console(stderr=True, soft_wrap=True)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Offline, quiet defaults; a value the user already set wins.
DEFAULT_ENV = {
    "AXOLOTL_DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Axolotl's output reaches the console and the run's log as it happens, not in
    # blocks (a killed run keeps its last lines).
    "PYTHONUNBUFFERED": "1",
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
RESUME_HINT = "Checkpoints already written are kept: run the same command again to resume."
TRAIN_OPTIONS = {**RECIPE_OPTIONS, **SEEDS_OPTIONS}


def write_config(recipe: ComposedRecipe) -> Path:
    """Atomically: the machines of a multi-node run may write the same file at once."""
    out = recipe.run_dir / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"config.yaml.{os.getpid()}.partial")
    partial.write_text(recipe.to_yaml())
    partial.replace(out)
    return out


def checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders in step order."""
    found = [p for p in output_dir.glob("checkpoint-*") if CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def discard_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """A run killed while saving leaves a checkpoint without its trainer state (the
    trainer writes it last); resuming from it would fail, so it goes."""
    incomplete = [p for p in checkpoints(output_dir) if not (p / "trainer_state.json").is_file()]
    for path in incomplete:
        shutil.rmtree(path)
    return incomplete


def loss_history(output_dir: Path, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of a logged value, the training loss or `eval_loss`, from the
    newest checkpoint's trainer state."""
    saved = checkpoints(output_dir)
    if not saved:
        return []
    state = json.loads((saved[-1] / "trainer_state.json").read_text())
    return [(row["step"], float(row[key])) for row in state["log_history"] if key in row]


def axolotl_env(recipe: ComposedRecipe, trackers: Trackers = UNTRACKED) -> dict[str, str]:
    env = dict(os.environ)
    # The axolotl launcher execs `accelerate` by name: this environment's bin comes first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key, value in {**DEFAULT_ENV, **trackers.env_defaults}.items():
        env.setdefault(key, value)
    if recipe.meta.get("model") == "embedded":
        env.update(OFFLINE_ENV)
    env.update(recipe.env)
    return env


def ensure_base_model(recipe: ComposedRecipe, env: dict[str, str], log: Path) -> None:
    """Local base models must exist before Axolotl starts: the embedded default is
    converted on first use, and a recipe that starts from another task's output gets
    that output merged (or a clear word that the other task must be trained first)."""
    if recipe.meta.get("model") == "embedded" and not recipe.starts_from:
        from tuner.models import ensure_embedded_model

        ensure_embedded_model()
        return
    if not recipe.starts_from:
        return
    base = ROOT / recipe.config["base_model"]
    if (base / "config.json").is_file():
        return
    source = run_dir(recipe.starts_from, recipe.hardware)
    if not (source / "adapter_model.safetensors").is_file():
        raise TunerError(
            f"The {recipe.task} recipe starts from the {recipe.starts_from} model trained on "
            f"{recipe.hardware}, and {source} holds no adapter yet. Run "
            f"`just train {recipe.starts_from} {recipe.hardware}` first, or pass "
            "base_model=PATH to start from another model."
        )
    console.print(f"Merging the {recipe.starts_from} adapter into its base model → {base}")
    run_logged(["axolotl", "merge-lora", str(source / "config.yaml")], env, log, RESUME_HINT)
    stop_on_end_of_turn(base)


def chat_record(recipe: ComposedRecipe) -> dict[str, Any]:
    """The chat format the run trains with (validation has checked it agrees)."""
    facts = facts_for(recipe.config, recipe.meta, recipe.hardware)
    if facts is None:
        return {}
    chat = chat_format(recipe.config, facts)
    return {
        "template": chat.template_name,
        "template_sha256": chat.template_sha256,
        "end_of_turn": chat.end_of_turn,
        "eos": chat.eos,
    }


def dispatched(recipe: ComposedRecipe, overrides: list[str], fresh: bool) -> bool:
    """A GPU target trains inside its image where Docker runs: hand the command over
    (after checking the host's driver can run the image's CUDA). True if handed over."""
    profile = gpu_profile(recipe.meta, recipe.hardware)
    dispatch = profile is not None and should_dispatch()
    if profile is not None and (dispatch or in_image()):
        problem = driver_problem(recipe.hardware, host_driver())
        if problem:
            raise TunerError(problem)
    if dispatch:
        again = ["train", recipe.task, recipe.hardware, *overrides, *(["--fresh"] if fresh else [])]
        # Several machines meet on the host's network: the rendezvous port is there.
        run_in_image(recipe.hardware, again, host_network=recipe.nodes > 1)
    return dispatch


def start_manifest(
    recipe: ComposedRecipe,
    overrides: list[str],
    config_path: Path,
    resumed_from: str | None,
    detected: list[Any],
    trackers: Trackers,
) -> dict[str, Any]:
    return {
        "task": recipe.task,
        "hardware": recipe.hardware,
        "overrides": overrides,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "libraries": library_versions(),
        "config": portable(config_path),
        "config_sha256": sha256_text(recipe.to_yaml()),
        "base_model": recipe.config.get("base_model"),
        "datasets": dataset_fingerprints(recipe.config.get("datasets") or []),
        "seed": recipe.config.get("seed"),
        "chat": chat_record(recipe),
        "gpus": [asdict(g) for g in detected],
        "env": recipe.env,
        "resumed_from": resumed_from,
        "trackers": list(trackers.names),
        "python": sys.version.split()[0],
    }


def prepare_folder(recipe: ComposedRecipe, fresh: bool) -> str | None:
    """The run folder ready to train in: emptied with --fresh, refused when it holds
    another config's checkpoints, incomplete checkpoints removed. The checkpoint to
    resume from, if any."""
    out = recipe.run_dir
    previous = read_manifest(out / "manifest.json")
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    elif (
        checkpoints(out)
        and previous
        and previous.get("config_sha256") != sha256_text(recipe.to_yaml())
    ):
        raise TunerError(
            f"{out} holds checkpoints of a run with a different config; resuming them "
            "would mix the two. Re-run with --fresh to start over (it deletes that run), "
            "or set TUNER_RUNS to use another runs folder."
        )
    for path in discard_incomplete_checkpoints(out):
        console.print(f"Removed {path}: written only in part when the last run stopped.")
    saved = checkpoints(out)
    if saved:
        console.print(f"Resuming from {out / saved[-1].name}")
    return saved[-1].name if saved else None


def train(
    task: str,
    hardware: str,
    overrides: list[str],
    fresh: bool = False,
    drop_caches: bool = False,
) -> ComposedRecipe:
    recipe = compose(task, hardware, overrides)
    report = validate(recipe)
    if not report.ok:
        raise TunerError(report.summary())
    meeting = rendezvous(recipe.nodes)
    if dispatched(recipe, overrides, fresh):
        return recipe
    profile = gpu_profile(recipe.meta, hardware)
    detected = detect_gpus()
    if profile is not None:
        check_machine(hardware, profile, detected)

    if meeting is not None and not meeting.primary:
        train_beside_the_primary(recipe, meeting)
        return recipe
    out = recipe.run_dir
    trackers = chosen_trackers(recipe.config, out, os.environ)
    resumed_from = prepare_folder(recipe, fresh)
    config_path = write_config(recipe)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "axolotl.log"
    env = axolotl_env(recipe, trackers)
    if profile is not None and profile.count > 1:
        multi_gpu_preflight(profile, env, console)
    if profile is not None and profile.unified_memory:
        unified_memory_preflight(drop_caches, console)
    ensure_base_model(recipe, env, log)
    manifest_path = out / "manifest.json"
    manifest = start_manifest(recipe, overrides, config_path, resumed_from, detected, trackers)
    write_manifest(manifest_path, manifest)

    start = time.monotonic()
    rel_config = os.path.relpath(config_path, ROOT)
    try:
        # `axolotl train` tokenizes the data itself when none is prepared. Preprocessing
        # first (Axolotl's README: "optional but recommended") spares each of several
        # processes doing it; for one process it is one more start of Axolotl. A resumed
        # run's data was prepared by the attempt that wrote its checkpoints. Over several
        # machines Axolotl's first process prepares it while the others wait.
        if multi_process(recipe) and not resumed_from and meeting is None:
            run_logged(["axolotl", "preprocess", rel_config], env, log, RESUME_HINT)
        launcher = launcher_args(recipe, meeting)
        command = ["axolotl", "train", rel_config, *trackers.axolotl_args, *launcher]
        run_logged(command, env, log, RESUME_HINT)
    except BaseException:
        manifest.update(status="failed", wall_time_s=round(time.monotonic() - start, 1))
        write_manifest(manifest_path, manifest)
        raise
    finish_manifest(manifest_path, manifest, out, time.monotonic() - start)
    return recipe


def train_beside_the_primary(recipe: ComposedRecipe, meeting: Rendezvous) -> None:
    """A machine other than the first of a multi-node run: the same config, its own
    log, its processes joining the first machine's; the record is the first's."""
    config_path = write_config(recipe)
    log = recipe.run_dir / "logs" / f"axolotl.node-{meeting.node_rank}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    trackers = chosen_trackers(recipe.config, recipe.run_dir, os.environ)
    env = axolotl_env(recipe, trackers)
    ensure_base_model(recipe, env, log)
    rel_config = os.path.relpath(config_path, ROOT)
    # The same settings as the first machine's processes: the trackers' included.
    launcher = launcher_args(recipe, meeting)
    command = ["axolotl", "train", rel_config, *trackers.axolotl_args, *launcher]
    run_logged(command, env, log, RESUME_HINT)


def train_seeds(
    task: str, hardware: str, arguments: list[str], fresh: bool = False, drop_caches: bool = False
) -> list[ComposedRecipe]:
    """`just train TASK HW [seeds=N]`: one run, or one per seed. With several seeds, a
    seed's run that completed with the config composed now is kept as it is."""
    own, overrides = split_options(arguments, SEEDS_OPTIONS)
    count = parse_options(own, SEEDS_OPTIONS, "train")[SEEDS_KEY]
    if count == 1:
        return [train(task, hardware, overrides, fresh, drop_caches)]
    first = compose(task, hardware, overrides, formats=False).config.get("seed", 0)
    recipes = []
    for number, run in enumerate(seed_runs(first, count), 1):
        with_seed = overrides if run.first else [*overrides, f"seed={run.seed}"]
        with runs_folder(run.folder):
            recipe = compose(task, hardware, with_seed)
            manifest = read_manifest(recipe.run_dir / "manifest.json") or {}
            done = manifest.get("status") == "completed" and manifest.get(
                "config_sha256"
            ) == sha256_text(recipe.to_yaml())
            if done and not fresh:
                console.print(f"[{number}/{count}] seed {run.seed}: trained before, kept.")
            else:
                console.print(f"[{number}/{count}] seed {run.seed} in {recipe.run_dir}")
                recipe = train(task, hardware, with_seed, fresh, drop_caches)
        recipes.append(recipe)
    return recipes


def finish_manifest(path: Path, manifest: dict, out: Path, seconds: float) -> None:
    """A completed run's manifest: the chat format the saved tokenizer carries (warned
    about where it stops on a token other than its template's end of turn), the time,
    the last logged loss and what trained (parameters and bytes saved)."""
    saved = saved_chat(out)
    if saved.end_of_turn != saved.eos:
        console.print(
            f"[yellow]The tokenizer saved in {out} stops on {saved.eos}, but its chat "
            f"template ends an assistant turn with {saved.end_of_turn}.[/yellow]"
        )
    manifest.update(
        chat={**manifest["chat"], "saved": asdict(saved)},
        status="completed",
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        wall_time_s=round(seconds, 1),
        final_loss=(loss_history(out) or [(None, None)])[-1][1],
        trained_weights=weights.to_json()
        if (weights := trained_weights(out, str(manifest["base_model"])))
        else None,
    )
    write_manifest(path, manifest)
