"""The local variant of every suite: each of the project's lm-eval tasks runs on its
fixture and scores, here on the tiny random-weight model (what its answers are worth
is not the point; the evaluation tests that compare base and tuned models on the
embedded one are in test_demo.py)."""

from __future__ import annotations

import math
import subprocess

import pytest

from tuner.environments import INFER_PYTHON
from tuner.evaluate.harness import (
    Engine,
    ModelUnderTest,
    harness_env,
    lm_eval_command,
    read_results,
)
from tuner.evaluate.suites import load_suite, suite_names
from tuner.project import ROOT

pytestmark = pytest.mark.slow


def test_every_local_benchmark_runs_and_reports_every_metric(tiny_model, tmp_path):
    """Every project task of every suite's local variant, one document each, in one call
    of the command `just eval` builds (hf backend, chat template): each reports a number
    for each of its metrics. test_demo.py and test_judged_and_code_suites.py run
    suites whole through `just eval`."""
    tasks = sorted({b.task for name in suite_names() for b in load_suite(name).local.on("lm-eval")})
    settings = load_suite("instruction").settings.model_copy(update={"limit": 1})
    model = str(tiny_model)
    command = lm_eval_command(
        Engine("hf", "bfloat16", cpu=True),
        ModelUnderTest("base", model, model),
        tasks,
        None,
        settings,
        tmp_path / "out",
    )
    command[0] = str(INFER_PYTHON)
    done = subprocess.run(
        command, cwd=ROOT, env=harness_env(offline=True), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = read_results([tmp_path / "out"])
    assert sorted(results) == tasks
    for task, result in results.items():
        assert result["samples"] == 1 and result["metrics"], task
        assert not any(math.isnan(m["value"]) for m in result["metrics"].values()), task
