"""Diversity of generations (distinct-n): unique n-grams over all n-grams of a task's
answers, a zero-cost metric computed from the samples lm-eval logs."""

from __future__ import annotations

import random
import statistics


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    grams = [gram for text in texts for gram in ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_n_with_stderr(
    texts: list[str], n: int, resamples: int = 200, seed: int = 0
) -> tuple[float, float | None]:
    """distinct-n and its bootstrap standard error over answers (corpus-level, so there
    is no per-answer value to pair)."""
    value = distinct_n(texts, n)
    if len(texts) < 2:
        return value, None
    rng = random.Random(seed)
    estimates = [distinct_n(rng.choices(texts, k=len(texts)), n) for _ in range(resamples)]
    return value, statistics.stdev(estimates)
