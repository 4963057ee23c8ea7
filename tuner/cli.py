"""The `tuner` command line: what each `just` recipe calls."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tuner.errors import TunerError
from tuner.options import Options, options_help
from tuner.recipes import compose, hardware_names, load_task, task_names

out = Console()
err = Console(stderr=True, soft_wrap=True)

OVERRIDES_HELP = (
    "Axolotl keys to override, as key=value (YAML values; dotted keys reach into mappings)"
)


def cmd_list(_: argparse.Namespace) -> None:
    table = Table(title="Tasks (recipes/tasks/)")
    table.add_column("task")
    table.add_column("what it trains")
    table.add_column("suite")
    for name in task_names():
        meta = load_task(name).get("tuner") or {}
        table.add_row(name, meta.get("description", ""), meta.get("suite", ""))
    out.print(table)
    out.print("Hardware (recipes/hardware/): " + ", ".join(hardware_names()))


def cmd_config(args: argparse.Namespace) -> None:
    from tuner.train import write_config
    from tuner.validation import validate

    recipe = compose(args.task, args.hardware, args.overrides)
    path = write_config(recipe)
    sys.stdout.write(recipe.to_yaml())
    report = validate(recipe)
    err.print(f"Wrote {path}")
    err.print(report.summary(), style="green" if report.ok else "red", markup=False)
    if not report.ok:
        raise SystemExit(1)


def cmd_validate(args: argparse.Namespace) -> None:
    from tuner.validation import validate

    tasks = [args.task] if args.task else task_names()
    hardware = [args.hardware] if args.hardware else hardware_names()
    table = Table(title="Composed configs validated against Axolotl's schema for each target")
    table.add_column("task")
    for hw in hardware:
        table.add_column(hw, justify="center")
    failures = []
    with err.status("Validating…"):
        for task in tasks:
            cells = []
            for hw in hardware:
                report = validate(compose(task, hw, args.overrides))
                cells.append("[green]ok[/green]" if report.ok else "[red]FAIL[/red]")
                if not report.ok:
                    failures.append(report)
            table.add_row(task, *cells)
    out.print(table)
    for report in failures:
        out.print(report.summary(), style="red", markup=False)
    total = len(tasks) * len(hardware)
    out.print(f"{total - len(failures)} of {total} task × hardware pairs valid.")
    if failures:
        raise SystemExit(1)


def cmd_train(args: argparse.Namespace) -> None:
    from tuner.train import train_seeds

    recipes = train_seeds(
        args.task, args.hardware, args.overrides, fresh=args.fresh, drop_caches=args.drop_caches
    )
    folders = ", ".join(str(recipe.run_dir) for recipe in recipes)
    out.print(f"Done. Adapter, config, logs and manifest.json in {folders}")


def cmd_slurm(args: argparse.Namespace) -> None:
    from tuner.slurm import write_job

    job = write_job(args.task, args.hardware, args.overrides)
    out.print(f"Wrote {job.path}: {job.nodes} machines. Submit it with `sbatch {job.path}`.")


def cmd_demo(args: argparse.Namespace) -> None:
    from tuner.demo import demo

    demo(args.overrides)


def cmd_generate(args: argparse.Namespace) -> None:
    from tuner.generate.run import generate

    summary = generate(args.task, args.options, err)
    if summary:
        out.print(
            f"Wrote {summary.records} records to {summary.output} "
            f"({summary.tokens_per_second} output tokens/s); statistics beside it."
        )


def cmd_filter(args: argparse.Namespace) -> None:
    from tuner.filter.run import filter_records
    from tuner.filter.slurm_jobs import SlurmSubmission

    stats = filter_records(args.input, args.options, err)
    if isinstance(stats, SlurmSubmission):
        if stats.dry_run:
            out.print(
                f"Dry run: {len(stats.scripts)} job scripts in {stats.work / 'slurm-dry-run'}"
            )
        else:
            out.print(f"Submitted Slurm jobs {', '.join(stats.job_ids)}.")
        out.print("Once they have finished, the same command writes the outputs.")
        return
    out.print(
        f"Kept {stats.kept} of {stats.input_records} records "
        f"({stats.kept_fraction:.1%}); removed by rule: {stats.removed_by_rule}"
    )
    out.print(f"Outputs (kept, rejected, stats.json, removals.png) in {stats.output}")


def cmd_doctor(_: argparse.Namespace) -> None:
    from tuner.doctor import report

    report(out)


def cmd_build(args: argparse.Namespace) -> None:
    from tuner.containers import build

    tags = build(args.hardware, args.eval)
    out.print(f"Built {', '.join(tags)}")


def cmd_lock(args: argparse.Namespace) -> None:
    from tuner.locks import check, locks, write_lock
    from tuner.project import ROOT

    chosen = locks(args.targets)
    failed = []
    for index, lock in enumerate(chosen, 1):
        name = lock.path.relative_to(ROOT)
        with err.status(
            f"[{index}/{len(chosen)}] {'checking' if args.check else 'resolving'} {name}…"
        ):
            if args.check:
                problems = check(lock).problems
                if problems:
                    failed.append(lock)
                    out.print(f"{name}:", style="red", markup=False)
                    for problem in problems:
                        out.print(f"  - {problem}", markup=False, highlight=False)
                else:
                    out.print(f"{name}: ok", markup=False)
            else:
                pins = write_lock(lock)
                out.print(f"{name}: {len(pins)} packages", markup=False)
    if failed:
        raise SystemExit(1)


def cmd_eval(args: argparse.Namespace) -> None:
    from tuner.evaluate.run import evaluate

    evaluate(args.task, args.hardware, args.options, err)


def cmd_report(args: argparse.Namespace) -> None:
    from tuner.evaluate.report import write_report

    path = write_report(args.out, err)
    out.print(f"Report: {path} (report.json and the plots beside it)")


def cmd_plan(args: argparse.Namespace) -> None:
    from tuner.plan import all_plans, make_plan, plans_json, plans_table, print_plan

    if args.all:
        plans = all_plans()
        out.print(plans_table(plans))
    else:
        if not args.task or not args.hardware:
            raise TunerError("plan: give TASK and HW (e.g. `just plan math a100`), or --all.")
        plans = [make_plan(args.task, args.hardware, args.overrides)]
        print_plan(plans[0], out)
    if args.json:
        args.json.write_text(plans_json(plans) + "\n")
        err.print(f"Wrote {args.json}")


def cmd_smoke(args: argparse.Namespace) -> None:
    from tuner.smoke import smoke

    smoke(args.task, args.hardware, args.overrides, out)


def cmd_experiment(args: argparse.Namespace) -> None:
    from tuner.experiments.runner import run_experiment

    run_experiment(args.name, args.hardware, args.overrides, err)


def cmd_prefs(args: argparse.Namespace) -> None:
    from tuner.preferences import build_preferences

    stats = build_preferences(args.input, args.options, err)
    out.print(
        f"{stats.pairs} preference pairs from {stats.input_records} prompts "
        f"(dropped: {stats.dropped or 'none'}); pairs.jsonl, dropped.jsonl, stats.json "
        f"and scores.png in {stats.output}"
    )


def cmd_serve(args: argparse.Namespace) -> None:
    from tuner.serve import serve

    serve(args.task, args.hardware, args.options, err)


def cmd_publish(args: argparse.Namespace) -> None:
    from tuner.publish import publish

    published = publish(args.task, args.hardware, args.options, err)
    out.print(f"Wrote {published.folder}: {', '.join(published.files)}")
    if published.url:
        out.print(f"Uploaded to {published.url}")


def cmd_publish_data(args: argparse.Namespace) -> None:
    from tuner.publish_data import publish_data

    published = publish_data(args.input, args.options, err)
    out.print(f"Wrote {published.folder}: {published.records} records and the dataset card")
    if published.url:
        out.print(f"Uploaded to {published.url}")


def cmd_bench(args: argparse.Namespace) -> None:
    from tuner.bench import run

    run(args.names, err)


def cmd_model(_: argparse.Namespace) -> None:
    from tuner.models import ensure_embedded_model

    out.print(str(ensure_embedded_model()))


class StageParser(argparse.ArgumentParser):
    """A stage's parser: its help ends with the stage's key=value options, from their
    declaration, imported only when the help is shown (importing the filter stage,
    datatrove included, takes about a second)."""

    def __init__(
        self, *args: Any, options: tuple[str, ...] = (), own: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.options = options
        self.own = own

    def format_help(self) -> str:
        if not self.options:
            return super().format_help()
        heading = (
            "the project's own options (key=value), beside Axolotl overrides"
            if self.own
            else "options (key=value)"
        )
        self.epilog = options_help(declared_options(self.options), heading)
        return super().format_help()


def declared_options(declarations: tuple[str, ...]) -> Options:
    """The options declared at `module:NAME`, in order."""
    known: Options = {}
    for declaration in declarations:
        module, name = declaration.split(":")
        known |= getattr(importlib.import_module(module), name)
    return known


@dataclass(frozen=True)
class Command:
    """One subcommand: its help, its arguments, and for a stage the declaration of its
    key=value options (`module:NAME`, one or more), which its help lists."""

    name: str
    summary: str
    run: Callable[[argparse.Namespace], None]
    arguments: tuple[tuple[str, dict[str, Any]], ...] = ()
    description: str = ""
    options: tuple[str, ...] = ()
    own: bool = False  # the project's own options, beside Axolotl overrides


TASK_HW = (("task", {}), ("hardware", {}))
OVERRIDES = ("overrides", {"nargs": "*", "help": OVERRIDES_HELP})
STAGE_OPTIONS = ("options", {"nargs": "*", "help": "key=value options (see above)"})

COMMANDS = (
    Command("list", "list tasks and hardware targets", cmd_list),
    Command(
        "config",
        "print and write the composed Axolotl config",
        cmd_config,
        (*TASK_HW, OVERRIDES),
        options=("tuner.recipes:RECIPE_OPTIONS",),
        own=True,
    ),
    Command(
        "validate",
        "validate task × hardware pairs (all by default)",
        cmd_validate,
        (("task", {"nargs": "?"}), ("hardware", {"nargs": "?"}), OVERRIDES),
    ),
    Command(
        "train",
        "compose, validate and train with Axolotl",
        cmd_train,
        (
            *TASK_HW,
            OVERRIDES,
            ("--fresh", {"action": "store_true", "help": "delete the run folder and start over"}),
            (
                "--drop-caches",
                {
                    "action": "store_true",
                    "help": "unified-memory machines (DGX Spark): drop the page cache first (root)",
                },
            ),
        ),
        options=("tuner.train:TRAIN_OPTIONS",),
        own=True,
    ),
    Command(
        "slurm",
        "a Slurm batch job that trains TASK on HW over several machines",
        cmd_slurm,
        (*TASK_HW, OVERRIDES),
        description="Writes runs/TASK-HW/train.sbatch: one task per machine, each running "
        "`just train TASK HW nodes=N …` (or the target's image, image=true) with MASTER_ADDR "
        "set to the job's first host and NODE_RANK to SLURM_NODEID. The checkout must lie on "
        "a filesystem every machine sees. Submit it with sbatch.",
        options=("tuner.slurm:OPTIONS", "tuner.recipes:RECIPE_OPTIONS"),
        own=True,
    ),
    Command(
        "demo", "train the instruction recipe on CPU and compare answers", cmd_demo, (OVERRIDES,)
    ),
    Command(
        "generate",
        "Magpie instructions and responses for TASK (re-run to resume)",
        cmd_generate,
        (("task", {}), STAGE_OPTIONS),
        options=("tuner.generate.run:OPTIONS",),
    ),
    Command(
        "filter",
        "quality rules, exact and near-duplicate removal, decontamination",
        cmd_filter,
        (("input", {"help": "a JSONL file of conversations (or a comma list)"}), STAGE_OPTIONS),
        options=("tuner.filter.run:OPTIONS",),
    ),
    Command(
        "prefs",
        "preference pairs for DPO: sample responses, score them, best vs worst",
        cmd_prefs,
        (("input", {"help": "a JSONL file of conversations (their prompts)"}), STAGE_OPTIONS),
        options=("tuner.preferences:OPTIONS",),
    ),
    Command(
        "doctor", "what this machine has: GPUs, P2P, environments, engines, sandbox", cmd_doctor
    ),
    Command(
        "build",
        "build the hardware target's image (Docker, else podman or buildah)",
        cmd_build,
        (
            ("hardware", {}),
            ("--eval", {"action": "store_true", "help": "also the evaluation image"}),
        ),
        description="Builds containers/targets.yaml's Dockerfile for HW as llm-tuner:HW; "
        "--eval also builds llm-tuner:HW-eval with bigcode-evaluation-harness on top.",
    ),
    Command(
        "lock",
        "resolve the images' locks (containers/locks/) for their platforms",
        cmd_lock,
        (
            ("targets", {"nargs": "*", "help": "targets (all by default)"}),
            ("--check", {"action": "store_true", "help": "check the locks, write nothing"}),
        ),
        description="Resolves each environment of each target's image with uv for the "
        "image's platform and Python, wheels only (containers/targets.yaml), into "
        "containers/locks/TARGET.ENV.txt. --check resolves the locks again instead and "
        "reports pins without a wheel, conflicts, what pyproject.toml asks that a lock "
        "lacks, and a torch whose CUDA is not the base image's.",
    ),
    Command(
        "plan",
        "memory, time and cost of a recipe on a card, before renting it",
        cmd_plan,
        (
            ("task", {"nargs": "?"}),
            ("hardware", {"nargs": "?"}),
            OVERRIDES,
            ("--all", {"action": "store_true", "help": "every task × hardware pair, one table"}),
            ("--json", {"type": Path, "help": "also write the plans to this JSON file"}),
        ),
        description="Estimates peak GPU memory per device (weights, adapter, gradients, "
        "optimizer, activations, logits, ZeRO sharding) with the planner's error band on "
        "published measurements (bench/published-memory.yaml), a verdict at the band's "
        "upper edge with the overrides that would make it fit, tokens, steps, time and "
        "cost.",
        options=("tuner.plan:PLAN_OPTIONS", "tuner.recipes:RECIPE_OPTIONS"),
        own=True,
    ),
    Command(
        "smoke",
        "a few real training steps, peak memory measured against the plan",
        cmd_smoke,
        (*TASK_HW, OVERRIDES),
        description="Runs Axolotl for a few steps on the config `just train` composes, "
        "every batch padded to sequence_len, and writes runs/TASK-HW/smoke.json: peak "
        "memory per device (allocated and reserved; on cpu the process's resident "
        "memory) beside the plan's estimate and its error band, the step time, tokens/s "
        "and a verdict.",
        options=("tuner.smoke:SMOKE_OPTIONS", "tuner.recipes:RECIPE_OPTIONS"),
        own=True,
    ),
    Command(
        "eval",
        "the task's suite on the base and the fine-tuned model, then the comparison",
        cmd_eval,
        (*TASK_HW, STAGE_OPTIONS),
        description="Results in runs/TASK-HW/eval/.",
        options=("tuner.evaluate.run:OPTIONS",),
    ),
    Command(
        "experiment",
        "a grid of runs (experiments/NAME.yaml), planned, trained, evaluated and compared",
        cmd_experiment,
        (
            ("name", {"help": "an experiment of experiments/ (its file's name, without .yaml)"}),
            ("hardware", {"help": "a hardware target its grid is sized or scaled for"}),
            OVERRIDES,
        ),
        description="Plans every cell of the grid on HW and refuses it over its budget, then "
        "trains and evaluates each run not finished (a cell at a seed, in "
        "runs/experiments/NAME/CELL/seed-S/) and writes report.md, results.json and one "
        "plot per metric: the mean over seeds with its interval, and each comparison's "
        "difference, interval and corrected p-value. Overrides apply to every run.",
        options=("tuner.experiments.runner:EXPERIMENT_OPTIONS",),
        own=True,
    ),
    Command(
        "serve",
        "the run's adapter and its base behind vLLM's OpenAI-compatible server",
        cmd_serve,
        (*TASK_HW, STAGE_OPTIONS),
        description="Serves the run's LoRA adapter under the task's name and its base model "
        "under the base's hub id, both with the chat template the run trained with, from "
        "one vLLM server (a model trained from scratch, alone, under the task's name). The "
        "API key comes from VLLM_API_KEY in the environment; binding to an address other "
        "than loopback needs one. vLLM's log goes to runs/TASK-HW/serve.log; Ctrl-C stops.",
        options=("tuner.serve:OPTIONS",),
    ),
    Command(
        "publish",
        "a finished run as a Hub repository: weights, tokenizer, config, model card",
        cmd_publish,
        (*TASK_HW, STAGE_OPTIONS),
        description="Writes runs/TASK-HW/publish/: the adapter (or the model merged), the "
        "tokenizer with its chat template, config.yaml, manifest.json, comparison.json and "
        "README.md, a model card whose model-index holds the base-vs-tuned results. With "
        "HF_TOKEN in the environment it uploads the folder to repo= as well.",
        options=("tuner.publish:OPTIONS",),
    ),
    Command(
        "publish-data",
        "a generated dataset as a Hub dataset repository with its dataset card",
        cmd_publish_data,
        (("input", {"help": "a JSONL file the data stages wrote"}), STAGE_OPTIONS),
        description="Writes INPUT.publish/: the records as data/train.jsonl, the stages' "
        "statistics under provenance/, and README.md, a dataset card giving the generator "
        "model, the filter's statistics, decontamination and the license. With HF_TOKEN in "
        "the environment it uploads the folder to repo= as well.",
        options=("tuner.publish_data:OPTIONS",),
    ),
    Command(
        "report",
        "one Markdown report with plots over all run folders",
        cmd_report,
        (("--out", {"type": Path, "default": None, "help": "folder (default: runs/report)"}),),
    ),
    Command(
        "bench",
        "speed benchmarks, written to bench/results/NAME.json",
        cmd_bench,
        (("names", {"nargs": "*", "help": "generate, filter, plan, experiment (all by default)"}),),
    ),
    Command("model", "convert the embedded default model (once) and print its folder", cmd_model),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuner", description="Axolotl fine-tuning recipes per task and per GPU."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=StageParser)
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.summary,
            description=command.description or command.summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            options=command.options,
            own=command.own,
        )
        for name, settings in command.arguments:
            p.add_argument(name, **settings)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TunerError as problem:
        err.print(f"error: {problem}", style="red", markup=False, highlight=False)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err.print("Interrupted. Re-run the same command to resume from the last checkpoint.")
        raise SystemExit(130) from None
