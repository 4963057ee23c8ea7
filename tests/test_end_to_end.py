"""End to end on CPU with the real Axolotl, in four independent chains that the suite's
two workers run side by side (each an xdist_group):

- `demo`: the README's first command in a fresh copy of this working tree, the way a
  new user meets the project (set-up, model conversion, the instruction recipe trained
  on the embedded model, base vs tuned), and what quality it shows;
- `preferences`: the data path with the embedded model, `prefs` answering and judging
  through vLLM, then the dpo recipe trained on those pairs on top of a short SFT run,
  and the report over all of it;
- `plumbing`: on a tiny random-weight model with the real tokenizer, what needs no
  quality: the hf backend loading the adapter with PEFT, and a killed run resuming;
- the suites that need a judge or the code sandbox, on the base model alone.

The copy shares this checkout's environments (its `.venvs/` is a link): CI's own
`just test` builds them first on its clean clone. Everything else in the copy (the
cache, the converted model, the runs) starts empty. The other chains run from this
checkout with their own runs and data folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import copy_working_tree, run_tuner
from tests.infer_env import run_infer
from tuner.manifest import sha256_file
from tuner.project import ROOT, portable
from tuner.records import Conversation, PreferencePair, read_records, write_records

pytestmark = pytest.mark.slow
demo_chain = pytest.mark.xdist_group("demo")
preferences_chain = pytest.mark.xdist_group("preferences")
plumbing_chain = pytest.mark.xdist_group("plumbing")


def clean_env() -> dict[str, str]:
    """This machine's environment without the test run's own virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    venv_bin = str(Path(os.sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.pop("TUNER_RUNS", None)
    env.pop("TUNER_CACHE", None)
    return env


class Clone:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / ".venvs" / "train" / "bin" / "python"
        self.runs = root / "runs"

    def tuner(self, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.python), "-m", "tuner", *args],
            cwd=self.root,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def infer(self, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        """`python -m tuner ARGS` in the copy's inference environment (vLLM)."""
        return subprocess.run(
            [str(self.root / ".venvs" / "infer" / "bin" / "python"), "-m", "tuner", *args],
            cwd=self.root,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Clone, subprocess.CompletedProcess]:
    """The README's first command in a fresh copy: `.venvs/bin/just demo`."""
    root = tmp_path_factory.mktemp("fresh") / "repo"
    copy_working_tree(root)
    (root / ".venvs").symlink_to(ROOT / ".venvs", target_is_directory=True)
    done = subprocess.run(
        [str(root / ".venvs" / "bin" / "just"), "demo"],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return Clone(root), done


def trainer_log(run: Path) -> list[dict]:
    """The log history of the newest checkpoint of a run."""
    newest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((newest / "trainer_state.json").read_text())["log_history"]


def harness_results(eval_dir: Path, label: str) -> dict:
    """lm-eval's own results JSON for one model (one harness call per few-shot count;
    the local suites need one)."""
    [path] = (eval_dir / label).glob("call-0/*/results_*.json")
    return json.loads(path.read_text())["results"]


def assert_comparison_matches_the_harness_json(eval_dir: Path) -> dict:
    """Every row of the comparison recomputed from lm-eval's own results files."""
    comparison = json.loads((eval_dir / "comparison.json").read_text())
    base, tuned = harness_results(eval_dir, "base"), harness_results(eval_dir, "tuned")
    checked = 0
    for row in comparison["rows"]:
        key = f"{row['metric']},none"
        if key not in base.get(row["task"], {}):
            continue  # the project's own additions (distinct-n, judge scores)
        b, t = base[row["task"]][key], tuned[row["task"]][key]
        assert row["base"] == pytest.approx(b) and row["tuned"] == pytest.approx(t)
        assert row["delta"] == pytest.approx(t - b)
        if b:
            assert row["relative"] == pytest.approx((t - b) / abs(b))
        stderr = base[row["task"]].get(f"{row['metric']}_stderr,none")
        if isinstance(stderr, float):
            assert row["base_stderr"] == pytest.approx(stderr)
            assert row["delta_stderr"] is not None
        checked += 1
    assert checked >= 4, comparison["rows"]
    return comparison


# The demo chain: `just demo` in a fresh copy, and what its run shows.


@demo_chain
def test_demo_ends_with_the_base_vs_tuned_table_of_the_instruction_suite(demo):
    clone, done = demo
    assert "base vs. instruction LoRA" in done.stdout
    assert "prompt_level_strict_acc" in done.stdout
    assert f"Run folder: {clone.runs / 'instruction-cpu'}" in done.stdout
    eval_dir = clone.runs / "instruction-cpu" / "eval"
    comparison = assert_comparison_matches_the_harness_json(eval_dir)
    metrics = {(row["task"], row["metric"]) for row in comparison["rows"]}
    assert ("tuner_ifeval", "prompt_level_strict_acc") in metrics
    assert ("tuner_ifeval", "distinct_2") in metrics
    assert ("tuner_perplexity_instruction", "word_perplexity") in metrics
    settings = comparison["settings"]
    assert settings["backend"] == "vllm" and settings["variant"] == "local"
    assert settings["tokenizer"] == str(clone.runs / "instruction-cpu")
    # One lm-eval command per model; they differ in the model path only (vLLM runs the
    # adapter merged into the base).
    commands = [
        next(
            line
            for line in (eval_dir / label / "lm-eval.log").read_text().splitlines()
            if line.startswith("$ ")
        )
        for label in ("base", "tuned")
    ]
    base_args, tuned_args = (command.split() for command in commands)
    differing = [(b, t) for b, t in zip(base_args, tuned_args, strict=True) if b != t]
    assert len(differing) == 2, differing  # --model_args and --output_path
    assert str(eval_dir / "merged") in differing[0][1]
    assert "--apply_chat_template" in base_args
    # The adapter moved the model: its answers differ from the base model's.
    answers = {
        label: [
            json.loads(line)["resps"][0][0]
            for line in next((eval_dir / label).glob("call-0/*/samples_tuner_ifeval_*.jsonl"))
            .read_text()
            .splitlines()
        ]
        for label in ("base", "tuned")
    }
    assert answers["base"] != answers["tuned"]


@demo_chain
def test_instruction_run_loss_falls_and_the_adapter_is_saved(demo):
    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    losses = [row["loss"] for row in trainer_log(run) if "loss" in row]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert (run / "adapter_model.safetensors").stat().st_size > 1_000_000
    assert json.loads((run / "adapter_config.json").read_text())["r"] == 16


@demo_chain
def test_manifest_records_code_libraries_config_data_seed_and_time(demo):
    from tuner.manifest import sha256_text

    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert len(manifest["git"]["commit"]) == 40
    assert manifest["libraries"]["axolotl"] == "0.19.0"
    assert manifest["libraries"]["torch"].startswith("2.13.0")
    assert manifest["config_sha256"] == sha256_text((run / "config.yaml").read_text())
    [data] = manifest["datasets"]
    assert data["sha256"] == sha256_file(clone.root / "recipes/data/instruction.jsonl")
    assert manifest["seed"] == 42 and manifest["wall_time_s"] > 0


@demo_chain
def test_manifest_records_the_chat_format_trained_and_the_one_saved(demo):
    from tuner.manifest import sha256_text

    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    chat = json.loads((run / "manifest.json").read_text())["chat"]
    assert chat["template"] == "chatml"
    assert chat["end_of_turn"] == chat["eos"] == "<|im_end|>"
    saved = chat["saved"]
    assert saved["chat_template_sha256"] == sha256_text((run / "chat_template.jinja").read_text())
    assert saved["end_of_turn"] == saved["eos"] == "<|im_end|>"


@demo_chain
def test_eval_refuses_a_chat_template_other_than_the_trained_one(demo, tmp_path):
    """On a copy of the trained run whose saved template was edited since."""
    clone, _ = demo
    runs = tmp_path / "runs"
    shutil.copytree(
        clone.runs / "instruction-cpu",
        runs / "instruction-cpu",
        ignore=shutil.ignore_patterns("checkpoint-*", "eval", "merged", "prepared"),
    )
    template = runs / "instruction-cpu" / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    done = run_infer("eval", "instruction", "cpu", "limit=1", runs=runs, timeout=300)
    assert done.returncode == 2  # the command line's exit status for a refused input
    assert "not the one the run trained with" in done.stderr and "template=any" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (runs / "instruction-cpu" / "eval").exists()


@demo_chain
def test_the_adapter_changes_the_model_and_fits_the_training_data_better(demo):
    """Loss of the training answers under the base model and under base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clone, _ = demo
    model_dir = clone.root / ".cache/models/SmolLM2-135M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (clone.root / "recipes/data/instruction.jsonl").open()]

    def answer_loss(model) -> float:
        total = 0.0
        for row in rows[:8]:
            turns = row["conversations"]
            roles = {"system": "system", "human": "user", "gpt": "assistant"}
            messages = [{"role": roles[t["from"]], "content": t["value"]} for t in turns]
            prompt = tokenizer.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=False
            )
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = torch.tensor([tokenizer(full, add_special_tokens=False).input_ids])
            labels = ids.clone()
            labels[0, : len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
            with torch.no_grad():
                total += model(input_ids=ids, labels=labels).loss.item()
        return total / 8

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base_loss = answer_loss(base)
    tuned = PeftModel.from_pretrained(base, clone.runs / "instruction-cpu")
    tuned_loss = answer_loss(tuned)
    assert tuned_loss < 0.7 * base_loss, (base_loss, tuned_loss)


# The preferences chain: prefs with the embedded model, DPO on its pairs, the report.

MARGIN = "min_margin=0.05"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The chain's runs and data folders, and its short SFT run (the embedded model, two
    steps: the dpo recipe starts from its merged model)."""
    root = tmp_path_factory.mktemp("pipeline")
    folders = {"runs": root / "runs", "data": root / "data"}
    done = run_tuner("train", "instruction", "cpu", "max_steps=2", runs=folders["runs"])
    assert done.returncode == 0, done.stderr[-4000:]
    return folders


@pytest.fixture(scope="module")
def prefs(pipeline) -> tuple[Path, subprocess.CompletedProcess]:
    """`prefs` on eight prompts, the embedded model answering (3 samples each) and
    judging through vLLM's CPU build. A 135M judge barely tells responses apart (its
    expected scores differ by tenths), so the margin asked for is small."""
    # Prompts not answered yet: the first user turn of eight local chat conversations.
    chats = read_records(ROOT / "recipes" / "data" / "chat.jsonl", Conversation)[:8]
    conversations = pipeline["data"] / "conversations.jsonl"
    write_records(conversations, [{"messages": [c.messages[0].model_dump()]} for c in chats])
    out = pipeline["data"] / "prefs"
    done = run_infer(
        "prefs",
        str(conversations),
        "samples=3",
        "max_tokens=64",
        MARGIN,
        f"out={out}",
        data=pipeline["data"],
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done


@preferences_chain
def test_prefs_pairs_best_against_worst_and_drops_ties(prefs):
    out, _ = prefs
    stats = json.loads((out / "stats.json").read_text())
    pairs = read_records(out / "pairs.jsonl", PreferencePair)
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert len(pairs) + len(dropped) == 8 == stats["input_records"]
    assert stats["pairs"] == len(pairs) >= 1
    assert sum(stats["dropped"].values()) == len(dropped)
    for pair in pairs:
        scores = [c["score"] for c in pair.meta["candidates"]]
        assert len(scores) == 3 and all(1 <= s <= 5 for s in scores)
        assert pair.meta["margin"] == max(scores) - min(scores) >= 0.05
        chosen = next(c for c in pair.meta["candidates"] if c["text"] == pair.chosen.content)
        rejected = next(c for c in pair.meta["candidates"] if c["text"] == pair.rejected.content)
        assert chosen["score"] == max(scores) and rejected["score"] == min(scores)
        assert pair.meta["scorer"] == "judge:embedded"
    for item in dropped:
        scores = [c["score"] for c in item["meta"]["candidates"]]
        assert max(scores) - min(scores) < 0.05
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"


@preferences_chain
def test_dpo_trains_on_the_generated_pairs_on_top_of_the_merged_sft_model(pipeline, prefs):
    """The pairs `prefs` made train the dpo recipe, starting from the SFT run's adapter
    merged into its base."""
    out, _ = prefs
    runs, pairs = pipeline["runs"], out / "pairs.jsonl"
    done = run_tuner("train", "dpo", "cpu", f"data={pairs}", "max_steps=8", runs=runs)
    assert done.returncode == 0, done.stderr[-5000:]
    merged = runs / "instruction-cpu" / "merged"
    assert (merged / "config.json").is_file()
    stops = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    assert stops[0] == 2  # <|im_end|>, the end of turn the SFT run trained
    manifest = json.loads((runs / "dpo-cpu" / "manifest.json").read_text())
    assert manifest["base_model"] == portable(merged)
    [dataset] = manifest["datasets"]
    assert dataset["path"] == portable(pairs) and dataset["sha256"] == sha256_file(pairs)
    assert (runs / "dpo-cpu" / "adapter_model.safetensors").is_file()
    margins = [
        r["rewards/margins"] for r in trainer_log(runs / "dpo-cpu") if "rewards/margins" in r
    ]
    assert len(margins) == 8
    # Policy and reference start equal; training on the pairs pulls chosen above rejected.
    assert abs(margins[0]) < 1e-3
    assert sum(margins[-3:]) / 3 > 0.1


@preferences_chain
def test_prefs_re_pairs_with_another_margin_without_sampling_or_judging_again(pipeline, prefs):
    """After the DPO test, which trains on the pairs as first made."""
    out, _ = prefs
    conversations = pipeline["data"] / "conversations.jsonl"
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    not_tied = len(read_records(out / "pairs.jsonl", PreferencePair)) + sum(
        1 for item in dropped if item["meta"]["dropped"].startswith("margin under")
    )
    stages = [out / "work" / "candidates-0.jsonl", out / "work" / "scores.jsonl"]
    written = [path.stat().st_mtime_ns for path in stages]
    again = run_infer(
        "prefs",
        str(conversations),
        "samples=3",
        "max_tokens=64",
        "min_margin=0",
        f"out={out}",
        data=pipeline["data"],
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert [path.stat().st_mtime_ns for path in stages] == written
    assert json.loads((out / "stats.json").read_text())["pairs"] == not_tied


@preferences_chain
def test_report_renders_every_run_with_its_plots_and_the_preference_statistics(pipeline, prefs):
    """After the runs above: instruction and dpo trained, the preference stage's stats."""
    runs = pipeline["runs"]
    env = {**os.environ, "TUNER_DATA": str(pipeline["data"])}
    done = run_tuner("report", runs=runs, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (runs / "report" / "report.md").read_text()
    assert "## instruction-cpu" in report and "## dpo-cpu" in report
    assert f"preferences `{prefs[0]}`" in report
    for plot in ("loss-instruction-cpu.png", "loss-dpo-cpu.png"):
        assert (runs / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"]({plot})" in report
    data = json.loads((runs / "report" / "report.json").read_text())
    entries = {entry["run"]: entry for entry in data["runs"]}
    assert len(entries["dpo-cpu"]["loss"]) == 8 and len(entries["instruction-cpu"]["loss"]) == 2


# The plumbing chain, on the tiny random-weight model: nothing here depends on quality.


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The instruction recipe trained for two steps on the tiny model; its runs folder."""
    runs = tmp_path_factory.mktemp("plumbing") / "runs"
    done = run_tuner(
        "train", "instruction", "cpu", f"base_model={tiny_model}", "max_steps=2", runs=runs
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return runs


@plumbing_chain
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


@plumbing_chain
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


@plumbing_chain
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


# The suites with a judge or the code sandbox, on the embedded base model alone.


def test_eval_of_a_judged_suite_scores_answers_with_the_judge(runs):
    """The creative suite's answers graded by its judge (the embedded model on CPU)."""
    done = run_infer("eval", "creative", "cpu", "only=base", "limit=2", runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((runs / "creative-cpu/eval/base/results.json").read_text())
    judged = results["tasks"]["tuner_creative"]["metrics"]["judge_score"]
    assert len(judged["per_sample"]) == 2
    assert all(1.0 <= score <= 5.0 for score in judged["per_sample"].values())
    assert judged["stderr"] is not None and judged["judge"]["rubric"] == "creative"
    assert not (runs / "creative-cpu/eval/comparison.json").exists()


def test_eval_of_the_code_suite_runs_the_answers_in_the_sandbox(runs):
    done = run_infer("eval", "code", "cpu", "only=base", "limit=2", "backend=hf", runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((runs / "code-cpu/eval/base/results.json").read_text())
    for task in ("tuner_humaneval", "tuner_mbpp_local"):
        passed = results["tasks"][task]["metrics"]["pass@1"]["per_sample"]
        assert len(passed) == 2 and set(passed.values()) <= {0.0, 1.0}
    perplexity = results["tasks"]["tuner_perplexity_code"]["metrics"]["word_perplexity"]
    assert perplexity["value"] > 1.0
