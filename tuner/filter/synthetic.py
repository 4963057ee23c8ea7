"""A seeded corpus of conversation records with planted near-duplicates and exact
copies, for the filter's benchmark and tests. Words come from the embedded model's
vocabulary, drawn with Zipf-like frequencies, so the text is English-looking to the
language identifier and distinct records share few word 5-grams, as real ones do."""

from __future__ import annotations

import json
import random
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

WORD_PIECE = re.compile(r"Ġ[a-z]{3,12}")


def english_words(tokenizer_json: Path, limit: int = 20000) -> list[str]:
    """Whole lower-case words of a byte-level BPE vocabulary, most frequent first
    (merge order roughly follows frequency)."""
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
    ordered = sorted(vocab.items(), key=lambda item: item[1])
    return [piece[1:] for piece, _ in ordered if WORD_PIECE.fullmatch(piece)][:limit]


@dataclass(frozen=True)
class Planted:
    """Index of a planted record and of the record it copies."""

    index: int
    source: int
    exact: bool


class SyntheticCorpus:
    def __init__(self, words: list[str], seed: int = 0) -> None:
        self.words = words
        # Cumulative once: random.choices would otherwise sum 20,000 weights per call.
        self.cumulative = list(accumulate(1 / (rank + 20) for rank in range(len(words))))
        self.rng = random.Random(seed)

    def sentence(self, low: int, high: int) -> list[str]:
        count = self.rng.randint(low, high)
        return self.rng.choices(self.words, cum_weights=self.cumulative, k=count)

    def record(self) -> tuple[list[str], list[str]]:
        return self.sentence(6, 20), self.sentence(40, 120)

    def edited(self, words: list[str], rate: float) -> list[str]:
        """A copy with about `rate` of its words replaced (at least one)."""
        copy = list(words)
        for _ in range(max(1, round(rate * len(copy)))):
            copy[self.rng.randrange(len(copy))] = self.rng.choice(self.words)
        return copy

    def generate(
        self, n: int, near_share: float = 0.05, exact_share: float = 0.01
    ) -> Iterator[tuple[dict, Planted | None]]:
        """n records; a `near_share` of them are edited copies of an earlier record (0.5 %
        to 4 % of words replaced: Jaccard of word 5-grams from about 0.8 to 0.97, a few
        lower), an `exact_share` unchanged copies. Copies are not copied again."""
        # Copies are made of recent records: memory stays flat for a million records.
        recent: deque[tuple[int, list[str], list[str]]] = deque(maxlen=5000)
        for index in range(n):
            roll = self.rng.random()
            planted = None
            if recent and roll < near_share + exact_share:
                # Each record is copied at most once: two edited copies of one record
                # are near-duplicates of it but not always of each other.
                pick = self.rng.randrange(len(recent))
                source, instruction, response = recent[pick]
                del recent[pick]
                exact = roll < exact_share
                if not exact:
                    rate = self.rng.uniform(0.005, 0.04)
                    response = self.edited(response, rate)
                planted = Planted(index, source, exact)
            else:
                instruction, response = self.record()
            if planted is None:
                recent.append((index, instruction, response))
            record = {
                "messages": [
                    {"role": "user", "content": " ".join(instruction).capitalize() + "?"},
                    {"role": "assistant", "content": " ".join(response).capitalize() + "."},
                ],
                "meta": {"id": f"synthetic-{index:07d}"},
            }
            yield record, planted
