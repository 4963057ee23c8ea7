"""The pretrain task: a shape from recipes/shapes/ with fresh weights, full training on
conversations and plain text together. Composition and planning for the GPU targets;
on cpu the tiny shape really trains from scratch, and only the trained model is
evaluated (there is no base model with weights to compare with)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk
from safetensors.torch import load_file
from scipy.stats import t as t_distribution

from tests.infer_env import run_infer
from tests.run_checks import trainer_log
from tuner.memory import architecture_for
from tuner.plan import make_plan
from tuner.project import ROOT, SHAPES_DIR
from tuner.recipes import compose

SHAPE_SIZES = {
    "llama-tiny": 3.3e6,
    "llama-tiny-wide": 6.78e6,
    "llama-125m": 134.5e6,
    "llama-500m": 502.6e6,
    "llama-1b": 1.07e9,
}


def test_each_shape_has_its_stated_size_on_smollm2s_vocabulary():
    assert sorted(p.name for p in SHAPES_DIR.iterdir()) == sorted(SHAPE_SIZES)
    for name, size in SHAPE_SIZES.items():
        arch = architecture_for(f"./recipes/shapes/{name}")
        assert arch.vocab == 49152 and arch.tied, name
        assert abs(arch.params - size) / size < 0.01, (name, arch.params)


def test_pretrain_composes_full_training_from_fresh_weights_on_every_target():
    for hardware in ("t4", "a100", "4090x8", "dgx-spark"):
        config = compose("pretrain", hardware).config
        assert config["reinit_weights"] is True and config["adapter"] is None, hardware
        assert not [key for key in config if key.startswith("lora_")], hardware
        assert not config.get("load_in_4bit") and not config.get("load_in_8bit"), hardware
        assert config["base_model"] == "./recipes/shapes/llama-125m"
        assert config["tokenizer_config"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert [d["type"] for d in config["datasets"]] == ["chat_template", "completion"]
    cpu = compose("pretrain", "cpu").config
    assert cpu["base_model"] == "./recipes/shapes/llama-tiny"
    assert cpu["tokenizer_config"].endswith("models/SmolLM2-135M-Instruct")
    assert [d["path"] for d in cpu["datasets"]] == [
        "./recipes/data/instruction.jsonl",
        "./recipes/data/pretrain-text.jsonl",
    ]


@pytest.mark.parametrize("shape", ["llama-125m", "llama-500m", "llama-1b"])
def test_the_planner_sizes_full_training_of_each_shape_on_the_4090s(shape):
    plan = make_plan("pretrain", "4090x8", [f"base_model=./recipes/shapes/{shape}"])
    assert plan.band is not None and plan.band.method == "full" and plan.fits
    # No adapter: the optimizer holds states for the model's own weights.
    assert plan.memory.adapter == 0 and plan.memory.optimizer > 0
    assert plan.steps > 0 and plan.hours and plan.hours > 0


def experiment_run(runs: Path) -> subprocess.Popen:
    env = {**os.environ, "TUNER_RUNS": str(runs)}
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", "experiment", "pure-synthetic", "cpu"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The pure-synthetic experiment at cpu scale (two tiny shapes × two seeds),
    interrupted with Ctrl-C once its first run is evaluated, then run again to the end."""
    runs = tmp_path_factory.mktemp("pretrain") / "runs"
    folder = runs / "experiments" / "pure-synthetic"
    first = folder / "size-tiny" / "seed-1" / "pretrain-cpu" / "eval" / "tuned" / "results.json"
    process = experiment_run(runs)
    try:
        deadline = time.monotonic() + 900
        while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert first.is_file(), process.communicate(timeout=60)[0][-5000:]
        os.killpg(process.pid, signal.SIGINT)
        interrupted = process.communicate(timeout=120)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, interrupted[-3000:]
    first_written = first.stat().st_mtime_ns
    process = experiment_run(runs)
    try:
        resumed = process.communicate(timeout=1500)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, resumed[-5000:]
    return {
        "folder": folder,
        "resumed": resumed,
        "first_untouched": first.stat().st_mtime_ns == first_written,
    }


@pytest.fixture(scope="module")
def trained(experiment: dict) -> Path:
    """The runs folder of the experiment's first run: the pretrain recipe on cpu as
    `just train pretrain cpu` trains it (the tiny shape), at seed 1."""
    return experiment["folder"] / "size-tiny" / "seed-1"


def lm_eval_samples(run: Path, task: str) -> dict[str, list[float]]:
    """[log-likelihood, words] per document, read from lm-eval's own samples file."""
    [path] = (run / "eval" / "tuned").glob(f"call-0/*/samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {str(row["doc_id"]): row["word_perplexity"] for row in rows}


@pytest.mark.slow
def test_an_interrupted_experiment_resumes_without_redoing_finished_runs(experiment):
    assert "[1/4] size-tiny seed 1: done before, skipped." in experiment["resumed"]
    assert "[4/4] size-tiny-wide seed 2: training and evaluating" in experiment["resumed"]
    assert experiment["first_untouched"]
    folder = experiment["folder"]
    assert {p.name for p in folder.iterdir()} >= {
        "report.md",
        "results.json",
        "tuner_perplexity_chat__word_perplexity.png",
        "tuner_perplexity_instruction__word_perplexity.png",
    }
    report = (folder / "report.md").read_text()
    assert "Benjamini-Hochberg" in report and "size: tiny-wide vs tiny" in report
    assert "At this scale: two tiny shapes" in report and "say nothing of the full scale" in report
    # The from-scratch criteria, per cell: 20 steps leave perplexity far above 20.
    results = json.loads((folder / "results.json").read_text())
    checks = {(c["cell"], c["criterion"]): c for c in results["criteria"]}
    [mean] = [
        c["mean"]
        for c in results["cells"]
        if c["cell"] == "size-tiny" and c["metric"] == "tuner_perplexity_chat/word_perplexity"
    ]
    perplexity = checks[("size-tiny", "tuner_perplexity_chat/word_perplexity < 20")]
    assert perplexity["value"] == f"{mean:.4g}" and perplexity["passed"] is (mean < 20)
    assert checks[("size-tiny", "stable training")]["passed"]
    assert "## Success criteria" in report


@pytest.mark.slow
def test_the_reported_interval_and_p_value_are_recomputed_from_the_runs(experiment):
    folder = experiment["folder"]
    results = json.loads((folder / "results.json").read_text())
    metric = "tuner_perplexity_chat/word_perplexity"
    # A cell's seeds: lm-eval's own corpus perplexity of each run, and a t interval.
    [cell] = [c for c in results["cells"] if c["cell"] == "size-tiny" and c["metric"] == metric]
    per_seed = []
    for seed in cell["seeds"]:
        run = folder / "size-tiny" / f"seed-{seed}" / "pretrain-cpu"
        [path] = (run / "eval" / "tuned").glob("call-0/*/results_*.json")
        per_seed.append(json.loads(path.read_text())["results"]["tuner_perplexity_chat"])
    per_seed = [r["word_perplexity,none"] for r in per_seed]
    assert cell["per_seed"] == pytest.approx(per_seed)
    mean = sum(per_seed) / 2
    half = t_distribution.ppf(0.975, 1) * abs(per_seed[0] - per_seed[1]) / 2
    assert cell["mean"] == pytest.approx(mean)
    assert [cell["low"], cell["high"]] == pytest.approx([mean - half, mean + half])

    # The comparison: its own bootstrap over seeds, then documents, from the samples.
    [tested] = [c for c in results["comparisons"] if c["metric"] == metric]
    units = []
    for seed in (1, 2):
        a, b = (
            lm_eval_samples(
                folder / name / f"seed-{seed}" / "pretrain-cpu", "tuner_perplexity_chat"
            )
            for name in ("size-tiny", "size-tiny-wide")
        )
        docs = sorted(a)
        units.append(([a[d] for d in docs], [b[d] for d in docs]))

    def perplexity(pairs: list[list[float]]) -> float:
        return math.exp(-sum(p[0] for p in pairs) / sum(p[1] for p in pairs))

    observed = sum(perplexity(b) - perplexity(a) for a, b in units) / len(units)
    assert tested["difference"] == pytest.approx(observed)
    rng = random.Random(7)
    strays = []
    for _ in range(2000):
        total = 0.0
        for _ in units:
            a, b = units[rng.randrange(len(units))]
            picks = [rng.randrange(len(a)) for _ in a]
            total += perplexity([b[i] for i in picks]) - perplexity([a[i] for i in picks])
        strays.append(abs(total / len(units) - observed))
    p_value = (1 + sum(stray >= abs(observed) for stray in strays)) / (1 + len(strays))
    assert tested["p_value"] == pytest.approx(p_value, abs=0.03)
    half_width = sorted(strays)[int(0.95 * len(strays))]
    assert tested["high"] - tested["difference"] == pytest.approx(half_width, rel=0.15)
    assert tested["verdict"].startswith("significant" if tested["p_adjusted"] < 0.05 else "not")


@pytest.mark.slow
def test_the_tiny_shape_trains_from_scratch_and_its_loss_falls(trained):
    run = trained / "pretrain-cpu"
    losses = [row["loss"] for row in trainer_log(run) if "loss" in row]
    assert len(losses) == 20
    # Fresh weights predict about uniformly over the vocabulary: ln(49,152) = 10.8.
    assert abs(losses[0] - math.log(49152)) < 1.0, losses[0]
    # At the cpu overlay's 1e-3, 20 steps of a 3M model from scratch fall by about 0.6
    # nats (its perplexity by almost half); 1e-2 would fall by 4 (`learning_rate=0.01`).
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    # No adapter: the whole model is saved, with the shape's parameters.
    assert not (run / "adapter_config.json").exists()
    count = sum(tensor.numel() for tensor in load_file(run / "model.safetensors").values())
    assert abs(count - SHAPE_SIZES["llama-tiny"]) / SHAPE_SIZES["llama-tiny"] < 0.01


@pytest.mark.slow
def test_conversations_and_text_are_both_trained_on_all_their_words(trained):
    """Text rows train on every token; conversations on every turn's words (system,
    user and assistant alike), only the chat template's role headers left out."""
    from transformers import AutoTokenizer

    run = trained / "pretrain-cpu"
    tokenizer = AutoTokenizer.from_pretrained(run)
    [prepared] = [p for p in (run / "prepared").iterdir() if p.is_dir()]
    rows = load_from_disk(prepared)
    conversations = sum(1 for _ in (ROOT / "recipes/data/instruction.jsonl").open())
    texts = sum(1 for _ in (ROOT / "recipes/data/pretrain-text.jsonl").open())
    assert len(rows) == conversations + texts
    headers = {"<|im_start|>", "system", "user", "ass", "istant", "\n"}
    untrained = [
        [
            tokenizer.decode([token])
            for token, label in zip(row["input_ids"], row["labels"], strict=True)
            if label == -100
        ]
        for row in rows
    ]
    assert sum(1 for masked in untrained if not masked) == texts
    assert all(set(masked) <= headers for masked in untrained)


@pytest.mark.slow
def test_only_the_trained_model_is_evaluated(trained):
    refused = run_infer("eval", "pretrain", "cpu", "only=base", runs=trained)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "trains from scratch" in refused.stderr and "drop only=base" in refused.stderr
    done = run_infer("eval", "pretrain", "cpu", "backend=hf", "limit=2", runs=trained)
    assert done.returncode == 0, done.stderr[-4000:]
    eval_dir = trained / "pretrain-cpu" / "eval"
    assert not (eval_dir / "base").exists() and not (eval_dir / "comparison.json").exists()
    results = json.loads((eval_dir / "tuned" / "results.json").read_text())
    perplexity = results["tasks"]["tuner_perplexity_chat"]["metrics"]["word_perplexity"]
    assert math.isfinite(perplexity["value"]) and perplexity["value"] > 1
