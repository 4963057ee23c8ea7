"""`just filter INPUT`: rules, exact and near-duplicate removal and decontamination, run
as datatrove pipelines on its local executor, or on its Ray or Slurm executor
(`executor=ray`, `executor=slurm`) for inputs beyond one machine.

Stages, each resumable (datatrove skips the tasks it logged as complete):
  0. read:  every input line is checked (file:line errors before anything runs),
            exact duplicates are set aside, and the records are dealt into one shard
            per task as datatrove documents: their text and a file:line id;
  1. rules: the preset's rules and decontamination; survivors are written and their
            MinHash signatures computed;
  2-3.      LSH buckets, then clusters of near-duplicates (datatrove's MinHash steps);
  4. dedup: one record per cluster is kept.
Then (tuner/filter/run.py) each removal is verified by exact Jaccard, and the input
records are read once more and written kept or rejected with their verdicts, beside
`stats.json` and a bar chart of removals by rule.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from tuner.errors import TunerError
from tuner.filter.decontamination import EvalNgrams
from tuner.filter.rules import WORD, FilterPreset, QualityRules
from tuner.records import Conversation, parse_record, text_lines

EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "near duplicate"
CONTAMINATED = "contamination"


def conversation_text(record: Conversation) -> tuple[str, str]:
    """The user's turns and the assistant's turns of a record, each joined."""
    user = "\n".join(m.content for m in record.messages if m.role == "user")
    assistant = "\n".join(m.content for m in record.messages if m.role == "assistant")
    return user, assistant


def exact_key(text: str) -> bytes:
    """Case and whitespace do not make two records different."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=8).digest()


@dataclass
class ShardCounts:
    records: int = 0
    exact_duplicates: int = 0


def record_id(file_index: int, line_number: int) -> str:
    """Documents carry only this back-reference: the records themselves are read from
    the input once more when the outputs are written, which keeps every stage's files
    small (carrying them would double what each stage reads and writes)."""
    return f"{file_index}:{line_number}"


def read_and_shard(inputs: list[Path], shards: Path, tasks: int, exact: Path) -> ShardCounts:
    """Check every line of the inputs, set aside exact duplicates (their ids go to
    `exact`) and deal the rest into `tasks` shard files of datatrove documents."""
    counts = ShardCounts()
    seen: set[bytes] = set()
    partial = shards.with_name(shards.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    outputs = [(partial / f"{i:05d}.jsonl").open("w", encoding="utf-8") for i in range(tasks)]
    duplicates = []
    for file_index, path in enumerate(inputs):
        for number, raw in text_lines(path):
            user, assistant = conversation_text(parse_record(path, number, raw, Conversation)[1])
            text = f"{user}\n{assistant}"
            key = exact_key(text)
            if key in seen:
                counts.exact_duplicates += 1
                duplicates.append(record_id(file_index, number))
                continue
            seen.add(key)
            doc = {
                "text": text,
                "id": record_id(file_index, number),
                "metadata": {"user_chars": len(user)},
            }
            outputs[counts.records % tasks].write(json.dumps(doc, ensure_ascii=False) + "\n")
            counts.records += 1
    for handle in outputs:
        handle.close()
    if counts.records + counts.exact_duplicates == 0:
        raise TunerError(f"{', '.join(map(str, inputs))}: no records to filter (empty input).")
    exact.write_text(json.dumps(duplicates))
    shutil.rmtree(shards, ignore_errors=True)
    partial.rename(shards)
    return counts


class RegexWordTokenizer(WordTokenizer):
    """Words as \\w+ runs: language-independent and fast. datatrove's default English
    tokenizers need NLTK or spaCy data downloaded at run time."""

    def word_tokenize(self, text: str) -> list[str]:
        return WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in WORD.finditer(text)]


class QualityFilter(BaseFilter):
    """The preset's rules and decontamination as one datatrove filter, so that a
    rejected record carries every reason it failed, not only the first."""

    name = "quality rules"

    def __init__(self, preset: FilterPreset, eval_ngrams: EvalNgrams | None, exclusion_writer):
        super().__init__(exclusion_writer)
        self.rules = QualityRules(preset)
        self.eval_ngrams = eval_ngrams

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        split = doc.metadata["user_chars"]
        reasons, score = self.rules.reasons(doc.text[:split], doc.text[split + 1 :])
        if self.eval_ngrams is not None and self.eval_ngrams.overlaps(doc.text):
            reasons.append(CONTAMINATED)
        doc.metadata["quality"] = score
        if reasons:
            doc.metadata["reasons"] = reasons
            return False, reasons[0]
        return True
