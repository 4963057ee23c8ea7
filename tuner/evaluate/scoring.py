"""Scores of the project's own tasks, one answer at a time: tool calls against the
expected call, summaries against the reference (ROUGE)."""

from __future__ import annotations

import json
import re
from typing import Any

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def tool_call_scores(expected: dict[str, Any], answer: str) -> dict[str, float]:
    """The answer's first call (inside <tool_call> tags, or the bare answer): is it a
    JSON object, is the function right, are function and arguments both exactly right."""
    match = TOOL_CALL.search(answer)
    text = match.group(1) if match else answer.strip()
    try:
        call = json.loads(text)
    except json.JSONDecodeError:
        call = None
    valid = isinstance(call, dict)
    name = valid and call.get("name") == expected["name"]
    arguments = valid and call.get("arguments") == expected["arguments"]
    return {
        "json_valid": float(valid),
        "name_match": float(bool(name)),
        "exact_match": float(bool(name and arguments)),
    }


def rouge_scores(reference: str, answer: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 with stemming."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return {name: score.fmeasure for name, score in scorer.score(reference, answer).items()}
