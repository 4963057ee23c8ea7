"""`just publish-data INPUT repo=ORG/NAME`: a dataset the stages made (generated,
filtered, paired) as a Hub dataset repository in `INPUT.publish/`, uploaded when
HF_TOKEN is in the environment.

The card says where the records came from, from the statistics the stages wrote beside
them: the generator model and its sampling settings (`just generate`'s OUT.stats.json),
what the filter kept and removed, decontamination included (`just filter`'s stats.json),
the judge or reward model that ranked preference pairs (`just prefs`' stats.json). The
license defaults to the generator model's: its outputs are what the dataset holds.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.errors import TunerError
from tuner.hub import PRIVATE, hub_id, hub_repo, known_license, license_needed, staged, upload
from tuner.options import Option, Options, parse_options
from tuner.records import Conversation, PreferencePair, read_records, text_lines

OPTIONS: Options = {
    "repo": Option(hub_repo, None, "the Hub dataset repository, ORG/NAME (required)"),
    "private": PRIVATE,
    "license": Option(
        str, None, "the card's license, a Hub license id (default: the generator model's)"
    ),
}
# Where the Hub's dataset viewer finds the split without a loading script.
DATA_FILE = "data/train.jsonl"


@dataclass
class Provenance:
    """The statistics files found beside the records, read."""

    generation: list[dict[str, Any]] = field(default_factory=list)
    filtering: dict[str, Any] | None = None
    pairing: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)  # name in the repository → source

    @property
    def generators(self) -> list[str]:
        models = [g["job"]["model"] for g in self.generation]
        models += (self.pairing or {}).get("models", [])
        return list(dict.fromkeys(hub_id(m) or m for m in models))


def read_stats(path: Path) -> dict[str, Any] | None:
    """A stage's statistics; None where the file is missing or not one (it only feeds
    the card's provenance)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def is_filter_stats(stats: dict[str, Any]) -> bool:
    return {"kept", "input_records", "inputs"} <= stats.keys()


def filter_summary(stats: dict[str, Any]) -> str:
    """What `just filter` kept and removed, from its stats.json."""
    removed = stats.get("removed_by_rule") or {}
    rules = ", ".join(f"{rule} {n}" for rule, n in removed.items()) or "none"
    return (
        f"Filtered by `just filter`: kept {stats['kept']} of {stats['input_records']} "
        f"({stats.get('kept_fraction', 0):.1%}); failed by rule: {rules}."
    )


def provenance(records: Path) -> Provenance:
    found = Provenance()
    beside = read_stats(records.parent / "stats.json")
    sources = [records]
    if beside and is_filter_stats(beside):
        found.filtering = beside
        found.files["provenance/filter-stats.json"] = records.parent / "stats.json"
        sources = [Path(p) for p in beside["inputs"]]
    elif beside and {"pairs", "scorer", "models"} <= beside.keys():
        found.pairing = beside
        found.files["provenance/prefs-stats.json"] = records.parent / "stats.json"
    for number, source in enumerate(sources):
        stats_path = source.with_suffix(".stats.json")
        stats = read_stats(stats_path)
        if stats and isinstance(stats.get("job"), dict) and "model" in stats["job"]:
            found.generation.append(stats)
            found.files[f"provenance/generate-stats-{number}.json"] = stats_path
    return found


def read_dataset(path: Path) -> tuple[str, int]:
    """(kind, records): conversations or preference pairs, every line checked, with the
    error naming the file and line where one is not."""
    first = next(text_lines(path), None)
    if first is None:
        raise TunerError(f"{path}: the file holds no records.")
    pairs = '"chosen"' in first[1]
    schema = PreferencePair if pairs else Conversation
    return ("preference pairs" if pairs else "conversations"), len(read_records(path, schema))


@dataclass(frozen=True)
class PublishedData:
    folder: Path
    repo: str
    records: int
    url: str | None


def publish_data(input_path: str, option_pairs: list[str], console: Console) -> PublishedData:
    options = parse_options(option_pairs, OPTIONS, "publish-data")
    if options["repo"] is None:
        raise TunerError("publish-data: give the Hub repository, e.g. repo=my-org/math-magpie.")
    records = Path(input_path)
    kind, count = read_dataset(records)
    found = provenance(records)
    license_id = options["license"] or next(
        (known for model in found.generators if (known := known_license(model))), None
    )
    if license_id is None:
        raise license_needed(
            f"publish-data: no generator model with a known license made {records}"
        )
    out = records.with_suffix(".publish")
    with staged(out) as staging:
        (staging / DATA_FILE).parent.mkdir(parents=True)
        shutil.copy2(records, staging / DATA_FILE)
        for name, source in found.files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staging / name)
        dataset_card(options["repo"], kind, count, license_id, found).save(staging / "README.md")
    private = options["private"] == "true"
    url = upload(out, options["repo"], "dataset", private, f"llm-tuner: {records.name}", console)
    return PublishedData(out, options["repo"], count, url)


def size_category(count: int) -> str:
    """The Hub's size bucket for a dataset of `count` records."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if count < bound:
            return name
    return "100K<n<1M" if count < 1_000_000 else "n>1M"


def dataset_card(repo: str, kind: str, count: int, license_id: str, found: Provenance) -> Any:
    from huggingface_hub import DatasetCard, DatasetCardData

    pairs = kind == "preference pairs"
    data = DatasetCardData(
        license=license_id,
        task_categories=["text-generation"],
        size_categories=[size_category(count)],
        pretty_name=repo.split("/")[1],
        tags=["llm-tuner", "synthetic", *(["dpo", "preference"] if pairs else [])],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}],
    )
    shape = (
        '`{"messages": [prompt turns], "chosen": {…}, "rejected": {…}}`'
        if pairs
        else '`{"messages": [{"role", "content"}…], "meta": {…}}`'
    )
    sections = [
        f"# {repo.split('/')[1]}",
        f"{count} {kind}, one JSON object per line of `{DATA_FILE}`: {shape}. Made by "
        "llm-tuner's data stages; the statistics each stage wrote are in `provenance/`.",
        "## Provenance",
        provenance_lines(found),
        "## License",
        f"`{license_id}`: the records are the outputs of "
        + (", ".join(f"`{m}`" for m in found.generators) or "the models above")
        + ", whose license governs their use.",
        "## Limitations",
        "Synthetic: the records say what the models above wrote, errors included; "
        "the filter's rules catch only what they test for.",
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def provenance_lines(found: Provenance) -> str:
    lines = []
    for stats in found.generation:
        job = stats["job"]
        model = hub_id(job["model"]) or job["model"]
        lines.append(
            f"- Generated by `just generate {job.get('task')}` with `{model}` (Magpie, "
            f"{job.get('family')} template, preset {job.get('preset_name')}, seed "
            f"{job.get('seed')}): {stats.get('records')} records."
        )
    if found.filtering:
        stats = found.filtering
        removed = stats.get("removed_by_rule") or {}
        against = (stats.get("options") or {}).get("against")
        sets = against if isinstance(against, list) else [against]
        decontamination = (
            f"{removed.get('contamination', 0)} removed for overlapping the evaluation sets "
            + ", ".join(Path(str(s)).name for s in sets)
            if against
            else "not run (no evaluation sets given)"
        )
        lines.append(f"- {filter_summary(stats)}")
        lines.append(f"- Decontamination: {decontamination}.")
    if found.pairing:
        stats = found.pairing
        lines.append(
            f"- Paired by `just prefs`: {stats['pairs']} pairs from {stats.get('input_records')} "
            f"prompts, {stats.get('samples_per_model')} samples per model from "
            f"{', '.join(stats['models'])}, scored by {stats['scorer']} "
            f"(min margin {stats.get('min_margin')})."
        )
    return "\n".join(lines) or "No stage's statistics were found beside the records."
