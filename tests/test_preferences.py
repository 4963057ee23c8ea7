"""Preference pairs: the pairing rule on given scores. The whole stage, with the real
embedded model answering and judging through vLLM's CPU build and its pairs training
the dpo recipe, runs in test_pipeline.py."""

from __future__ import annotations

import math
from pathlib import Path

from tests.infer_env import run_infer
from tuner.preferences import make_pairs, prompt_of
from tuner.records import Conversation
from tuner.scoring import parse_score


def record(question: str) -> Conversation:
    return Conversation.model_validate(
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": "an old answer"},
            ],
            "meta": {"id": question},
        }
    )


def candidates(*texts: str) -> list[dict[str, str]]:
    return [{"model": "m", "text": text} for text in texts]


def test_best_becomes_chosen_worst_rejected_and_ties_are_dropped():
    """Ties are dropped even at min_margin 0: a tie broken arbitrarily teaches noise."""
    records = [record("q1"), record("q2"), record("q3"), record("q4")]
    prompts = [prompt_of(r) for r in records]
    options = [candidates("a", "b", "c")] * 4
    scores = [[3, 9, 5], [6, 6, 6], [4, 4.5, 4], [7, math.nan, 2]]
    pairs, dropped = make_pairs(records, prompts, options, scores, 1.0, "judge:test")
    _, at_zero = make_pairs(records, prompts, options, scores, 0.0, "judge:test")
    assert [d["meta"]["id"] for d in at_zero] == ["q2"]
    assert [p.meta["id"] for p in pairs] == ["q1", "q4"]
    first = pairs[0]
    assert first.chosen.content == "b" and first.rejected.content == "a"
    assert first.meta["margin"] == 6
    assert [m.content for m in first.messages] == ["q1"]  # the old answer is not the prompt
    assert pairs[1].chosen.content == "a" and pairs[1].rejected.content == "c"  # NaN ignored
    reasons = {d["meta"]["id"]: d["meta"]["dropped"] for d in dropped}
    assert reasons == {"q2": "tie", "q3": "margin under 1.0"}


def test_judge_answers_are_read_from_json_or_a_number():
    assert parse_score('{"score": 7}') == 7
    assert parse_score('{"score": 7') == 7  # cut off at max_tokens
    assert math.isnan(parse_score("no idea"))


def test_a_reward_model_scores_each_response_of_each_prompt():
    """The reward-model path with a real sequence-classification model: the embedded
    model with a fresh (untrained) score head, as no reward model is available offline.
    Its scores mean nothing; their shape and that they are numbers is what is checked."""
    from tuner.scoring import RewardModelScorer

    scorer = RewardModelScorer("embedded")
    prompts = [prompt_of(record("What is 2 + 2?")), prompt_of(record("Name a colour."))]
    scores = scorer.score(prompts, [["4", "5", "four"], ["red", "blue"]])
    assert [len(row) for row in scores] == [3, 2]
    assert all(math.isfinite(s) for row in scores for s in row)
    assert scorer.name == "rm:embedded"


def test_malformed_input_names_the_file_and_line(tmp_path: Path):
    """A prompt without an answer is fine (line 1); broken JSON is not (line 2)."""
    source = tmp_path / "conversations.jsonl"
    source.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": \n')
    done = run_infer("prefs", str(source), f"out={tmp_path / 'prefs'}")
    assert done.returncode == 2
    assert "conversations.jsonl:2: not valid JSON" in done.stderr
    done = run_infer("prefs", str(source), "scorer=votes")
    assert done.returncode == 2 and "scorer=votes: use 'judge' or 'rm:MODEL'" in done.stderr
