"""Word n-grams of evaluation sets, to remove training records that contain any of them
(the GPT-3 paper's 13-gram overlap test)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.filter.rules import WORD


def ngram_keys(text: str, n: int) -> set[str]:
    """The n-grams themselves, not their hash(): Python salts string hashes per process,
    and the set travels to datatrove's worker processes (re-hashed when unpickled)."""
    words = WORD.findall(text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def strings_in(value: Any) -> Iterable[str]:
    """Every string inside a JSON value: any field of an evaluation record may hold
    text a model could have memorised (question, choices, answer)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def read_text(path: Path) -> str:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")


class EvalNgrams:
    def __init__(self, sources: list[Path], n: int) -> None:
        self.n = n
        self.sources = sources
        self.keys: set[str] = set()
        for path in sources:
            if not path.is_file():
                raise TunerError(f"against={path}: no such file.")
            for number, line in enumerate(read_text(path).splitlines(), 1):
                if ".jsonl" in path.suffixes and line.strip():
                    try:
                        texts = list(strings_in(json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise TunerError(f"{path}:{number}: not valid JSON ({err.msg}).") from None
                else:
                    texts = [line]
                for text in texts:
                    self.keys |= ngram_keys(text, n)

    def overlaps(self, text: str) -> bool:
        return not self.keys.isdisjoint(ngram_keys(text, self.n))
