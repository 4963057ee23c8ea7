"""How well a reward model agrees with the judge that labelled its held-out items (a
benchmark with `harness: agreement`): every answer of every pair is scored by the
model, and its scores are set against the judge's.

- `spearman`: the rank correlation of the model's scores with the judge's over every
  answer, with a percentile bootstrap interval over the answers (scipy);
- `pairwise_accuracy`: the share of pairs whose judge-preferred answer the model
  scores higher (a tie counts one half: what a constant predictor gets);
- `mae`: the mean absolute error of the judge's score predicted from the model's. A
  Bradley-Terry reward is defined only up to an affine map, so the map is fitted by
  least squares and cross-fitted over two folds (each answer predicted by the map of
  the other fold's answers); `mae_constant` is the same with the other fold's mean
  score instead of a map, the constant predictor to beat.

Items: UltraFeedback's layout (`prompt`, `chosen`/`rejected` conversations ending in
the answer, `score_chosen`/`score_rejected`), or the project's pairs (`just prefs`),
whose `meta.candidates` carry every scored answer and whose chosen and rejected are
the best and the worst of them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.evaluate.compare import mean_metric
from tuner.evaluate.harness import ModelUnderTest
from tuner.evaluate.suites import Benchmark, Settings
from tuner.project import ROOT
from tuner.records import Message


@dataclass(frozen=True)
class ScoredPair:
    """One held-out item: a prompt, the judge's preferred and other answer, and its
    scores of both."""

    item_id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float


def last_answer(side: Any) -> str:
    return str(side["content"] if isinstance(side, dict) else side[-1]["content"])


def scored_pair(number: int, row: dict[str, Any]) -> ScoredPair:
    if "score_chosen" in row:
        turns = [{"role": "user", "content": row["prompt"]}] if "prompt" in row else []
        return ScoredPair(
            str(row.get("prompt_id", number)),
            [Message.model_validate(t) for t in (turns or row["chosen"][:-1])],
            last_answer(row["chosen"]),
            last_answer(row["rejected"]),
            float(row["score_chosen"]),
            float(row["score_rejected"]),
        )
    scores = {c["text"]: float(c["score"]) for c in (row.get("meta") or {}).get("candidates", [])}
    chosen, rejected = last_answer(row["chosen"]), last_answer(row["rejected"])
    if chosen not in scores or rejected not in scores:
        raise ValueError("no judge's scores: neither score_chosen nor meta.candidates")
    return ScoredPair(
        str(number),
        [Message.model_validate(t) for t in row["messages"]],
        chosen,
        rejected,
        scores[chosen],
        scores[rejected],
    )


def load_pairs(benchmark: Benchmark, limit: int | None) -> list[ScoredPair]:
    """The benchmark's items: a JSONL file of the repository, or a hub dataset."""
    from datasets import load_dataset

    assert benchmark.data is not None  # the suite's validation requires it
    local = ROOT / benchmark.data
    if local.is_file():
        rows = load_dataset("json", data_files=str(local), split="train")
    else:
        rows = load_dataset(benchmark.data, split=benchmark.split)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    pairs = []
    for number, row in enumerate(rows):
        try:
            pairs.append(scored_pair(number, row))
        except (KeyError, IndexError, TypeError, ValueError) as problem:
            raise TunerError(
                f"{benchmark.data}, row {number + 1}: not a scored preference pair "
                f"({problem}). Each row needs a prompt, chosen and rejected answers and the "
                "judge's scores of both (score_chosen/score_rejected)."
            ) from None
    if len(pairs) < 4:
        raise TunerError(f"{benchmark.data}: {len(pairs)} items; agreement needs at least 4.")
    return pairs


def fitted_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least squares y ≈ slope·x + intercept; a flat line where x does not vary."""
    mean_x, mean_y = statistics.fmean(x), statistics.fmean(y)
    spread = sum((v - mean_x) ** 2 for v in x)
    if spread == 0:
        return 0.0, mean_y
    slope = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True)) / spread
    return slope, mean_y - slope * mean_x


def cross_fitted_errors(model: list[float], judge: list[float]) -> tuple[list[float], list[float]]:
    """Per answer, |error| of the other fold's affine map and of its mean. The answers
    come in pairs (chosen, rejected); the folds split the pairs, not the answers, so
    that each fold holds preferred and other answers alike."""
    folds = [[i for i in range(len(model)) if i // 2 % 2 == fold] for fold in (0, 1)]
    mapped, constant = [0.0] * len(model), [0.0] * len(model)
    for this, other in (folds, folds[::-1]):
        slope, intercept = fitted_line([model[i] for i in other], [judge[i] for i in other])
        mean = statistics.fmean(judge[i] for i in other)
        for i in this:
            mapped[i] = abs(slope * model[i] + intercept - judge[i])
            constant[i] = abs(mean - judge[i])
    return mapped, constant


def spearman_metric(model: list[float], judge: list[float], seed: int) -> dict[str, Any]:
    import numpy as np
    from scipy.stats import bootstrap, spearmanr

    def rho(x: Any, y: Any) -> float:
        return float(spearmanr(x, y).statistic)

    if len(set(model)) == 1:  # a constant ranks nothing: no correlation
        return {"value": 0.0, "stderr": None, "higher_is_better": True, "per_sample": {}}
    value = rho(model, judge)
    found = bootstrap(
        (np.array(model), np.array(judge)),
        rho,
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return {
        "value": value,
        "stderr": float(found.standard_error),
        "low": float(found.confidence_interval.low),
        "high": float(found.confidence_interval.high),
        "higher_is_better": True,
        "per_sample": {},
    }


def agreement_metrics(pairs: list[ScoredPair], scores: list[list[float]], seed: int) -> dict:
    """The metrics of `scores` ([chosen, rejected] per pair, the model's) against the
    judge's scores of the same answers."""
    model = [s for row in scores for s in row]
    judge = [s for p in pairs for s in (p.chosen_score, p.rejected_score)]
    ids = [f"{p.item_id}/{side}" for p in pairs for side in ("chosen", "rejected")]
    mapped, constant = cross_fitted_errors(model, judge)
    ordered = {}
    for pair, (chosen, rejected) in zip(pairs, scores, strict=True):
        judged = pair.chosen_score - pair.rejected_score
        agreed = (chosen - rejected) * judged
        ordered[pair.item_id] = 1.0 if agreed > 0 else 0.5 if agreed == 0 else 0.0
    return {
        "spearman": spearman_metric(model, judge, seed),
        "pairwise_accuracy": mean_metric(ordered, True),
        "mae": mean_metric(dict(zip(ids, mapped, strict=True)), False),
        "mae_constant": mean_metric(dict(zip(ids, constant, strict=True)), False),
    }


def run_agreement(
    model: ModelUnderTest, benchmarks: list[Benchmark], settings: Settings, out: Path
) -> dict[str, Any]:
    """Each agreement benchmark's metrics for `model`, its scores kept in `out`."""
    import json

    import torch

    from tuner.scoring import RewardModelScorer

    # A base model has no trained score head: its fresh one is drawn from the seed.
    torch.manual_seed(settings.seed)
    scorer = RewardModelScorer(str(model.adapter or model.pretrained))
    results = {}
    out.mkdir(parents=True, exist_ok=True)
    for benchmark in benchmarks:
        pairs = load_pairs(benchmark, settings.limit)
        prompts = [[t.model_dump() for t in p.prompt] for p in pairs]
        scores = scorer.score(prompts, [[p.chosen, p.rejected] for p in pairs])
        (out / f"{benchmark.task}.jsonl").write_text(
            "".join(
                json.dumps({"item_id": p.item_id, "scores": s}) + "\n"
                for p, s in zip(pairs, scores, strict=True)
            )
        )
        results[benchmark.task] = {
            "samples": len(pairs),
            "output_type": "agreement",
            "metrics": agreement_metrics(pairs, scores, settings.seed),
        }
    return results
