"""`just prefs INPUT`: preference pairs for DPO from conversation records.

For each record's prompt (its turns up to the last user message), several responses
are sampled (from several models loaded one after another, or several samples of one),
each is scored by an LLM judge or a reward model (tuner.scoring), and the best and the
worst become chosen and rejected. Pairs whose margin is under `min_margin`, ties
included, are dropped and counted: DPO learns nothing from them, and a tie broken
arbitrarily teaches noise.

Each stage writes its file atomically and is skipped when that file exists, so an
interrupted run resumes at the stage it was in.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.errors import TunerError
from tuner.generate.backends import ModelSlot
from tuner.generate.templates import Sampling
from tuner.manifest import sha256_file
from tuner.models import EMBEDDED
from tuner.options import Option, parse_options, positive_int
from tuner.records import PreferencePair, Prompts, read_records, write_records
from tuner.scoring import JudgeScorer, Prompt, RewardModelScorer, load_judge_settings


def model_list(raw: str) -> list[str]:
    return [part for part in raw.split(",") if part]


OPTIONS = {
    "models": Option(model_list, [EMBEDDED], "comma list, loaded one after another"),
    "samples": Option(positive_int, None, "responses per model; 4 with one model, else 1"),
    "scorer": Option(
        str, "judge", "judge (through vLLM, generate/judge.yaml) or rm:MODEL (a reward model)"
    ),
    "judge": Option(str, EMBEDDED, "the judge model"),
    "min_margin": Option(float, 0.5, "pairs under it are dropped, ties included"),
    "max_tokens": Option(
        positive_int, None, "per response; generate/judge.yaml's, 128 with the embedded model"
    ),
    "seed": Option(int, 42, "sampling seed"),
    "out": Option(Path, None, "output folder; INPUT's name + .prefs"),
}


def prompt_of(record: Prompts) -> Prompt:
    """The turns up to and including the last user message."""
    messages = [m.model_dump(include={"role", "content"}) for m in record.messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[: last_user + 1]


def sample_candidates(
    slot: ModelSlot,
    prompts: list[Prompt],
    model: str,
    samples: int,
    sampling: Sampling,
    seed: int,
    console: Console,
) -> list[list[str]]:
    backend = slot.get(model)
    rendered = [backend.render(p, add_generation_prompt=True) for p in prompts]
    batch = [text for text in rendered for _ in range(samples)]
    seeds = [seed + i for i in range(len(batch))]
    with console.status(f"Sampling {len(batch)} responses from {model}…"):
        completions = backend.complete(batch, sampling, seeds, stop=[])
    return [
        [c.text.strip() for c in completions[i * samples : (i + 1) * samples]]
        for i in range(len(prompts))
    ]


def make_pairs(
    records: list[Prompts],
    prompts: list[Prompt],
    candidates: list[list[dict[str, str]]],
    scores: list[list[float]],
    min_margin: float,
    scorer: str,
) -> tuple[list[PreferencePair], list[dict[str, Any]]]:
    pairs, dropped = [], []
    for record, prompt, options, marks in zip(records, prompts, candidates, scores, strict=True):
        valid = [
            (s, o) for s, o in zip(marks, options, strict=True) if not math.isnan(s) and o["text"]
        ]
        meta = {
            **record.meta,
            "scorer": scorer,
            "candidates": [{**o, "score": s} for s, o in zip(marks, options, strict=True)],
        }
        if len(valid) < 2:
            dropped.append({"messages": prompt, "meta": {**meta, "dropped": "fewer than 2 scored"}})
            continue
        best = max(valid, key=lambda pair: pair[0])
        worst = min(valid, key=lambda pair: pair[0])
        margin = best[0] - worst[0]
        if margin == 0 or margin < min_margin:  # a tie teaches nothing, whatever min_margin
            reason = "tie" if margin == 0 else f"margin under {min_margin}"
            dropped.append(
                {"messages": prompt, "meta": {**meta, "margin": margin, "dropped": reason}}
            )
            continue
        pairs.append(
            PreferencePair.model_validate(
                {
                    "messages": prompt,
                    "chosen": {"role": "assistant", "content": best[1]["text"]},
                    "rejected": {"role": "assistant", "content": worst[1]["text"]},
                    "meta": {
                        **meta,
                        "margin": margin,
                        "chosen_model": best[1]["model"],
                        "rejected_model": worst[1]["model"],
                    },
                }
            )
        )
    return pairs, dropped


def histograms(scores: list[float], margins: list[float], min_margin: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.hist(scores, bins=20)
    left.set_title("Scores of all responses")
    left.set_xlabel("score")
    right.hist(margins, bins=20)
    right.axvline(min_margin, color="red", linestyle="--", label=f"min_margin = {min_margin}")
    right.set_title("Best minus worst, per prompt")
    right.set_xlabel("margin")
    right.legend()
    for axes in (left, right):
        axes.set_ylabel("count")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def reuse_or_clear(settings_path: Path, files: list[Path], settings: dict[str, Any]) -> None:
    """Keep a stage's files only if they were made with these settings: re-pairing with
    another min_margin reuses everything, another scorer only the candidates."""
    if settings_path.is_file() and json.loads(settings_path.read_text()) == settings:
        return
    for path in files:
        path.unlink(missing_ok=True)
    settings_path.write_text(json.dumps(settings))


@dataclass(frozen=True)
class PairStats:
    """What `just prefs` paired and dropped, written to stats.json."""

    output: str
    input_records: int
    pairs: int
    dropped: dict[str, int]  # by reason: a tie, a margin under min_margin, …
    models: list[str]
    samples_per_model: int
    scorer: str
    min_margin: float
    mean_margin_kept: float | None
    scores: dict[str, float | int | None]  # count, min, mean, max of every valid score

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def candidate_rows(
    work: Path,
    models: list[str],
    prompts: list[Prompt],
    samples: int,
    sampling: Sampling,
    seed: int,
    slot: ModelSlot,
    console: Console,
) -> list[list[dict[str, str]]]:
    """Every prompt's responses, model by model; a model's file, once written, is reused."""
    candidates: list[list[dict[str, str]]] = [[] for _ in prompts]
    for index, model in enumerate(models):
        path = work / f"candidates-{index}.jsonl"
        if not path.is_file():
            texts = sample_candidates(slot, prompts, model, samples, sampling, seed, console)
            write_records(path, [{"responses": t} for t in texts])
        for row, line in zip(candidates, path.read_text().splitlines(), strict=True):
            row += [{"model": model, "text": t} for t in json.loads(line)["responses"]]
    return candidates


def scored_rows(
    work: Path,
    scorer_name: str,
    judge: str,
    slot: ModelSlot,
    prompts: list[Prompt],
    candidates: list[list[dict[str, str]]],
    console: Console,
) -> list[list[float]]:
    """Every response's score; the scores' file, once written, is reused. A score that
    could not be read is NaN, which JSON stores as null."""
    scores_path = work / "scores.jsonl"
    if not scores_path.is_file():
        texts = [[c["text"] for c in row] for row in candidates]
        if scorer_name == "judge":
            scorer = JudgeScorer(slot, judge, load_judge_settings())
        else:
            slot.release()
            scorer = RewardModelScorer(scorer_name.removeprefix("rm:"))
        with console.status(f"Scoring {sum(map(len, texts))} responses with {scorer.name}…"):
            scored = scorer.score(prompts, texts)
        write_records(scores_path, [{"scores": row} for row in scored])
    return [
        [math.nan if s is None else s for s in json.loads(line)["scores"]]
        for line in scores_path.read_text().splitlines()
    ]


def build_preferences(input_arg: str, option_pairs: list[str], console: Console) -> PairStats:
    options = parse_options(option_pairs, OPTIONS, "prefs")
    scorer_name = options["scorer"]
    if scorer_name != "judge" and not scorer_name.startswith("rm:"):
        raise TunerError(f"scorer={scorer_name}: use 'judge' or 'rm:MODEL'.")
    models = options["models"]
    samples = options["samples"] or (1 if len(models) > 1 else 4)
    if len(models) * samples < 2:
        raise TunerError("prefs: need at least two responses per prompt (samples=2 or models=A,B).")
    source = Path(input_arg)
    records = read_records(source, Prompts)
    out: Path = options["out"] or source.with_name(source.stem + ".prefs")
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    settings = load_judge_settings()
    sampling = Sampling(**settings["candidates"])
    if options["max_tokens"] or models == [EMBEDDED]:
        sampling = sampling.model_copy(update={"max_tokens": options["max_tokens"] or 128})
    prompts = [prompt_of(r) for r in records]

    reuse_or_clear(
        work / "candidates.settings.json",
        [work / f"candidates-{i}.jsonl" for i in range(len(models))] + [work / "scores.jsonl"],
        {
            "input": sha256_file(source),
            "models": models,
            "samples": samples,
            "sampling": sampling.model_dump(),
            "seed": options["seed"],
        },
    )
    reuse_or_clear(
        work / "scores.settings.json",
        [work / "scores.jsonl"],
        {"scorer": options["scorer"], "judge": options["judge"], "settings": settings},
    )
    slot = ModelSlot(options["seed"])
    candidates = candidate_rows(
        work, models, prompts, samples, sampling, options["seed"], slot, console
    )
    scores = scored_rows(work, scorer_name, options["judge"], slot, prompts, candidates, console)

    scorer_label = scorer_name if scorer_name != "judge" else f"judge:{options['judge']}"
    pairs, dropped = make_pairs(
        records, prompts, candidates, scores, options["min_margin"], scorer_label
    )
    write_records(out / "pairs.jsonl", pairs)
    write_records(out / "dropped.jsonl", dropped)
    all_scores, margins = scores_and_margins(scores)
    histograms(all_scores, margins, options["min_margin"], out / "scores.png")
    stats = PairStats(
        output=str(out),
        input_records=len(records),
        pairs=len(pairs),
        dropped=dict(Counter(d["meta"]["dropped"] for d in dropped)),
        models=models,
        samples_per_model=samples,
        scorer=scorer_label,
        min_margin=options["min_margin"],
        mean_margin_kept=round(sum(p.meta["margin"] for p in pairs) / len(pairs), 3)
        if pairs
        else None,
        scores=score_summary(all_scores),
    )
    (out / "stats.json").write_text(stats.to_json())
    return stats


def scores_and_margins(scores: list[list[float]]) -> tuple[list[float], list[float]]:
    """Every valid score, and each prompt's margin (best minus worst) where it has two."""
    valid = [[s for s in row if not math.isnan(s)] for row in scores]
    return [s for row in valid for s in row], [max(r) - min(r) for r in valid if len(r) > 1]


def score_summary(scores: list[float]) -> dict[str, float | int | None]:
    if not scores:
        return {"count": 0, "min": None, "mean": None, "max": None}
    mean = sum(scores) / len(scores)
    return {
        "count": len(scores),
        "min": round(min(scores), 3),
        "mean": round(mean, 3),
        "max": round(max(scores), 3),
    }
