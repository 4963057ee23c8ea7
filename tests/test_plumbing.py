"""What needs no quality, end to end on the tiny random-weight model with the real
tokenizer: the hf backend loading the adapter with PEFT, the report of an evaluated
run, a killed run resuming from its checkpoint, and its curves in TensorBoard, W&B and
MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_tuner
from tests.infer_env import run_infer
from tests.run_checks import assert_comparison_matches_the_harness_json, wandb_offline_history
from tuner.project import ROOT

pytestmark = pytest.mark.slow


STEPS = 30  # a checkpoint every 2; the tiny model trains a step in milliseconds


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The instruction recipe on the tiny model, its whole training process group
    SIGKILLed once a checkpoint is complete, then the same command again, which resumes
    there and finishes the planned steps, with W&B (offline: its server is out of reach
    here) and MLflow (a local file store) named in the environment this time. The
    evaluation and report tests use that run."""
    runs = tmp_path_factory.mktemp("plumbing") / "runs"
    trackers = runs.parent / "trackers"
    overrides = [f"base_model={tiny_model}", f"max_steps={STEPS}", "save_steps=2"]
    args = ["train", "instruction", "cpu", *overrides]
    run = runs / "instruction-cpu"
    process = subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=ROOT,
        env={**os.environ, "TUNER_RUNS": str(runs)},
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
    finished_before_the_kill = (run / f"checkpoint-{STEPS}").exists()
    tracked = {
        **os.environ,
        "WANDB_API_KEY": "offline-runs-need-no-real-key",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(trackers),
        "MLFLOW_TRACKING_URI": (trackers / "mlruns").as_uri(),
        # MLflow 3 keeps its file store behind this; sqlite needs the full mlflow.
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }
    resumed = run_tuner(*args, runs=runs, env=tracked)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    return {
        "runs": runs,
        "trackers": trackers,
        "overrides": overrides,
        "resumed": resumed,
        "finished_before_the_kill": finished_before_the_kill,
    }


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_run):
    assert not tiny_run["finished_before_the_kill"], "the run finished before the kill"
    run, done = tiny_run["runs"] / "instruction-cpu", tiny_run["resumed"]
    manifest = json.loads((run / "manifest.json").read_text())
    resumed_step = int(manifest["resumed_from"].split("-")[1])
    assert resumed_step >= 2
    assert f"Resuming from {run / manifest['resumed_from']}" in done.stderr
    state = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    # The steps before the kill were not trained again: the resumed process logged
    # only the steps after its checkpoint.
    resumed_log = done.stderr[done.stderr.index("$ axolotl train") :]
    assert resumed_log.count("'loss'") == STEPS - resumed_step


def test_eval_through_the_hf_backend_loads_the_adapter_with_peft(tiny_run):
    runs = tiny_run["runs"]
    done = run_infer("eval", "instruction", "cpu", "backend=hf", "limit=2", runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    eval_dir = runs / "instruction-cpu" / "eval"
    comparison = assert_comparison_matches_the_harness_json(eval_dir)
    assert comparison["settings"]["backend"] == "hf" and comparison["settings"]["limit"] == 2
    tuned_log = (eval_dir / "tuned" / "lm-eval.log").read_text()
    assert f"peft={runs / 'instruction-cpu'}" in tuned_log
    assert "peft=" not in (eval_dir / "base" / "lm-eval.log").read_text()
    assert all(row["documents"] == 2 for row in comparison["rows"])


def test_report_shows_the_comparison_of_an_evaluated_run_with_its_plot(tiny_run):
    """After the hf evaluation above."""
    runs = tiny_run["runs"]
    env = {**os.environ, "TUNER_DATA": str(runs.parent / "data")}
    done = run_tuner("report", runs=runs, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (runs / "report" / "report.md").read_text()
    assert "| tuner_ifeval | prompt_level_strict_acc ↑ |" in report
    events = runs / "instruction-cpu" / "runs"
    assert f"Curves: TensorBoard events in [{events}](../instruction-cpu/runs)" in report
    assert "also logged to wandb, mlflow." in report
    assert (runs / "report" / "eval-instruction-cpu.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((runs / "report" / "report.json").read_text())
    [entry] = [e for e in data["runs"] if e["run"] == "instruction-cpu"]
    assert entry["comparison"]["settings"]["backend"] == "hf"


def test_two_training_seeds_are_compared_with_the_base_over_seeds_and_documents(tiny_run):
    """After the hf evaluation above: its run is the first seed, kept; `seeds=2` trains
    the second alone, and the evaluation reuses the base's and the first seed's results."""
    runs = tiny_run["runs"]
    args = ["train", "instruction", "cpu", *tiny_run["overrides"], "seeds=2"]
    trained = run_tuner(*args, runs=runs)
    assert trained.returncode == 0, trained.stderr[-4000:]
    assert "[1/2] seed 42: trained before, kept." in trained.stderr
    second = runs / "seeds" / "seed-43" / "instruction-cpu"
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["seed"] == 43

    done = run_infer("eval", "instruction", "cpu", "backend=hf", "limit=2", "seeds=2", runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("reusing its results") == 2
    assert f"peft={second}" in (second / "eval" / "tuned" / "lm-eval.log").read_text()
    eval_dir = runs / "instruction-cpu" / "eval"
    comparison = json.loads((eval_dir / "comparison.json").read_text())
    assert comparison["seeds"] == 2 and len(comparison["tuned_models"]) == 2
    first_results, second_results = (
        json.loads((folder / "eval" / "tuned" / "results.json").read_text())
        for folder in (runs / "instruction-cpu", second)
    )
    for row in comparison["rows"]:
        values = [
            r["tasks"][row["task"]]["metrics"][row["metric"]]["value"]
            for r in (first_results, second_results)
        ]
        assert row["seeds"] == 2
        assert row["tuned"] == pytest.approx(sum(values) / 2)
        assert row["tuned_stderr"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert "the mean of 2 training seeds" in (eval_dir / "comparison.md").read_text()


def test_the_zero_cost_suite_runs_its_proxy_and_behavioural_tasks_through_lm_eval(tiny_run):
    """Into eval-zero-cost/, beside the task's own eval/: items built by lm-eval from the
    tasks' metadata, the behavioural metrics computed from its samples."""
    runs = tiny_run["runs"]
    args = ["eval", "instruction", "cpu", "suite=zero-cost", "only=base", "backend=hf", "limit=6"]
    done = run_infer(*args, runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(
        (runs / "instruction-cpu" / "eval-zero-cost" / "base" / "results.json").read_text()
    )
    assert results["settings"]["suite"] == "zero-cost"
    tasks = results["tasks"]
    for task in ("arithmetic", "sequences", "copy_reverse", "dates_units", "noisy"):
        assert tasks[f"tuner_proxy_{task}"]["samples"] == 6
        assert 0 <= tasks[f"tuner_proxy_{task}"]["metrics"]["exact_match"]["value"] <= 1
    # Six documents of the paraphrased task: two items asked three ways each.
    agreement = tasks["tuner_proxy_paraphrased"]["metrics"]["agreement"]
    assert len(agreement["per_sample"]) == 2
    drop = tasks["tuner_proxy_noisy"]["metrics"]["robustness_drop"]
    clean = tasks["tuner_proxy_arithmetic"]["metrics"]["exact_match"]["per_sample"]
    noisy = tasks["tuner_proxy_noisy"]["metrics"]["exact_match"]["per_sample"]
    assert drop["value"] == pytest.approx(sum(clean.values()) / 6 - sum(noisy.values()) / 6)
    assert set(tasks["tuner_proxy_formatted"]["metrics"]) >= {"format_followed", "exact_match"}
    assert "distinct_2" in tasks["tuner_proxy_copy_reverse"]["metrics"]


def test_training_writes_its_loss_curve_as_tensorboard_events(tiny_run):
    """Read back with tensorboard's own reader: the resumed process logged each step's
    loss as the trainer recorded it (the killed one's events may not have been flushed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tiny_run["runs"] / "instruction-cpu"
    logged = {}
    for folder in sorted((run / "runs").iterdir()):
        events = EventAccumulator(str(folder))
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            logged |= {e.step: e.value for e in events.Scalars("train/loss")}
    manifest = json.loads((run / "manifest.json").read_text())
    resumed_step = int(manifest["resumed_from"].split("-")[1])
    state = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    recorded = {r["step"]: r["loss"] for r in state["log_history"] if "loss" in r}
    after = {step: loss for step, loss in recorded.items() if step > resumed_step}
    assert after and {step: logged.get(step) for step in after} == pytest.approx(after)


def test_w_and_b_and_mlflow_log_the_resumed_run_when_the_environment_names_them(
    tiny_run, monkeypatch
):
    """The run began without trackers and resumed with them: same config, so resumed
    rather than refused; each tracker holds the steps trained after the checkpoint."""
    import mlflow

    run = tiny_run["runs"] / "instruction-cpu"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["trackers"] == ["tensorboard", "wandb", "mlflow"]
    assert "--wandb-project=llm-tuner --wandb-name=instruction-cpu" in tiny_run["resumed"].stderr
    assert "offline-runs-need-no-real-key" not in (run / "logs" / "axolotl.log").read_text()
    state = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    recorded = {r["step"]: r["loss"] for r in state["log_history"] if "loss" in r}

    resumed_step = int(manifest["resumed_from"].split("-")[1])
    after = {step: loss for step, loss in recorded.items() if step > resumed_step}

    [offline] = (tiny_run["trackers"] / "wandb").glob("offline-run-*/run-*.wandb")
    rows = [row for row in wandb_offline_history(offline) if "train/loss" in row]
    wandb_losses = {int(row["train/global_step"]): float(row["train/loss"]) for row in rows}
    assert wandb_losses == pytest.approx(after)

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient((tiny_run["trackers"] / "mlruns").as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "llm-tuner"]
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "instruction-cpu"
    history = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "loss")}
    assert history == pytest.approx(after)


def test_two_nodes_on_loopback_train_one_run_over_gloo(tiny_model, tiny_run, tmp_path):
    """`just train instruction cpu nodes=2` on two "machines" that meet on loopback, as
    two GPU nodes meet at MASTER_ADDR: Axolotl's torchrun launch, one process each,
    DDP over gloo. Each step takes a micro-batch from each, so an epoch goes by twice
    as fast as in the one-process tiny run."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runs = tmp_path / "runs"
    args = ["train", "instruction", "cpu", "nodes=2", *tiny_run["overrides"][:1]]
    args += ["max_steps=4", "save_steps=4"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "tuner", *args],
            cwd=ROOT,
            env={
                **os.environ,
                "TUNER_RUNS": str(runs),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "NODE_RANK": str(rank),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    done = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, done, strict=True):
        assert node.returncode == 0, stderr[-3000:]
    run = runs / "instruction-cpu"
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    launched = (run / "logs" / "axolotl.node-1.log").read_text()
    assert "--launcher torchrun -- --nnodes=2 --nproc_per_node=1 --node_rank=1" in launched
    assert f"--master_addr=127.0.0.1 --master_port={port}" in launched

    def epoch_per_step(folder) -> float:
        state = json.loads((folder / "trainer_state.json").read_text())
        return state["epoch"] / state["global_step"]

    one = epoch_per_step(tiny_run["runs"] / "instruction-cpu" / f"checkpoint-{STEPS}")
    assert epoch_per_step(run / "checkpoint-4") == pytest.approx(2 * one, rel=0.05)
    assert (run / "adapter_model.safetensors").is_file()
