"""`just eval TASK HW`: the task's suite on the base model and on the model fine-tuned in
`runs/TASK-HW/`, every setting shared, then the comparison.

Layout of `runs/TASK-HW/eval/`:
- `base/`, `tuned/`: lm-eval's own output (`call-N/…/results_*.json`, `samples_*.jsonl`,
  `lm-eval.log`), bigcode-evaluation-harness's where the suite names its benchmarks
  (`bigcode/TASK/`: `metrics.json`, the generations, `bigcode.log`), and `results.json`,
  the project's reading of both with the settings used;
- `comparison.json`, `comparison.md`: per metric base, tuned, deltas, standard errors.

A model's results are reused when they were produced with the same settings (same
harness version, suite definitions, engine, chat template, seed, batch and limit): a
second `just eval` after more training re-runs only the tuned model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from tuner.chat import saved_template
from tuner.errors import TunerError
from tuner.evaluate.agreement import run_agreement
from tuner.evaluate.behaviour import add_behaviour
from tuner.evaluate.bigcode import bigcode_version, harness_python, run_bigcode
from tuner.evaluate.compare import compare, markdown_table, mean_metric, rich_table
from tuner.evaluate.diversity import distinct_n_with_stderr
from tuner.evaluate.harness import (
    BACKENDS,
    Engine,
    ModelUnderTest,
    backend_for,
    harness_version,
    read_results,
    responses,
    run_harness,
)
from tuner.evaluate.judging import judge_answers
from tuner.evaluate.merge import merged_model
from tuner.evaluate.suites import VARIANTS, Suite, definitions_digest, load_suite, suite_names
from tuner.manifest import read_manifest, sha256_file, sha256_text
from tuner.models import embedded_model_dir, ensure_embedded_model
from tuner.options import Option, choice, parse_options, positive_int
from tuner.project import local_path, run_dir, runs_folder
from tuner.recipes import compose, load_hardware, load_task
from tuner.seeds import SEEDS_KEY, SEEDS_OPTIONS, seed_runs

LABELS = ("base", "tuned")


OPTIONS = {
    "limit": Option(positive_int, None, "documents per benchmark (all by default)"),
    "backend": Option(
        choice(*BACKENDS), None, f"{'|'.join(BACKENDS)}; vllm where installed, hf for prompt tuning"
    ),
    "variant": Option(
        choice(*VARIANTS), None, f"{'|'.join(VARIANTS)}; the overlay's, local on cpu"
    ),
    "only": Option(choice("base", "tuned"), None, "base|tuned: one model, no comparison"),
    "suite": Option(
        choice(*suite_names()),
        None,
        "another suite of evaluate/suites/ (e.g. zero-cost), into eval-SUITE/; the task's own",
    ),
    "judge": Option(
        str,
        None,
        "the judge of the suite's judged tasks: a model for vLLM, or rm:RUN_OR_MODEL, a "
        "reward model (e.g. rm:runs/micro-judge-cpu); the suite's own",
    ),
    **SEEDS_OPTIONS,
    "template": Option(
        choice("trained", "any"),
        "trained",
        "trained|any: refuse, or accept, a chat template other than the trained one",
    ),
}


def task_suite(task: str) -> str:
    meta = load_task(task).get("tuner") or {}
    name = meta.get("suite")
    if not name:
        raise TunerError(f"recipes/tasks/{task}.yaml names no evaluation suite (tuner.suite).")
    return name


def eval_folder(run: Path, task: str, suite_name: str) -> Path:
    """`eval/` for the task's own suite, `eval-SUITE/` for another one."""
    return run / ("eval" if suite_name == task_suite(task) else f"eval-{suite_name}")


def suite_for(
    task: str, hardware: str, variant: str | None, suite: str | None
) -> tuple[str, Suite, str]:
    name = suite or task_suite(task)
    # The overlay says which variant its machine runs: the cpu one runs `local`.
    chosen = variant or (load_hardware(hardware).get("tuner") or {}).get("eval", "full")
    if chosen not in VARIANTS:
        raise TunerError(
            f"recipes/hardware/{hardware}.yaml: tuner.eval is '{chosen}'; it must be one of "
            f"{', '.join(VARIANTS)}."
        )
    return name, load_suite(name), chosen


def run_config(task: str, hardware: str) -> dict[str, Any]:
    """The config the run trained with; the composed one if it has not trained yet."""
    path = run_dir(task, hardware) / "config.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text())
    return compose(task, hardware, formats=False).config


def models_under_test(
    task: str, hardware: str, config: dict[str, Any], only: str | None
) -> list[ModelUnderTest]:
    run = run_dir(task, hardware)
    base_model = local_path(str(config["base_model"]))
    if Path(base_model) == embedded_model_dir().resolve():
        ensure_embedded_model()
    trained = (run / "adapter_config.json").is_file() or (run / "model.safetensors").is_file()
    from_scratch = bool(config.get("reinit_weights"))
    if from_scratch and (only == "base" or not trained):
        raise TunerError(
            f"{task} trains from scratch: its base_model {config['base_model']} is a shape "
            "with no weights, so only the trained model can be evaluated. "
            + (
                "Evaluate it alone: drop only=base."
                if trained
                else f"Run `just train {task} {hardware}` first."
            )
        )
    if not trained and only != "base":
        raise TunerError(
            f"{run} holds no trained model. Run `just train {task} {hardware}` first, or "
            f"evaluate the base model alone: `just eval {task} {hardware} only=base`."
        )
    # The chat template training used (saved with the run) serves both models.
    tokenizer = str(run) if (run / "tokenizer_config.json").is_file() else base_model
    base = ModelUnderTest("base", base_model, tokenizer)
    if (run / "adapter_config.json").is_file():
        tuned = ModelUnderTest("tuned", base_model, tokenizer, adapter=run)
    else:
        tuned = ModelUnderTest("tuned", str(run), tokenizer)
    chosen = {"base": [base], "tuned": [tuned], None: [tuned] if from_scratch else [base, tuned]}
    return chosen[only] if trained else [base]


def check_chat_template(task: str, hardware: str, tokenizer: Path) -> None:
    """Both models are served with the chat template saved with the run. It must be the
    one the run trained with (the manifest keeps its hash): one edited or replaced since
    would score a format the model never learnt."""
    manifest = read_manifest(run_dir(task, hardware) / "manifest.json") or {}
    trained = ((manifest.get("chat") or {}).get("saved") or {}).get("chat_template_sha256")
    if not trained:
        return
    template = saved_template(tokenizer)
    if template is None or sha256_text(template) != trained:
        raise TunerError(
            f"{tokenizer}: its chat template is not the one the run trained with (the "
            f"manifest has {trained[:12]}…, the folder "
            f"{sha256_text(template)[:12] + '…' if template else 'none'}). Restore it, "
            f"train again, or pass template=any to evaluate with the folder's as it is."
        )


def engine_for(config: dict[str, Any], backend: str) -> Engine:
    from tuner.generate.backends import configure_vllm_for_cpu, cpu_dtype, cpu_only

    cpu = cpu_only()
    if cpu and backend == "vllm":
        configure_vllm_for_cpu()
    # CPUs run cpu_dtype(); Ampere-or-newer GPUs bfloat16; a card the overlay trains in
    # fp16 (the T4) evaluates in float16. Base and tuned share it (the settings record it).
    dtype = cpu_dtype() if cpu else "float16" if config.get("fp16") is True else "bfloat16"
    return Engine(backend, dtype, cpu)


def for_engine(
    model: ModelUnderTest, engine: Engine, eval_dir: Path, console: Console
) -> ModelUnderTest:
    """vLLM gets an adapter merged into its base (see merge.py)."""
    if engine.backend != "vllm":
        return model
    return merged(model, engine, eval_dir, console)


def merged(
    model: ModelUnderTest, engine: Engine, eval_dir: Path, console: Console
) -> ModelUnderTest:
    """The model as one folder: an adapter merged into its base (kept in eval/merged/)."""
    if model.adapter is None:
        return model
    folder = merged_model(
        model.adapter, model.pretrained, engine.dtype, eval_dir / "merged", console
    )
    return ModelUnderTest(model.label, str(folder), model.tokenizer, adapter=None)


def shared_settings(
    suite_name: str,
    suite: Suite,
    variant: str,
    engine: Engine,
    tokenizer: str,
    bigcode: Path | None,
) -> dict[str, Any]:
    """Everything both models' results must agree on to be compared."""
    template = saved_template(Path(tokenizer))
    harnesses = [f"lm_eval {harness_version()}"]
    if bigcode is not None:
        harnesses.append(bigcode_version(bigcode))
    return {
        "harness": ", ".join(harnesses),
        "suite": suite_name,
        "variant": variant,
        "definitions": definitions_digest(suite_name),
        "benchmarks": [b.model_dump() for b in suite.variant(variant).benchmarks],
        "backend": engine.backend,
        "dtype": engine.dtype,
        "tokenizer": tokenizer,
        "chat_template_sha256": sha256_text(template) if template else None,
        **suite.settings.model_dump(),
    }


def add_diversity(tasks: dict[str, Any], folders: list[Path]) -> None:
    """distinct-1 and distinct-2 of every generating task's answers."""
    for task, result in tasks.items():
        if result["output_type"] != "generate_until":
            continue
        answers = [a["text"] for a in responses(folders, task)]
        if not answers:
            continue
        for n in (1, 2):
            value, stderr = distinct_n_with_stderr(answers, n)
            result["metrics"][f"distinct_{n}"] = {
                "value": value,
                "stderr": stderr,
                "higher_is_better": True,
                "per_sample": {},
            }


def evaluate_model(
    model: ModelUnderTest,
    engine: Engine,
    suite: Suite,
    variant: str,
    settings: dict[str, Any],
    eval_dir: Path,
    bigcode: Path | None,
    console: Console,
) -> dict[str, Any]:
    """The model's results: reused when the same settings produced them, else run."""
    out = eval_dir / model.label
    results_path = out / "results.json"
    identity = {"pretrained": model.pretrained, "adapter": str(model.adapter or "")}
    if model.adapter is not None:
        identity["adapter_sha256"] = sha256_file(model.adapter / "adapter_model.safetensors")
    if results_path.is_file():
        previous = json.loads(results_path.read_text())
        if previous.get("settings") == settings and previous.get("model") == identity:
            console.print(f"{model.label}: same settings as {results_path}; reusing its results.")
            return previous
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    chosen = suite.variant(variant)
    run_settings = suite.settings.model_copy(update={"limit": settings["limit"]})
    folders: list[Path] = []
    if lm_eval := chosen.on("lm-eval"):
        runnable = for_engine(model, engine, eval_dir, console)
        folders = run_harness(engine, runnable, lm_eval, run_settings, out, variant == "local")
    tasks = read_results(folders)
    add_diversity(tasks, folders)
    add_behaviour(tasks, folders)
    if agreement := chosen.on("agreement"):
        tasks |= run_agreement(model, agreement, run_settings, out / "agreement")
    if bigcode is not None:
        code_tasks = [b.task for b in chosen.on("bigcode")]
        whole = merged(model, engine, eval_dir, console)
        tasks |= run_bigcode(bigcode, whole, engine, code_tasks, run_settings, out / "bigcode")
    return {
        "label": model.label,
        "model": identity,
        "settings": settings,
        "folders": [f.relative_to(out).as_posix() for f in folders],
        "tasks": tasks,
    }


def graded_by(result: dict[str, Any], task: str) -> dict[str, Any] | None:
    """The judge whose scores of `task`'s answers `result` holds; None if none."""
    score = result["tasks"].get(task, {}).get("metrics", {}).get("judge_score")
    return score["judge"] if score else None


def add_judge_scores(
    evaluated: list[tuple[Path, dict[str, Any]]], suite: Suite, variant: str, console: Console
) -> None:
    """Judge scores for every model's answers, `evaluated` as (eval folder, results); all
    the models in one batch, so that one judge grades them alike."""
    chosen = suite.variant(variant)
    judge = chosen.judge.model_dump() if chosen.judge else None
    for benchmark in (b for b in chosen.benchmarks if b.judge):
        # Judged again where another judge graded them (`judge=`): lm-eval's answers stay.
        pending = {
            str(number): responses(
                [folder / result["label"] / f for f in result["folders"]], benchmark.task
            )
            for number, (folder, result) in enumerate(evaluated)
            if graded_by(result, benchmark.task) != judge
        }
        if not pending:
            continue
        assert chosen.judge is not None
        scores = judge_answers(chosen.judge, pending, suite.settings.seed, console)
        threshold = chosen.judge.pass_score
        if chosen.judge.model.startswith("rm:"):
            threshold = None
        for number, by_doc in scores.items():
            metrics = evaluated[int(number)][1]["tasks"][benchmark.task]["metrics"]
            metrics["judge_score"] = {**mean_metric(by_doc, True), "judge": judge}
            metrics.pop("judge_pass_rate", None)  # another judge's, where one graded before
            if threshold is not None:
                passed = {doc: float(score >= threshold) for doc, score in by_doc.items()}
                metrics["judge_pass_rate"] = {**mean_metric(passed, True), "judge": judge}


def seed_models(
    task: str, hardware: str, count: int, first_seed: int, tuned: ModelUnderTest
) -> list[tuple[Path, ModelUnderTest]]:
    """The tuned model of each further training seed, with its run folder, served with
    the first run's tokenizer (its chat template checked against each seed's)."""
    models = []
    for run in seed_runs(first_seed, count)[1:]:
        with runs_folder(run.folder):
            folder = run_dir(task, hardware)
            manifest = read_manifest(folder / "manifest.json") or {}
            if manifest.get("status") != "completed":
                raise TunerError(
                    f"{folder}: seed {run.seed} has no completed training run. Run `just "
                    f"train {task} {hardware} seeds={count}` first (it keeps the seeds done)."
                )
            check_chat_template(task, hardware, Path(tuned.tokenizer))
            if (folder / "adapter_config.json").is_file():
                model = replace(tuned, adapter=folder)
            else:
                model = replace(tuned, pretrained=str(folder))
            models.append((folder, model))
    return models


def evaluate(task: str, hardware: str, option_pairs: list[str], console: Console) -> Path:
    options = parse_options(option_pairs, OPTIONS, "eval")
    suite_name, suite, variant = suite_for(task, hardware, options["variant"], options["suite"])
    if options["judge"] is not None:
        suite = suite.judged_by(variant, options["judge"])
    config = run_config(task, hardware)
    bigcode_tasks = [b.task for b in suite.variant(variant).on("bigcode")]
    bigcode = harness_python(bigcode_tasks) if bigcode_tasks else None
    models = models_under_test(task, hardware, config, options["only"])
    backend = backend_for(options["backend"], models)
    if bigcode is not None and not all(model.mergeable for model in models):
        raise TunerError(
            f"The {suite_name} suite's code tasks ({', '.join(bigcode_tasks)}) run merged "
            f"weights, and the prompt-tuning adapter of runs/{task}-{hardware} merges into "
            "none. Evaluate it with a suite of lm-eval tasks (suite=NAME)."
        )
    if options["template"] == "trained":
        check_chat_template(task, hardware, Path(models[0].tokenizer))
    engine = engine_for(config, backend)
    settings = shared_settings(suite_name, suite, variant, engine, models[0].tokenizer, bigcode)
    if options["limit"] is not None:
        settings["limit"] = options["limit"]

    eval_dir = eval_folder(run_dir(task, hardware), task, suite_name)
    runs = [(eval_dir, model) for model in models]
    tuned = [model for model in models if model.label == "tuned"]
    if options[SEEDS_KEY] > 1 and tuned:
        seed = config.get("seed", 0)
        seeds = seed_models(task, hardware, options[SEEDS_KEY], seed, tuned[0])
        runs += [(eval_folder(folder, task, suite_name), model) for folder, model in seeds]
    evaluated = [
        (folder, evaluate_model(model, engine, suite, variant, settings, folder, bigcode, console))
        for folder, model in runs
    ]
    add_judge_scores(evaluated, suite, variant, console)
    for folder, result in evaluated:
        (folder / result["label"] / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    results = [result for _, result in evaluated]
    console.print(f"Results: {', '.join(str(f / m.label) for f, m in runs)}")
    base = [r for r in results if r["label"] == "base"]
    tuned_results = [r for r in results if r["label"] == "tuned"]
    if not base or not tuned_results:
        return eval_dir
    return write_comparison(task, hardware, base[0], tuned_results, eval_dir, console)


def write_comparison(
    task: str,
    hardware: str,
    base: dict[str, Any],
    tuned: list[dict[str, Any]],
    eval_dir: Path,
    console: Console,
) -> Path:
    """`tuned`: one training run's results, or each seed's."""
    for seed in tuned:
        if base["settings"] != seed["settings"]:
            differing = sorted(
                k for k in base["settings"] if base["settings"][k] != seed["settings"].get(k)
            )
            raise TunerError(
                f"{eval_dir}: the base and tuned results were produced with different "
                f"settings ({', '.join(differing)}); run `just eval {task} {hardware}` again."
            )
    rows = compare(base, tuned)
    title = f"{task} on {hardware}: base vs tuned ({base['settings']['suite']} suite, "
    title += f"{base['settings']['variant']}"
    title += f", {len(tuned)} training seeds)" if len(tuned) > 1 else ")"
    comparison = {
        "task": task,
        "hardware": hardware,
        "settings": base["settings"],
        "base_model": base["model"],
        "tuned_model": tuned[0]["model"],
        "seeds": len(tuned),
        "tuned_models": [seed["model"] for seed in tuned],
        "rows": [row.as_dict() for row in rows],
    }
    path = eval_dir / "comparison.json"
    path.write_text(json.dumps(comparison, indent=2) + "\n")
    settings_lines = "\n".join(f"- {k}: {v}" for k, v in base["settings"].items())
    (eval_dir / "comparison.md").write_text(
        f"# {title}\n\n{markdown_table(rows)}\nShared settings:\n{settings_lines}\n"
    )
    console.print(rich_table(rows, title))
    console.print(f"Comparison: {path} and comparison.md")
    return path
