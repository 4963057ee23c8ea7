"""Magpie generation in checkpoints: instructions from the pre-query template, then
responses, written as conversation records in numbered chunk files.

A chunk file appears only when all of its records are written (temp file, then
rename), so a run killed at any point loses at most the chunk in progress, and the
same command resumes from the first missing chunk. Seeds derive from the job's seed
and each record's position, so a resumed run samples what the interrupted one would
have. Chunks can be shared among workers (one per GPU, see `worker`/`workers`); the
output file is assembled when every chunk exists.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuner.errors import TunerError
from tuner.generate.backends import Backend, Completion
from tuner.generate.templates import Family, Preset
from tuner.records import Conversation, read_records, write_records

# Attempts per chunk to replace instructions that were empty, cut off or repeated
# before giving up on filling it (a model that only repeats itself would loop).
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Job:
    """Everything that determines the records; a resumed run must match it."""

    task: str
    model: str
    family: str
    persona: str
    preset_name: str
    preset: dict[str, Any]
    seed: int
    n: int

    def fingerprint(self) -> str:
        settings = {k: v for k, v in asdict(self).items() if k != "n"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ChunkStats:
    records: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    dropped: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> str:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) tuples.
        return json.dumps(
            {
                "records": self.records,
                "output_tokens": self.output_tokens,
                "seconds": self.seconds,
                "dropped": dict(self.dropped),
            }
        )


@dataclass(frozen=True)
class GenerateSummary:
    """What `just generate` wrote: the output, its records, and how generation went."""

    output: str
    records: int
    dropped_while_generating: dict[str, int]
    output_tokens: int
    generation_seconds: float
    tokens_per_second: float | None
    job: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def record_seed(job_seed: int, index: int, attempt: int, turn: int) -> int:
    digest = hashlib.sha256(f"{job_seed}:{index}:{attempt}:{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class ChunkPlan:
    """The numbered chunk files of one output: chunk c holds records
    [c * size, (c + 1) * size), and exists only once complete."""

    parts: Path
    n: int
    size: int

    def path(self, chunk: int) -> Path:
        return self.parts / f"chunk-{chunk:06d}.jsonl"

    def stats_path(self, chunk: int) -> Path:
        return self.parts / f"chunk-{chunk:06d}.stats.json"

    def records_in(self, chunk: int) -> int:
        return max(0, min(self.size, self.n - chunk * self.size))

    def chunks(self) -> range:
        return range((self.n + self.size - 1) // self.size)

    def done(self, chunk: int) -> bool:
        """Complete for this n: a chunk that was the short last one of a smaller run is
        generated again in full."""
        path = self.path(chunk)
        if not path.is_file() or not self.stats_path(chunk).is_file():
            return False
        return len(path.read_text().splitlines()) == self.records_in(chunk)


class MagpieGenerator:
    def __init__(self, job: Job, family: Family, preset: Preset, backend: Backend) -> None:
        self.job = job
        self.family = family
        self.preset = preset
        self.backend = backend
        self.system = family.system_prompt(job.persona)

    def _system_messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _user_prompts(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        """The pre-query template for first turns; for later turns the conversation so far
        through the model's chat template, then the opening of a user turn."""
        prompts = []
        for messages in conversations:
            if not messages:
                prompts.append(self.family.instruction_prompt(self.job.persona))
            else:
                history = self._system_messages() + messages
                rendered = self.backend.render(history, add_generation_prompt=False)
                prompts.append(rendered + self.family.user_turn)
        return prompts

    def generate_chunk(
        self, first: int, need: int, seen: set[str]
    ) -> tuple[list[Conversation], ChunkStats]:
        """`need` records numbered from `first`; instructions already in `seen` (or twice
        in this chunk) are replaced by new samples."""
        stats = ChunkStats()
        started = time.perf_counter()
        kept: list[Conversation] = []
        for attempt in range(MAX_ATTEMPTS):
            missing = need - len(kept)
            if missing == 0:
                break
            slots = [first + len(kept) + i for i in range(missing)]
            conversations: list[list[dict[str, str]]] = [[] for _ in slots]
            finished = [True] * missing
            alive = list(range(missing))
            for turn in range(self.preset.turns):
                seeds = [record_seed(self.job.seed, slot, attempt, turn) for slot in slots]
                alive = self._turn(turn, alive, conversations, finished, seeds, seen, stats)
            for i in alive:
                instruction = conversations[i][0]["content"]
                if instruction in seen:  # two samples of this batch wrote the same
                    stats.dropped["repeated instruction"] += 1
                    continue
                seen.add(instruction)
                kept.append(self._record(first + len(kept), conversations[i], finished[i]))
        if len(kept) < need:
            raise TunerError(
                f"Records {first} to {first + need - 1}: only {len(kept)} usable after "
                f"{MAX_ATTEMPTS} attempts (dropped: {dict(stats.dropped)}). The model may "
                "not suit the template family; try template=FAMILY or another preset."
            )
        stats.records = len(kept)
        stats.seconds = time.perf_counter() - started
        return kept, stats

    def _turn(
        self,
        turn: int,
        alive: list[int],
        conversations: list[list[dict[str, str]]],
        finished: list[bool],
        seeds: list[int],
        seen: set[str],
        stats: ChunkStats,
    ) -> list[int]:
        """One user message and one answer for each conversation still alive; returns
        those that got both."""
        if not alive:
            return alive
        users = self.backend.complete(
            self._user_prompts([conversations[i] for i in alive]),
            self.preset.instruction,
            [seeds[i] for i in alive],
            self.family.stop,
        )
        stats.output_tokens += sum(c.tokens for c in users)
        asked = []
        for i, user in zip(alive, users, strict=True):
            if self._accept_instruction(user, turn, seen, stats):
                conversations[i].append({"role": "user", "content": user.text.strip()})
                asked.append(i)
        if not asked:
            return asked
        prompts = [
            self.backend.render(self._system_messages() + conversations[i], True) for i in asked
        ]
        answers = self.backend.complete(
            prompts, self.preset.response, [seeds[i] for i in asked], self.family.stop
        )
        stats.output_tokens += sum(c.tokens for c in answers)
        answered = []
        for i, answer in zip(asked, answers, strict=True):
            if not answer.text.strip():
                stats.dropped["empty response"] += 1
                continue
            conversations[i].append({"role": "assistant", "content": answer.text.strip()})
            finished[i] = finished[i] and answer.finished
            answered.append(i)
        return answered

    def _accept_instruction(
        self, user: Completion, turn: int, seen: set[str], stats: ChunkStats
    ) -> bool:
        text = user.text.strip()
        if not text:
            stats.dropped["empty instruction"] += 1
        elif not user.finished and not self.preset.keep_truncated:
            stats.dropped["instruction cut off at max_tokens"] += 1
        elif turn == 0 and text in seen:
            stats.dropped["repeated instruction"] += 1
        else:
            return True
        return False

    def _record(self, index: int, messages: list[dict[str, str]], finished: bool) -> Conversation:
        return Conversation.model_validate(
            {
                "messages": messages,
                "meta": {
                    "id": f"{self.job.task}-{index:07d}",
                    "source": "magpie",
                    "task": self.job.task,
                    "model": self.job.model,
                    "family": self.family.name,
                    "system_prompt": self.system,
                    "preset": self.job.preset_name,
                    "backend": self.backend.name,
                    "seed": self.job.seed,
                    "responses_finished": finished,
                },
            }
        )


def existing_instructions(parts: Path) -> set[str]:
    seen: set[str] = set()
    for path in sorted(parts.glob("chunk-*.jsonl")):
        for record in read_records(path, Conversation):
            seen.add(record.messages[0].content)
    return seen


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[records_per_s]:.2f} records/s"),
        TextColumn("{task.fields[tokens_per_s]:.0f} tokens/s"),
        TimeElapsedColumn(),
        console=console,
    )


@dataclass(frozen=True)
class Sharding:
    """Which chunks this process writes: chunk c belongs to worker c % workers. One
    process per GPU, each with its own worker number, share one output."""

    worker: int = 0
    workers: int = 1

    def owns(self, chunk: int) -> bool:
        return chunk % self.workers == self.worker


def check_job(parts: Path, job: Job) -> None:
    """Refuse to mix records from different settings in one output."""
    path = parts / "job.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("fingerprint") != job.fingerprint():
            raise TunerError(
                f"{parts} holds records generated with other settings (see {path}). "
                "Use another out=, or delete that folder to start over."
            )
    parts.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": job.fingerprint(), **asdict(job)}, indent=2))


def write_chunks(
    generator: MagpieGenerator, plan: ChunkPlan, todo: list[int], owned: int, console: Console
) -> None:
    """Generate the chunks in `todo` with a progress bar over the `owned` records."""
    seen = existing_instructions(plan.parts)
    remaining = sum(plan.records_in(c) for c in todo)
    with progress_bar(console) as progress:
        bar = progress.add_task(
            f"{generator.job.task}: generating",
            total=owned,
            completed=owned - remaining,
            records_per_s=0.0,
            tokens_per_s=0.0,
        )
        records = tokens = 0
        seconds = 0.0
        for chunk in todo:
            first = chunk * plan.size
            chunk_records, stats = generator.generate_chunk(first, plan.records_in(chunk), seen)
            # Statistics first: the chunk file is what marks the chunk done.
            plan.stats_path(chunk).write_text(stats.to_json())
            write_records(plan.path(chunk), chunk_records)
            records += stats.records
            tokens += stats.output_tokens
            seconds += stats.seconds
            progress.update(
                bar,
                advance=stats.records,
                records_per_s=records / seconds,
                tokens_per_s=tokens / seconds,
            )


def assemble(plan: ChunkPlan, out: Path, job: Job) -> GenerateSummary:
    """The output file from every chunk, and its statistics beside it."""
    records: list[Conversation] = []
    dropped: Counter[str] = Counter()
    tokens = 0
    seconds = 0.0
    for chunk in plan.chunks():
        records += read_records(plan.path(chunk), Conversation)
        stats = json.loads(plan.stats_path(chunk).read_text())
        dropped.update(stats["dropped"])
        tokens += stats["output_tokens"]
        seconds += stats["seconds"]
    write_records(out, records)
    summary = GenerateSummary(
        output=str(out),
        records=len(records),
        dropped_while_generating=dict(dropped),
        output_tokens=tokens,
        generation_seconds=round(seconds, 2),
        tokens_per_second=round(tokens / seconds, 1) if seconds else None,
        job=asdict(job),
    )
    out.with_suffix(".stats.json").write_text(summary.to_json())
    return summary
