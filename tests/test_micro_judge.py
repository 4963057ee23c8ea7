"""The micro-judge's parts that need no training: its recipe on every overlay, the rows
its prompt strategy reads, the planner's reward-model shape, and the agreement metrics
on scores whose answer is known. Training it on the embedded model, its held-out
agreement and `just prefs … scorer=rm:RUN` run in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from tuner.errors import TunerError
from tuner.evaluate.agreement import agreement_metrics, load_pairs, scored_pair
from tuner.evaluate.suites import Benchmark
from tuner.memory import Training, architecture_for, estimate
from tuner.recipes import compose, hardware_names
from tuner.reward_pairs import bradley_terry_row
from tuner.scoring import RewardModelScorer
from tuner.validation import validate

QUESTION = {"role": "user", "content": "What is 2 + 2?"}


@pytest.mark.parametrize("hardware", hardware_names())
def test_the_micro_judge_composes_over_each_overlay_and_validates(hardware):
    config = compose("micro-judge", hardware).config
    assert config["reward_model"] is True and config["num_labels"] == 1
    assert config["sample_packing"] is False
    report = validate(compose("micro-judge", hardware))
    assert report.ok, report.summary()


def test_the_strategy_reads_ultrafeedback_rows_and_the_projects_pairs():
    ultrafeedback = {
        "prompt": QUESTION["content"],
        "chosen": [QUESTION, {"role": "assistant", "content": "4"}],
        "rejected": [QUESTION, {"role": "assistant", "content": "5"}],
    }
    project = {
        "messages": [{"role": "system", "content": "Be brief."}, QUESTION],
        "chosen": {"role": "assistant", "content": "4"},
        "rejected": {"role": "assistant", "content": "5"},
    }
    expected = {"system": "", "input": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    assert bradley_terry_row(ultrafeedback) == expected
    assert bradley_terry_row(project) == {**expected, "system": "Be brief."}
    two_turns = {**project, "messages": [QUESTION, {"role": "assistant", "content": "4"}, QUESTION]}
    with pytest.raises(ValueError, match="one user turn"):
        bradley_terry_row(two_turns)


def test_the_planner_sizes_two_sequences_per_row_and_one_score_per_token():
    config = compose("micro-judge", "a100").config
    arch = architecture_for(config["base_model"])
    training = Training.from_config(config, gpus=1)
    judge = estimate(arch, training)
    causal = estimate(arch, Training.from_config({**config, "reward_model": False}, gpus=1))
    assert training.sequences_per_row == 2 and judge.activations > causal.activations
    # One score per token, where the causal model has 49,152 logits.
    assert judge.logits == 0 and causal.logits > 1e9


def pair(prompt: str, chosen: float, rejected: float) -> dict:
    return {
        "prompt": prompt,
        "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "b"}],
        "score_chosen": chosen,
        "score_rejected": rejected,
    }


def test_agreement_is_perfect_for_an_affine_copy_of_the_judge_and_chance_for_a_constant():
    rows = [pair(f"q{i}", 6 + i % 4, 1 + i % 3) for i in range(12)]
    pairs = [scored_pair(n, row) for n, row in enumerate(rows)]
    copy = [[0.5 * p.chosen_score - 3, 0.5 * p.rejected_score - 3] for p in pairs]
    perfect = agreement_metrics(pairs, copy, seed=0)
    assert perfect["spearman"]["value"] == pytest.approx(1.0)
    assert perfect["pairwise_accuracy"]["value"] == 1.0
    assert perfect["mae"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert perfect["mae_constant"]["value"] > 1.0
    flat = agreement_metrics(pairs, [[0.0, 0.0] for _ in pairs], seed=0)
    assert flat["spearman"]["value"] == 0.0 and flat["pairwise_accuracy"]["value"] == 0.5
    assert flat["mae"]["value"] == pytest.approx(flat["mae_constant"]["value"])
    noisy = [[c + (-1) ** i * 2, r] for i, (c, r) in enumerate(copy)]
    found = agreement_metrics(pairs, noisy, seed=0)["spearman"]
    model = [s for row in noisy for s in row]
    judge = [s for p in pairs for s in (p.chosen_score, p.rejected_score)]
    assert found["value"] == pytest.approx(spearmanr(model, judge).statistic)
    assert found["low"] < found["value"] < found["high"]


def test_the_projects_pairs_are_read_with_the_scores_of_their_candidates():
    row = {
        "messages": [QUESTION],
        "chosen": {"role": "assistant", "content": "4"},
        "rejected": {"role": "assistant", "content": "5"},
        "meta": {"candidates": [{"text": "4", "score": 4.5}, {"text": "5", "score": 1.25}]},
    }
    found = scored_pair(0, row)
    assert (found.chosen, found.chosen_score, found.rejected_score) == ("4", 4.5, 1.25)


def test_a_pair_without_scores_and_a_missing_reward_model_are_named(tmp_path: Path):
    rows = [pair(f"q{i}", 8, 2) for i in range(5)]
    del rows[3]["score_rejected"]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    benchmark = Benchmark(task="agreement", harness="agreement", data=str(data))
    with pytest.raises(TunerError, match=r"pairs.jsonl, row 4: not a scored preference pair"):
        load_pairs(benchmark, limit=None)
    with pytest.raises(TunerError, match="no reward model there"):
        RewardModelScorer(str(tmp_path / "micro-judge-cpu"))
