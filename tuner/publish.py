"""`just publish TASK HW repo=ORG/NAME`: a finished run made ready for the Hugging Face
Hub in `runs/TASK-HW/publish/`, and uploaded when HF_TOKEN is in the environment.

The folder holds what a user of the Hub expects to load: the adapter (or, with
`merged=true`, the adapter merged into its base), the tokenizer with the chat template
the run trained with, the composed config and the manifest that reproduce the run, and
a model card written with huggingface_hub's ModelCard. The card's metadata names the
base model, the hub datasets, the base model's license, and a `model-index` holding the
tuned model's scores from `eval/comparison.json`, each with its standard error, the
base model's score and the settings both were evaluated with.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from tuner.errors import TunerError
from tuner.hub import PRIVATE, hub_id, hub_repo, known_license, license_needed, staged, upload
from tuner.manifest import finished_manifest, weights_kind
from tuner.options import Option, Options, choice, parse_options
from tuner.project import RECIPES, local_file, local_path, run_dir
from tuner.publish_data import filter_summary, is_filter_stats, read_stats
from tuner.recipes import load_task

# Models trained from scratch start from a shape here: there is no base model to name.
SHAPES = RECIPES / "shapes"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)
RUN_FILES = ("config.yaml", "manifest.json")
# The recipe's settings a reader of the card looks for first, in this order.
RECIPE_KEYS = (
    "adapter",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "learning_rate",
    "lr_scheduler",
    "optimizer",
    "num_epochs",
    "max_steps",
    "sequence_len",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "rl",
    "seed",
)


OPTIONS: Options = {
    "repo": Option(hub_repo, None, "the Hub repository to publish to, ORG/NAME (required)"),
    "private": PRIVATE,
    "merged": Option(
        choice("true", "false"),
        "false",
        "publish the LoRA adapter merged into its base model (full weights) instead",
    ),
    "license": Option(
        str, None, "the card's license, a Hub license id (default: the base model's)"
    ),
    "base_model": Option(
        hub_repo, None, "the hub id of the base, where the run trained from a local folder"
    ),
}


@dataclass(frozen=True)
class Published:
    """What `publish` wrote, and where it went."""

    folder: Path
    repo: str
    files: list[str]
    url: str | None  # None: not uploaded (no HF_TOKEN)


def publish(task: str, hardware: str, option_pairs: list[str], console: Console) -> Published:
    options = parse_options(option_pairs, OPTIONS, "publish")
    if options["repo"] is None:
        raise TunerError("publish: give the Hub repository, e.g. repo=my-org/math-qwen-lora.")
    run = run_dir(task, hardware)
    manifest = finished_manifest(run, task, hardware, "publish")
    kind = weights_kind(run, "publish")
    merge = options["merged"] == "true"
    if merge and kind != "lora":
        holds = (
            "a prompt-tuning adapter, which has no weights to merge"
            if kind == "prompt-tuning"
            else "a whole model already"
        )
        raise TunerError(
            f"publish: merged=true merges a LoRA adapter into its base; {run} holds "
            f"{holds}. Publish it as it is (merged=false)."
        )
    base = hub_base_model(manifest, options["base_model"])
    license_id = options["license"] or known_license(base)
    if license_id is None:
        raise license_needed(
            f"publish: the license of {base} is not in recipes/licenses.yaml"
            if base
            else "publish: a model trained from scratch has no base model's license to inherit"
        )

    out = run / "publish"
    write_folder(run, out, options["repo"], manifest, kind, merge, base, license_id, console)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    private = options["private"] == "true"
    message = f"llm-tuner: {task} on {hardware}"
    url = upload(out, options["repo"], "model", private, message, console)
    return Published(out, options["repo"], files, url)


def write_folder(
    run: Path,
    out: Path,
    repo: str,
    manifest: dict[str, Any],
    kind: str,
    merge: bool,
    base: str | None,
    license_id: str,
    console: Console,
) -> None:
    """The repository's files in `out`, which keeps its last complete contents if this
    fails."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as problem:
        raise TunerError(
            f"publish: {run / 'config.yaml'} is not the run's readable config "
            f"({str(problem).splitlines()[0]}); train the run again with --fresh."
        ) from None
    task, hardware = manifest["task"], manifest["hardware"]
    with staged(out) as staging:
        if merge:
            merge_into(run, manifest["base_model"], config, staging, console)
            weights = "merged"
        else:
            copy_matching(run, staging, ADAPTER_FILES if kind != "full" else MODEL_FILES)
            weights = kind
            if kind != "full" and base:
                name_base_in_adapter(staging / "adapter_config.json", base)
        copy_matching(run, staging, TOKENIZER_FILES + RUN_FILES)
        comparison_path = run / "eval" / "comparison.json"
        comparison = json.loads(comparison_path.read_text()) if comparison_path.is_file() else None
        if comparison:
            shutil.copy2(comparison_path, staging / "comparison.json")
        card = model_card(
            repo, task, hardware, config, manifest, base, license_id, weights, comparison
        )
        card.save(staging / "README.md")


def hub_base_model(manifest: dict[str, Any], given: str | None) -> str | None:
    """The base model's hub id; None for a model trained from scratch."""
    base = str(manifest.get("base_model") or "")
    if given:
        return given
    if (named := hub_id(base)) is not None:
        return named
    if Path(local_path(base)).is_relative_to(SHAPES.resolve()):
        return None
    raise TunerError(
        f"publish: the run trained from the local folder {base}; the card names its base "
        "by hub id. Give it: base_model=ORG/NAME."
    )


def name_base_in_adapter(adapter_config: Path, base: str) -> None:
    """PEFT loads the base from `base_model_name_or_path`, which the training wrote as the
    folder it loaded here; a user of the Hub repository needs the hub id."""
    settings = json.loads(adapter_config.read_text())
    settings["base_model_name_or_path"] = base
    adapter_config.write_text(json.dumps(settings, indent=2) + "\n")


def copy_matching(source: Path, target: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in source.glob(pattern):
            shutil.copy2(path, target / path.name)


def merge_into(
    run: Path, base_model: str, config: dict[str, Any], out: Path, console: Console
) -> None:
    from tuner.evaluate.merge import STAMP, merged_model

    dtype = (
        "bfloat16" if config.get("bf16") is True else "float16" if config.get("fp16") else "float32"
    )
    merged_model(run, local_path(base_model), dtype, out, console)
    # Its record of where the adapter lay on this machine stays here.
    (out / STAMP).unlink()


def model_card(
    repo: str,
    task: str,
    hardware: str,
    config: dict[str, Any],
    manifest: dict[str, Any],
    base: str | None,
    license_id: str,
    weights: str,
    comparison: dict[str, Any] | None,
) -> Any:
    from huggingface_hub import ModelCard, ModelCardData

    meta = load_task(task).get("tuner") or {}
    datasets = manifest.get("datasets") or []
    tags = ["llm-tuner", "axolotl", task, weights if weights != "merged" else "lora"]
    if config.get("rl"):
        tags.append(str(config["rl"]))
    data = ModelCardData(
        base_model=base,
        datasets=[d["path"] for d in datasets if d.get("hub")] or None,
        license=license_id,
        library_name="peft" if weights in ("lora", "prompt-tuning") else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=repo.split("/")[1],
        eval_results=eval_results(comparison) if comparison else None,
    )
    sections = [
        f"# {repo.split('/')[1]}",
        summary_line(task, hardware, meta, base, weights, manifest),
        "## Recipe",
        recipe_table(config),
        "The whole composed Axolotl config is `config.yaml` here; `manifest.json` records "
        "the library versions, the git commit, the data's hashes and the seed.",
        "## Hardware",
        hardware_line(hardware, manifest),
        "## Data",
        data_lines(datasets),
        "## Evaluation",
        evaluation_section(comparison),
        "## Limitations",
        limitations(meta, hardware, base),
        "## Use",
        usage(repo, weights),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def eval_results(comparison: dict[str, Any]) -> list[Any]:
    """The model-index: each tuned score with its standard error, the base model's score
    beside it, and the settings both were evaluated with."""
    from huggingface_hub import EvalResult

    settings = evaluation_settings(comparison["settings"])
    results = []
    for row in comparison["rows"]:
        if row.get("tuned") is None:
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=row["task"],
                dataset_name=row["task"],
                metric_type=row["metric"],
                metric_value=row["tuned"],
                metric_args={
                    key: row.get(key)
                    for key in (
                        "tuned_stderr",
                        "base",
                        "base_stderr",
                        "delta",
                        "delta_stderr",
                        "p_value",
                        "p_adjusted",
                        "documents",
                        "seeds",
                    )
                },
                metric_config=settings,
            )
        )
    return results


def evaluation_settings(settings: dict[str, Any]) -> str:
    limit = settings.get("limit")
    template = "chat template applied" if settings.get("apply_chat_template") else "no template"
    documents = f"{limit} documents per task" if limit else "every document"
    return (
        f"{settings.get('suite')} suite ({settings.get('variant')}), {settings.get('harness')}, "
        f"backend {settings.get('backend')}, {settings.get('dtype')}, {template}, "
        f"seed {settings.get('seed')}, {documents}"
    )


def summary_line(
    task: str,
    hardware: str,
    meta: dict[str, Any],
    base: str | None,
    weights: str,
    manifest: dict[str, Any],
) -> str:
    method = {
        "lora": "A LoRA adapter",
        "prompt-tuning": "A prompt-tuning adapter (PEFT)",
        "merged": "A LoRA fine-tune, merged into its base,",
        "full": "A full fine-tune" if base else "A model trained from scratch",
    }[weights]
    start = f" of [{base}](https://huggingface.co/{base})" if base else ""
    libraries = manifest.get("libraries") or {}
    versions = ", ".join(
        f"{name} {libraries[name]}"
        for name in ("axolotl", "peft", "transformers", "torch")
        if libraries.get(name)
    )
    description = meta.get("description", task)
    return (
        f"{method}{start} for the **{task}** task: {description}. Trained with the `{task}` "
        f"recipe of llm-tuner on its `{hardware}` overlay ({versions})."
    )


def recipe_table(config: dict[str, Any]) -> str:
    rows = [f"| {key} | {config[key]} |" for key in RECIPE_KEYS if config.get(key) is not None]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


def hardware_line(hardware: str, manifest: dict[str, Any]) -> str:
    gpus = manifest.get("gpus") or []
    cards = ", ".join(sorted({str(g.get("name", "GPU")) for g in gpus}))
    machine = f"{len(gpus)} × {cards}" if gpus else "the CPU alone"
    seconds = manifest.get("wall_time_s")
    took = f"; training took {seconds / 60:.1f} minutes" if seconds else ""
    return f"The `{hardware}` overlay on {machine}{took}."


def data_lines(datasets: list[dict[str, Any]]) -> str:
    lines = []
    for entry in datasets:
        if entry.get("hub"):
            where = f"[{entry['path']}](https://huggingface.co/datasets/{entry['path']})"
            details = [f"{k} {entry[k]}" for k in ("name", "split", "revision") if entry.get(k)]
            lines.append(f"- {where}" + (f" ({', '.join(details)})" if details else ""))
            continue
        lines.append(f"- `{Path(entry['path']).name}`, a local file (sha256 {entry.get('sha256')})")
        local = local_file(entry["path"])
        stats = read_stats(local.parent / "stats.json") if local else None
        if stats and is_filter_stats(stats):
            lines.append(f"  - {filter_summary(stats)}")
    return "\n".join(lines) or "No dataset recorded."


def evaluation_section(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return "Not evaluated: `just eval` writes the base-vs-tuned comparison this card shows."
    lines = [
        "The base and the tuned model, evaluated with the same settings: "
        + evaluation_settings(comparison["settings"])
        + ".",
        "",
        "| task | metric | base | tuned | delta | p |",
        "|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        p = row.get("p_adjusted", row.get("p_value"))
        lines.append(
            f"| {row['task']} | {row['metric']} | {value(row, 'base')} | {value(row, 'tuned')} "
            f"| {value(row, 'delta')} | {'' if p is None else f'{p:.3g}'} |"
        )
    seeds = comparison.get("seeds") or 1
    lines.append("")
    lines.append(
        f"Over {seeds} training seeds; ± is one standard error."
        if seeds > 1
        else "One training seed: ± is one standard error over documents only."
    )
    return "\n".join(lines)


def value(row: dict[str, Any], key: str) -> str:
    number, error = row.get(key), row.get(f"{key}_stderr")
    if number is None:
        return ""
    return f"{number:.4g}" + (f" ± {error:.2g}" if error is not None else "")


def limitations(meta: dict[str, Any], hardware: str, base: str | None) -> str:
    lines = []
    if meta.get("limitations"):
        lines.append(f"- {meta['limitations']}")
    lines.append(
        "- Measured only on the evaluation above; "
        + (
            "it keeps the base model's limitations and biases."
            if base
            else "it was trained from scratch on the data above alone."
        )
    )
    if hardware == "cpu":
        lines.append(
            "- Trained by the cpu overlay: a few steps on a small local sample, a check of "
            "the pipeline rather than a useful model."
        )
    return "\n".join(lines)


def usage(repo: str, weights: str) -> str:
    if weights in ("lora", "prompt-tuning"):
        load = (
            "from peft import AutoPeftModelForCausalLM\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")'
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")'
        )
    return (
        "```python\n"
        f"{load}\n"
        "from transformers import AutoTokenizer\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # its chat template included\n'
        "```"
    )
