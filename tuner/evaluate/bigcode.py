"""bigcode-evaluation-harness for the code benchmarks lm-eval lacks (HumanEval+, MBPP+,
MultiPL-E, …): where the harness is, and one model's results on its tasks.

The harness comes from the package index as NVIDIA packages it (`nvidia-bigcode-eval`,
the `bigcode` extra), in an environment of its own: its pins (fsspec < 2023.10) conflict
with datatrove's. The evaluation image (containers/eval.Dockerfile) installs it from its
lock and names that environment's Python in BIGCODE_PYTHON. That package no longer
generates with a local model (scripts/bigcode_prompts.py says why), so per task:
1. the harness writes the task's prompts and stop words (its own task API);
2. the evaluation's engine completes them, greedily, one per problem (vLLM or
   transformers, as for lm-eval; base and tuned the same but for the model);
3. the harness scores the completions (`--load_generations_path`), running the code
   itself (`--allow_code_execution`) inside the evaluation container, the sandbox there.
It reports aggregate scores only, so pass@1's standard error is the binomial one over
the problems it scored.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from tuner.environments import subprocess_env
from tuner.errors import TunerError
from tuner.evaluate.harness import Engine, ModelUnderTest, harness_env
from tuner.evaluate.suites import Settings
from tuner.generate.backends import Backend, ModelSlot
from tuner.generate.templates import Sampling
from tuner.logged import run_logged
from tuner.project import ROOT

HARNESS_PYTHON_ENV = "BIGCODE_PYTHON"
DISTRIBUTION = "nvidia-bigcode-eval"
PROMPTS_SCRIPT = ROOT / "scripts" / "bigcode_prompts.py"
# New tokens per completion: the harness's own default for its served models.
MAX_NEW_TOKENS = 512


def harness_python(tasks: list[str]) -> Path:
    """The Python of the environment holding the harness, from BIGCODE_PYTHON."""
    configured = os.environ.get(HARNESS_PYTHON_ENV)
    if not configured:
        raise TunerError(
            f"The suite runs {', '.join(tasks)} with bigcode-evaluation-harness, which is not "
            f"set up here ({HARNESS_PYTHON_ENV} is unset). Run `just eval` inside the "
            "evaluation image (`just build HW --eval`), or make an environment for it "
            "(`python3 -m venv .venvs/bigcode && .venvs/bigcode/bin/pip install '.[bigcode]'`) "
            f"and set {HARNESS_PYTHON_ENV}=.venvs/bigcode/bin/python."
        )
    python = Path(configured)
    if not python.is_file():
        raise TunerError(
            f"{HARNESS_PYTHON_ENV}={configured}: no such file; it must name the Python of an "
            f"environment with {DISTRIBUTION} installed."
        )
    return python


def bigcode_version(python: Path) -> str:
    """The installed harness's version, as that environment's metadata says."""
    done = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({DISTRIBUTION!r}))"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise TunerError(
            f"{HARNESS_PYTHON_ENV}={python}: {DISTRIBUTION} is not installed in that "
            f"environment ({last})."
        )
    return f"{DISTRIBUTION} {done.stdout.strip()}"


def prompts_command(python: Path, task: str, limit: int | None, out: Path) -> list[str]:
    """The task's prompts and stop words, written by the harness's task API."""
    command = [str(python), str(PROMPTS_SCRIPT), task, str(out)]
    return command + (["--limit", str(limit)] if limit is not None else [])


def score_command(python: Path, task: str, generations: Path, count: int, out: Path) -> list[str]:
    """The harness scoring saved generations: it runs each against the problem's tests."""
    command = [str(python), "-m", "bigcode_eval.main", "--tasks", task]
    command += ["--load_generations_path", str(generations), "--n_samples", "1"]
    command += ["--limit", str(count), "--allow_code_execution"]
    return [*command, "--metric_output_path", str(out / "metrics.json")]


def generate(backend: Backend, prompts: list[str], stop: list[str], seed: int) -> list[list[str]]:
    """Greedy completions, one per problem, each with its prompt in front: the form the
    harness's post-processing cuts the prompt from."""
    greedy = Sampling(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    completions = backend.complete(prompts, greedy, [seed] * len(prompts), stop)
    return [
        [prompt + completion.text] for prompt, completion in zip(prompts, completions, strict=True)
    ]


def run_bigcode(
    python: Path,
    model: ModelUnderTest,
    engine: Engine,
    tasks: list[str],
    settings: Settings,
    out: Path,
) -> dict[str, Any]:
    """Each task for one model into `out/TASK/`: the harness's prompts, completions by
    the evaluation's engine, then the harness's scores; the results in the project's
    shape. The model is one folder: an adapter is merged into its base beforehand."""
    failed = (
        f"Results of the {model.label} model are not written; fix the cause and run the "
        "same command again."
    )
    env = harness_env(offline=False)
    # One model on the GPU at a time: it is freed before the next model's evaluation.
    slot = ModelSlot(settings.seed, dtype=engine.dtype)
    backend = slot.get(model.pretrained, "vllm" if engine.backend == "vllm" else "transformers")
    try:
        return {
            task: bigcode_task(python, backend, task, settings, out / task, env, failed)
            for task in tasks
        }
    finally:
        slot.release()


def bigcode_task(
    python: Path,
    backend: Backend,
    task: str,
    settings: Settings,
    folder: Path,
    env: dict[str, str],
    failed: str,
) -> dict[str, Any]:
    """One task into `folder`: the harness's prompts, the completions, its scores."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "bigcode.log"
    prompts_path = folder / "prompts.json"
    # In the caller's directory: the harness's datasets load from a folder of their name
    # there before the Hub (an offline copy of evalplus/humanevalplus, say).
    here = Path.cwd()
    run_logged(prompts_command(python, task, settings.limit, prompts_path), env, log, failed, here)
    asked = json.loads(prompts_path.read_text())
    generations = generate(backend, asked["prompts"], asked["stop"], settings.seed)
    generations_path = folder / "generations.json"
    generations_path.write_text(json.dumps(generations))
    scoring = score_command(python, task, generations_path, len(generations), folder)
    run_logged(scoring, env, log, failed, here)
    return read_bigcode_result(folder, task)


def binomial_stderr(rate: float, trials: int) -> float | None:
    """The standard error of a mean of `trials` 0/1 outcomes whose mean is `rate`, as
    lm-eval computes it for its own pass@1 (sample standard deviation)."""
    if trials < 2:
        return None
    return math.sqrt(rate * (1 - rate) / (trials - 1))


def read_bigcode_result(folder: Path, task: str) -> dict[str, Any]:
    """The harness's metrics.json ({task: {metric: value, metric_stderr: …}, "config": …})
    and the generations it scored (one list per problem) → the project's {samples,
    output_type, metrics}; pass@1's standard error is lm-eval's (the sample standard
    deviation), so that it compares with lm-eval's tasks."""
    path = folder / "metrics.json"
    if not path.is_file():
        raise TunerError(f"{path}: bigcode-evaluation-harness wrote no metrics (see bigcode.log).")
    values = json.loads(path.read_text()).get(task)
    if not isinstance(values, dict):
        raise TunerError(f"{path} holds no results for {task} (see {folder / 'bigcode.log'}).")
    generations = folder / "generations.json"
    problems = len(json.loads(generations.read_text())) if generations.is_file() else None
    metrics = {}
    for name, value in values.items():
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or name.endswith("_stderr")
        ):
            continue
        stderr = binomial_stderr(value, problems) if name == "pass@1" and problems else None
        metrics[name] = {
            "value": float(value),
            "stderr": stderr,
            "higher_is_better": True,
            "per_sample": {},
        }
    return {"samples": problems, "output_type": "generate_until", "metrics": metrics}
