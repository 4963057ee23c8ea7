"""`just generate TASK [n=…] [model=…] …`: resolve the options into a generation job and
run it (or resume it)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tuner.errors import TunerError
from tuner.generate import magpie, templates
from tuner.generate.backends import BACKENDS, open_backend
from tuner.models import EMBEDDED, resolve_model
from tuner.options import Option, choice, parse_options, positive_int
from tuner.project import data_dir
from tuner.recipes import task_names

OPTIONS = {
    "n": Option(positive_int, 100, "records to generate"),
    "model": Option(str, EMBEDDED, "hub id or local folder"),
    "preset": Option(
        str,
        None,
        "sampling preset in generate/presets.yaml; cpu for the embedded model, else default",
    ),
    "template": Option(str, None, "family in generate/templates.yaml; guessed from the model"),
    "backend": Option(choice(*BACKENDS), "auto", "|".join(BACKENDS)),
    "seed": Option(int, 42, "base seed; each record's seed derives from it"),
    "turns": Option(positive_int, None, "user turns per conversation (the preset's)"),
    "checkpoint_every": Option(positive_int, None, "records per checkpoint (the preset's: 100)"),
    "out": Option(Path, None, "output JSONL; data/generated/TASK.jsonl"),
    "tp": Option(positive_int, 1, "tensor-parallel GPUs"),
    "worker": Option(int, 0, "this process's index among workers"),
    "workers": Option(positive_int, 1, "data-parallel processes, one per GPU"),
}


def generate(task: str, option_pairs: list[str], console: Console) -> magpie.GenerateSummary | None:
    """The summary of the assembled output; None while other workers' chunks are
    missing (the last worker to finish assembles it)."""
    if task not in task_names():
        raise TunerError(f"Unknown task '{task}'. Tasks: {', '.join(task_names())}.")
    options = parse_options(option_pairs, OPTIONS, "generate")
    if not 0 <= options["worker"] < options["workers"]:
        raise TunerError(f"worker={options['worker']} must lie in 0…workers-1.")
    # The embedded default runs on CPU: its preset keeps a test or demo to seconds.
    preset_name = options["preset"] or ("cpu" if options["model"] == EMBEDDED else "default")
    preset = templates.preset(preset_name)
    for key in ("turns", "checkpoint_every"):
        if options[key]:
            preset = preset.model_copy(update={key: options[key]})
    model = resolve_model(options["model"])
    family = templates.family_for(model, options["template"])
    persona = templates.persona(task)
    if not family.has_system_turn:
        console.print(
            f"The {family.name} template has no system turn: the {task} persona cannot "
            "steer its instructions, which will be general."
        )
    job = magpie.Job(
        task=task,
        model=options["model"],
        family=family.name,
        persona=persona,
        preset_name=preset_name,
        preset=preset.model_dump(),
        seed=options["seed"],
        n=options["n"],
    )
    out = options["out"] or data_dir() / "generated" / f"{task}.jsonl"
    plan = magpie.ChunkPlan(out.with_suffix(".parts"), job.n, preset.checkpoint_every)
    sharding = magpie.Sharding(options["worker"], options["workers"])
    magpie.check_job(plan.parts, job)

    owned = [c for c in plan.chunks() if sharding.owns(c)]
    todo = [c for c in owned if not plan.done(c)]
    if todo:
        backend = open_backend(
            options["backend"], model, job.seed, options["tp"], compile=preset.compile
        )
        generator = magpie.MagpieGenerator(job, family, preset, backend)
        magpie.write_chunks(generator, plan, todo, sum(plan.records_in(c) for c in owned), console)
    missing = [c for c in plan.chunks() if not plan.done(c)]
    if missing:
        console.print(
            f"This worker's chunks are done; {len(missing)} chunk(s) of other workers are "
            f"still missing, so {out} is assembled when the last worker finishes."
        )
        return None
    return magpie.assemble(plan, out, job)
