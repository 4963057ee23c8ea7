"""lm-evaluation-harness as a subprocess: the command line for one model, and its JSON
output read back into the project's shape.

Both models of a comparison get the same command but for the model: same harness,
tasks, chat template (the tokenizer saved with the run, i.e. the template training
used), seed, batch size, dtype and engine flags. The hf backend loads the adapter with
`peft=`; vLLM runs the adapter merged into the base (see merge.py). A prompt-tuning
adapter merges into no weights: it runs on the hf backend, for both models.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.environments import subprocess_env
from tuner.errors import TunerError
from tuner.evaluate.suites import TASKS_DIR, Benchmark, Settings, project_tasks
from tuner.logged import run_logged

BACKENDS = ("vllm", "hf")


@dataclass(frozen=True)
class ModelUnderTest:
    label: str  # "base" or "tuned"
    pretrained: str
    tokenizer: str
    adapter: Path | None = None

    @property
    def mergeable(self) -> bool:
        """No adapter, or one whose weights merge into the base's (LoRA). Prompt
        tuning's virtual tokens are an input, not a change of weights."""
        if self.adapter is None:
            return True
        from peft import PeftConfig

        return not PeftConfig.from_pretrained(str(self.adapter)).is_prompt_learning


@dataclass(frozen=True)
class Engine:
    """How the models are run: the same for base and tuned."""

    backend: str
    dtype: str
    cpu: bool

    def model_args(self, model: ModelUnderTest, seed: int) -> str:
        args: dict[str, Any] = {"pretrained": model.pretrained, "tokenizer": model.tokenizer}
        args["dtype"] = self.dtype
        if self.backend == "vllm":
            args["seed"] = seed
            if self.cpu:
                # Compilation costs a minute at every start on CPU.
                args["enforce_eager"] = True
        elif model.adapter is not None:
            args["peft"] = str(model.adapter)
        return ",".join(f"{key}={value}" for key, value in args.items())

    def batch_size(self, settings: Settings) -> str:
        # vLLM schedules its own batches; "auto" hands it every request at once.
        return "auto" if self.backend == "vllm" else str(settings.batch_size)


def default_backend() -> str:
    return "vllm" if importlib.util.find_spec("vllm") else "hf"


def backend_for(requested: str | None, models: list[ModelUnderTest]) -> str:
    """The backend asked for (one of BACKENDS: the option's converter says so), else
    vLLM where installed; hf where a model's adapter cannot be merged for vLLM."""
    unmergeable = [m for m in models if not m.mergeable]
    if unmergeable:
        if requested == "vllm":
            raise TunerError(
                f"backend=vllm: the adapter in {unmergeable[0].adapter} is prompt tuning, "
                "whose virtual tokens merge into no weights vLLM can load. Use backend=hf "
                "(its default), which runs it with PEFT."
            )
        return "hf"
    name = requested or default_backend()
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        raise TunerError("backend=vllm: vLLM is not installed here; use backend=hf.")
    return name


def harness_version() -> str:
    return importlib.metadata.version("lm_eval")


def fewshot_groups(benchmarks: list[Benchmark]) -> dict[int | None, list[str]]:
    """lm-eval's --num_fewshot holds for one whole call: one call per few-shot count."""
    groups: dict[int | None, list[str]] = {}
    for benchmark in benchmarks:
        groups.setdefault(benchmark.num_fewshot, []).append(benchmark.task)
    return groups


def lm_eval_command(
    engine: Engine,
    model: ModelUnderTest,
    tasks: list[str],
    num_fewshot: int | None,
    settings: Settings,
    out: Path,
) -> list[str]:
    # The project's own tasks alone need no index of lm-eval's built-in ones.
    entry = "tuner.evaluate.lm_eval_main" if set(tasks) <= project_tasks() else "lm_eval"
    command = [sys.executable, "-m", entry, "--model", engine.backend]
    command += ["--model_args", engine.model_args(model, settings.seed)]
    command += ["--tasks", ",".join(tasks), "--include_path", str(TASKS_DIR)]
    command += ["--batch_size", engine.batch_size(settings), "--seed", str(settings.seed)]
    command += ["--output_path", str(out), "--log_samples"]
    if settings.apply_chat_template:
        command.append("--apply_chat_template")
    # lm-eval turns this on with the chat template unless told otherwise: it is said
    # either way, so the setting recorded with the results is the one that ran.
    command += ["--fewshot_as_multiturn", str(settings.fewshot_as_multiturn).lower()]
    if num_fewshot is not None:
        command += ["--num_fewshot", str(num_fewshot)]
    if settings.limit is not None:
        command += ["--limit", str(settings.limit)]
    return command


def harness_env(offline: bool) -> dict[str, str]:
    env = subprocess_env()
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if offline:
        env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    return env


def run_harness(
    engine: Engine,
    model: ModelUnderTest,
    benchmarks: list[Benchmark],
    settings: Settings,
    out: Path,
    offline: bool,
) -> list[Path]:
    """Run lm-eval for one model (one call per few-shot count) into `out`; returns the
    folders holding its results and samples."""
    folders = []
    for index, (num_fewshot, tasks) in enumerate(fewshot_groups(benchmarks).items()):
        folder = out / f"call-{index}"
        command = lm_eval_command(engine, model, tasks, num_fewshot, settings, folder)
        run_logged(
            command,
            harness_env(offline),
            out / "lm-eval.log",
            f"Results of the {model.label} model are not written; fix the cause and run "
            "the same command again.",
        )
        folders.append(folder)
    return folders


def read_results(folders: list[Path]) -> dict[str, Any]:
    """lm-eval's results files → {task: {"samples": n, "metrics": {name: {value,
    stderr, higher_is_better, per_sample}}}}. A metric computed through a filter other
    than "none" is named metric/filter."""
    tasks: dict[str, Any] = {}
    for folder in folders:
        results_files = sorted(folder.rglob("results_*.json"))
        if not results_files:
            raise TunerError(f"{folder}: lm-eval wrote no results_*.json (see lm-eval.log).")
        raw = json.loads(results_files[-1].read_text())
        for task, values in raw["results"].items():
            better = raw.get("higher_is_better", {}).get(task, {})
            samples = read_samples(results_files[-1].parent, task)
            metrics = {}
            for key, value in values.items():
                metric, _, filter_name = key.partition(",")
                if metric == "alias" or metric.endswith("_stderr") or not filter_name:
                    continue
                if not isinstance(value, int | float):
                    continue
                name = metric if filter_name == "none" else f"{metric}/{filter_name}"
                stderr = values.get(f"{metric}_stderr,{filter_name}")
                metrics[name] = {
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                    "higher_is_better": better.get(metric, True),
                    "per_sample": per_sample(samples, metric, filter_name),
                }
                if metric in CORPUS_METRICS:
                    metrics[name]["per_sample_pairs"] = per_sample_pairs(
                        samples, metric, filter_name
                    )
            count = raw.get("n-samples", {}).get(task, {}).get("effective")
            output_type = raw.get("configs", {}).get(task, {}).get("output_type")
            tasks[task] = {"samples": count, "output_type": output_type, "metrics": metrics}
    return tasks


def read_samples(folder: Path, task: str) -> list[dict[str, Any]]:
    files = sorted(folder.glob(f"samples_{task}_*.jsonl"))
    if not files:
        return []
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


# lm-eval's loglikelihood_rolling metrics: each document logs (log-likelihood, words or
# bytes) and the metric is computed over the sums, not as a mean of per-document values.
CORPUS_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def per_sample_pairs(
    samples: list[dict[str, Any]], metric: str, filter_name: str
) -> dict[str, list[float]]:
    """[log-likelihood, words or bytes] of each document by doc_id, for a corpus
    metric: what an experiment resamples to put a confidence interval on it."""
    pairs = {}
    for sample in samples:
        value = sample.get(metric)
        if sample.get("filter", "none") == filter_name and isinstance(value, list | tuple):
            pairs[str(sample["doc_id"])] = [float(value[0]), float(value[1])]
    return pairs


def per_sample(samples: list[dict[str, Any]], metric: str, filter_name: str) -> dict[str, float]:
    """The metric of each document by doc_id, for paired standard errors."""
    values = {}
    for sample in samples:
        if sample.get("filter", "none") != filter_name:
            continue
        value = sample.get(metric)
        if isinstance(value, bool | int | float):
            values[str(sample["doc_id"])] = float(value)
    return values


def responses(folders: list[Path], task: str) -> list[dict[str, Any]]:
    """The generated answers of a generate_until task, one per document (a task with
    several filters logs each document once per filter): doc_id, document, answer."""
    answers: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for results_file in folder.rglob("results_*.json"):
            for sample in read_samples(results_file.parent, task):
                answer = sample["resps"][0][0] if sample["resps"] else None
                if isinstance(answer, str):
                    doc_id = str(sample["doc_id"])
                    answers.setdefault(
                        doc_id, {"doc_id": doc_id, "doc": sample["doc"], "text": answer}
                    )
    return list(answers.values())
