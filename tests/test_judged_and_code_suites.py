"""The suites that need a judge or the code sandbox, through `just eval` on the embedded
base model alone."""

from __future__ import annotations

import json

import pytest

from tests.infer_env import run_infer

pytestmark = pytest.mark.slow


def test_eval_of_a_judged_suite_scores_answers_with_the_judge(runs):
    """The creative suite's answers graded by its judge (the embedded model on CPU)."""
    done = run_infer("eval", "creative", "cpu", "only=base", "limit=2", runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((runs / "creative-cpu/eval/base/results.json").read_text())
    judged = results["tasks"]["tuner_creative"]["metrics"]["judge_score"]
    assert len(judged["per_sample"]) == 2
    assert all(1.0 <= score <= 5.0 for score in judged["per_sample"].values())
    assert judged["stderr"] is not None and judged["judge"]["rubric"] == "creative"
    # The suite's judge passes a piece it scores 3 or more.
    passed = results["tasks"]["tuner_creative"]["metrics"]["judge_pass_rate"]["per_sample"]
    assert passed == {doc: float(score >= 3) for doc, score in judged["per_sample"].items()}
    assert not (runs / "creative-cpu/eval/comparison.json").exists()

    # Another judge, a reward model (the embedded model's fresh score head: plumbing):
    # the same answers, graded again.
    again = run_infer(
        "eval", "creative", "cpu", "only=base", "limit=2", "judge=rm:embedded", runs=runs
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert "reusing its results" in again.stdout + again.stderr
    rejudged = json.loads((runs / "creative-cpu/eval/base/results.json").read_text())
    rejudged_metrics = rejudged["tasks"]["tuner_creative"]["metrics"]
    rejudged = rejudged_metrics["judge_score"]
    assert rejudged["judge"]["model"] == "rm:embedded"
    assert rejudged["per_sample"].keys() == judged["per_sample"].keys()
    assert rejudged["per_sample"] != judged["per_sample"]
    # A reward model's scores are on no 1-5 scale: nothing passes or fails by them.
    assert "judge_pass_rate" not in rejudged_metrics


def test_eval_of_the_code_suite_runs_the_answers_in_the_sandbox(runs):
    done = run_infer("eval", "code", "cpu", "only=base", "limit=2", "backend=hf", runs=runs)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((runs / "code-cpu/eval/base/results.json").read_text())
    for task in ("tuner_humaneval", "tuner_mbpp_local"):
        passed = results["tasks"][task]["metrics"]["pass@1"]["per_sample"]
        assert len(passed) == 2 and set(passed.values()) <= {0.0, 1.0}
    perplexity = results["tasks"]["tuner_perplexity_code"]["metrics"]["word_perplexity"]
    assert perplexity["value"] > 1.0
