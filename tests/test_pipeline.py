"""The data path end to end with the embedded model: `prefs` answering and judging
through vLLM's CPU build, the dpo recipe trained on those pairs on top of a short SFT
run, re-pairing without sampling again, and the report over all of it; then the
micro-judge trained, its agreement with held-out judge scores, and `prefs` scoring the
same answers with it."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_tuner
from tests.infer_env import run_infer
from tests.run_checks import trainer_log
from tuner.manifest import sha256_file
from tuner.project import ROOT, portable
from tuner.records import Conversation, PreferencePair, read_records, write_records

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def micro_judge(pipeline) -> Path:
    """The micro-judge trained on the local pairs for one epoch (35 steps of two)."""
    done = run_tuner("train", "micro-judge", "cpu", "max_steps=35", runs=pipeline["runs"])
    assert done.returncode == 0, done.stderr[-4000:]
    return pipeline["runs"] / "micro-judge-cpu"


def test_the_micro_judge_predicts_held_out_judge_scores_better_than_a_constant(
    pipeline, micro_judge
):
    """Held-out pairs (prompts it did not train on, scored 1-10): the error of its
    scores, mapped onto the judge's scale, against the judge's mean, answer by answer;
    the rank correlation recomputed from the scores it logged."""
    from scipy.stats import spearmanr

    done = run_infer("eval", "micro-judge", "cpu", "only=tuned", runs=pipeline["runs"])
    assert done.returncode == 0, done.stderr[-4000:]
    tuned = micro_judge / "eval" / "tuned"
    metrics = json.loads((tuned / "results.json").read_text())["tasks"]["heldout_agreement"]
    metrics = metrics["metrics"]
    mapped, constant = metrics["mae"]["per_sample"], metrics["mae_constant"]["per_sample"]
    gains = [constant[answer] - mapped[answer] for answer in mapped]
    assert len(gains) == 48
    assert statistics.fmean(gains) > 2 * statistics.stdev(gains) / len(gains) ** 0.5
    assert metrics["pairwise_accuracy"]["value"] > 0.5
    fixture = ROOT / "evaluate" / "fixtures" / "micro-judge-heldout.jsonl"
    rows = [json.loads(line) for line in fixture.read_text().splitlines()]
    logged = (tuned / "agreement" / "heldout_agreement.jsonl").read_text().splitlines()
    model = [score for line in logged for score in json.loads(line)["scores"]]
    judge = [row[key] for row in rows for key in ("score_chosen", "score_rejected")]
    rho = spearmanr(model, judge).statistic
    spearman = metrics["spearman"]
    assert spearman["value"] == pytest.approx(rho) and rho > 0
    assert spearman["low"] < rho < spearman["high"]


def test_prefs_scores_the_same_answers_with_the_micro_judge(pipeline, prefs, micro_judge):
    """`scorer=rm:RUN` on a copy of the judged prefs: the answers are reused, only the
    scores are new, and the pairs follow the micro-judge's ranking."""
    rescored = pipeline["data"] / "prefs-micro-judge"
    shutil.copytree(prefs[0], rescored)
    answers = rescored / "work" / "candidates-0.jsonl"
    written = answers.stat().st_mtime_ns
    scorer = f"scorer=rm:{micro_judge}"
    conversations = str(pipeline["data"] / "conversations.jsonl")
    args = [conversations, "samples=3", "max_tokens=64", "min_margin=0", scorer]
    done = run_infer("prefs", *args, f"out={rescored}", data=pipeline["data"])
    assert done.returncode == 0, done.stderr[-4000:]
    assert answers.stat().st_mtime_ns == written
    stats = json.loads((rescored / "stats.json").read_text())
    assert stats["scorer"] == f"rm:{micro_judge}" and stats["pairs"] >= 1
    for pair in read_records(rescored / "pairs.jsonl", PreferencePair):
        scores = {c["text"]: c["score"] for c in pair.meta["candidates"]}
        assert scores[pair.chosen.content] == max(scores.values())
        assert pair.meta["scorer"] == f"rm:{micro_judge}"
