"""Behavioural metrics computed across the documents of the proxy tasks, after lm-eval has
scored each one (see proxy.py for the items):

- `agreement` (tuner_proxy_paraphrased): the share of items whose three askings got the
  same answer, over the items, with its standard error. An item counts as agreeing only
  when every asking gave an answer line;
- `robustness_drop` (tuner_proxy_noisy): the clean items' accuracy minus the same items'
  accuracy with typos, casing and spacing perturbed, paired per item, with the standard
  error of the paired differences. Lower is better.

Each is added to its task's metrics like the harness's own, with per-document values,
so the base-vs-tuned comparison tests it as it tests the others. Format adherence needs
no pass of its own: tuner_proxy_formatted scores it per document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.evaluate.compare import mean_metric
from tuner.evaluate.harness import responses
from tuner.evaluate.proxy import extracted_answer

PARAPHRASED = "tuner_proxy_paraphrased"
CLEAN, NOISY = "tuner_proxy_arithmetic", "tuner_proxy_noisy"


def agreement(answers: list[dict[str, Any]]) -> dict[str, float]:
    """Per item (group): 1.0 where all its askings were answered alike."""
    by_group: dict[str, list[str | None]] = {}
    for answer in answers:
        by_group.setdefault(str(answer["doc"]["group"]), []).append(
            extracted_answer(answer["text"])
        )
    return {
        group: float(None not in given and len(set(given)) == 1)
        for group, given in by_group.items()
    }


def robustness_drop(clean: dict[str, float], noisy: dict[str, float]) -> dict[str, float]:
    """Per item: clean correctness minus noisy correctness (1, 0 or -1)."""
    return {doc: clean[doc] - noisy[doc] for doc in sorted(set(clean) & set(noisy), key=int)}


def add_behaviour(tasks: dict[str, Any], folders: list[Path]) -> None:
    if PARAPHRASED in tasks:
        per_group = agreement(responses(folders, PARAPHRASED))
        if per_group:
            tasks[PARAPHRASED]["metrics"]["agreement"] = mean_metric(per_group, True)
    if CLEAN in tasks and NOISY in tasks:
        drops = robustness_drop(
            tasks[CLEAN]["metrics"]["exact_match"]["per_sample"],
            tasks[NOISY]["metrics"]["exact_match"]["per_sample"],
        )
        if drops:
            tasks[NOISY]["metrics"]["robustness_drop"] = mean_metric(drops, False)
