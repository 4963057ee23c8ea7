"""What needs no quality, end to end on the tiny random-weight model with the real
tokenizer: the hf backend loading the adapter with PEFT, the report of an evaluated
run, and a killed run resuming from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_tuner
from tests.infer_env import run_infer
from tests.run_checks import assert_comparison_matches_the_harness_json
from tuner.project import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The instruction recipe trained for two steps on the tiny model; its runs folder."""
    runs = tmp_path_factory.mktemp("plumbing") / "runs"
    done = run_tuner(
        "train", "instruction", "cpu", f"base_model={tiny_model}", "max_steps=2", runs=runs
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return runs


def test_eval_through_the_hf_backend_loads_the_adapter_with_peft(tiny_run):
    done = run_infer("eval", "instruction", "cpu", "backend=hf", "limit=2", runs=tiny_run)
    assert done.returncode == 0, done.stderr[-4000:]
    eval_dir = tiny_run / "instruction-cpu" / "eval"
    comparison = assert_comparison_matches_the_harness_json(eval_dir)
    assert comparison["settings"]["backend"] == "hf" and comparison["settings"]["limit"] == 2
    tuned_log = (eval_dir / "tuned" / "lm-eval.log").read_text()
    assert f"peft={tiny_run / 'instruction-cpu'}" in tuned_log
    assert "peft=" not in (eval_dir / "base" / "lm-eval.log").read_text()
    assert all(row["documents"] == 2 for row in comparison["rows"])


def test_report_shows_the_comparison_of_an_evaluated_run_with_its_plot(tiny_run):
    """After the hf evaluation above."""
    env = {**os.environ, "TUNER_DATA": str(tiny_run.parent / "data")}
    done = run_tuner("report", runs=tiny_run, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tiny_run / "report" / "report.md").read_text()
    assert "| tuner_ifeval | prompt_level_strict_acc ↑ |" in report
    assert (tiny_run / "report" / "eval-instruction-cpu.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tiny_run / "report" / "report.json").read_text())
    [entry] = [e for e in data["runs"] if e["run"] == "instruction-cpu"]
    assert entry["comparison"]["settings"]["backend"] == "hf"


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_run, tiny_model):
    """SIGKILL the whole training process group once a checkpoint is complete, then run
    the same command again: it resumes there and finishes the planned steps."""
    steps = 30  # a checkpoint every 2; the tiny model trains a step in milliseconds
    args = [
        "train",
        "math",
        "cpu",
        f"base_model={tiny_model}",
        f"max_steps={steps}",
        "save_steps=2",
    ]
    run = tiny_run / "math-cpu"
    env = {**os.environ, "TUNER_RUNS": str(tiny_run)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not (run / "checkpoint-2" / "trainer_state.json").is_file():
        assert process.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / f"checkpoint-{steps}").exists(), "the run finished before the kill"

    done = run_tuner(*args, runs=tiny_run)
    assert done.returncode == 0, done.stderr[-5000:]
    manifest = json.loads((run / "manifest.json").read_text())
    resumed_step = int(manifest["resumed_from"].split("-")[1])
    assert resumed_step >= 2
    assert f"Resuming from {run / manifest['resumed_from']}" in done.stderr
    state = json.loads((run / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    # The steps before the kill were not trained again: the resumed process logged
    # only the steps after its checkpoint.
    resumed_log = done.stderr[done.stderr.index("$ axolotl train") :]
    assert resumed_log.count("'loss'") == steps - resumed_step
