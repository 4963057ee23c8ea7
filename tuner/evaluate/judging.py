"""Scoring open-ended answers with a judge after lm-eval has generated them, loaded
once for every model being compared, so base and tuned answers are graded by the same
judge in the same batch. The judge is the preference stage's LLM judge (rubric,
JSON-schema answer, expected score over the digits, see generate/judge.yaml), or with
`rm:MODEL` a reward model such as the micro-judge, whose scores are its logits: on no
fixed scale, comparable between the models it graded."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from tuner.errors import TunerError
from tuner.evaluate.suites import Judge, rubric_text
from tuner.generate.backends import ModelSlot
from tuner.scoring import JudgeScorer, RewardModelScorer, load_judge_settings


def judge_answers(
    judge: Judge, answers: dict[str, list[dict[str, Any]]], seed: int, console: Console
) -> dict[str, dict[str, float]]:
    """{label: [answer…]} → {label: {doc_id: score}}; `answers` as harness.responses
    returns them."""
    settings = load_judge_settings()
    if rubric := rubric_text(judge.rubric):
        settings = {**settings, "rubric": rubric}
    labels = list(answers)
    by_doc: dict[str, dict[str, Any]] = {}
    for label in labels:
        for answer in answers[label]:
            if judge.field not in answer["doc"]:
                raise TunerError(
                    f"The judge reads the instruction from the field '{judge.field}', which "
                    f"the task's documents lack (they have: {', '.join(answer['doc'])})."
                )
            entry = by_doc.setdefault(answer["doc_id"], {"doc": answer["doc"], "texts": {}})
            entry["texts"][label] = answer["text"]
    doc_ids = sorted(by_doc, key=int)
    prompts = [[{"role": "user", "content": by_doc[d]["doc"][judge.field]}] for d in doc_ids]
    graded = [[by_doc[d]["texts"].get(label, "") for label in labels] for d in doc_ids]
    slot = None
    if judge.model.startswith("rm:"):
        scorer: JudgeScorer | RewardModelScorer = RewardModelScorer(judge.model[3:])
    else:
        slot = ModelSlot(seed)
        scorer = JudgeScorer(slot, judge.model, settings)
    with console.status(f"Judging {sum(map(len, graded))} answers with {judge.model}…"):
        scores = scorer.score(prompts, graded)
    if slot is not None:
        slot.release()
    return {
        label: {
            doc_id: row[column]
            for doc_id, row in zip(doc_ids, scores, strict=True)
            if label in by_doc[doc_id]["texts"]
        }
        for column, label in enumerate(labels)
    }
