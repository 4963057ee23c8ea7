"""`just bench [generate|filter]`: the speed targets, measured and written to
`bench/results/NAME.json` (never asserted in tests).

- generate: output tokens/s of the project's generator (vLLM) against transformers
  `generate` at batch 8, in one run, on the embedded default: the two steps of
  `just generate chat preset=default` (instructions, then responses) for 64 records,
  each engine given the same prompts and sampling settings; decoding alone (greedy,
  128 tokens, every answer near the limit) is reported apart.
- plan: the memory planner's estimates against published peak-memory figures.
- experiment: `just experiment pure-synthetic cpu` (two tiny shapes × two seeds) from an
  empty runs folder; the runner's overhead (planning, skipping, the statistics, the
  report, its own start) is its wall time less the sum of its runs' training and
  evaluation.
- filter: a seeded million-record corpus with planted near-duplicates through the
  default preset (rules + near-dedup) on two workers; wall time, and the recall and
  precision of near-duplicate detection against exact Jaccard on a sample.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.errors import TunerError
from tuner.project import ROOT, cache_dir

RESULTS = ROOT / "bench" / "results"


# The CPU flags that decide the engines' speed and dtype (tuner.generate.backends.cpu_dtype).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict[str, Any]:
    import os

    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def write_result(name: str, result: dict[str, Any], console: Console) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2))
    console.print_json(json.dumps(result))
    console.print(f"Wrote {path}")
    return path


@dataclass(frozen=True)
class GenerateWorkload:
    """The prompts and sampling `just bench generate` gives both engines: the two steps
    of `just generate chat preset=default` for `records` records, and decoding alone."""

    family: Any  # tuner.generate.templates.ModelFamily
    persona: str
    preset: Any  # tuner.generate.templates.Preset
    questions: list[str]
    seeds: list[int]

    @classmethod
    def for_model(cls, model: str, records: int) -> GenerateWorkload:
        from tuner.generate import templates
        from tuner.generate.magpie import record_seed

        chat = (ROOT / "recipes" / "data" / "chat.jsonl").read_text().splitlines()
        questions = [json.loads(line)["messages"][0]["content"] for line in chat]
        return cls(
            family=templates.family_for(model),
            persona=templates.persona("chat"),
            preset=templates.preset("default"),
            questions=(questions * records)[:records],
            seeds=[record_seed(0, index, 0, 0) for index in range(records)],
        )

    def steps(self, engine: Any) -> dict[str, tuple[list[str], Any]]:
        from tuner.generate.templates import Sampling

        system = self.family.system_prompt(self.persona)
        records = len(self.questions)
        return {
            # Magpie instructions from the pre-query template, then the answers to the
            # chat task's questions under the task's system prompt.
            "instruction": (
                [self.family.instruction_prompt(self.persona)] * records,
                self.preset.instruction,
            ),
            "response": (
                [
                    engine.render(
                        [{"role": "system", "content": system}, {"role": "user", "content": q}],
                        add_generation_prompt=True,
                    )
                    for q in self.questions
                ],
                self.preset.response,
            ),
            # Decoding alone: the same questions under the family's default system prompt,
            # greedy, 128 tokens at most (nearly every answer runs to the limit, so
            # neither engine idles on finished rows). Reported apart, not in the speedup.
            "fixed_length": (
                [
                    engine.render([{"role": "user", "content": q}], add_generation_prompt=True)
                    for q in self.questions
                ],
                Sampling(temperature=0.0, max_tokens=128),
            ),
        }

    def measure(self, name: str, open_engine: Any, console: Console) -> dict[str, Any]:
        """Load, warm up, then time each step; prints each step's rate as it ends."""
        import torch

        from tuner.generate.templates import Sampling

        loading = time.perf_counter()
        engine = open_engine()
        measured: dict[str, Any] = {
            "torch_threads": torch.get_num_threads(),
            "load_seconds": round(time.perf_counter() - loading, 1),
        }
        warm_up = [self.family.instruction_prompt(self.persona)] * 2
        greedy = Sampling(temperature=0.0, max_tokens=128)
        engine.complete(warm_up, greedy, self.seeds[:2], self.family.stop)
        for step, (prompts, sampling) in self.steps(engine).items():
            console.print(f"{name}: {step} step, {len(prompts)} prompts…")
            # An engine that generates batch after batch (transformers) is given one batch
            # at a time, the same work, so that a log shows its progress and rate; vLLM
            # gets every prompt at once, as it schedules them.
            chunk = getattr(engine, "batch_size", len(prompts))
            completions = []
            tokens = 0
            started = time.perf_counter()
            for start in range(0, len(prompts), chunk):
                end = start + chunk
                batch = engine.complete(
                    prompts[start:end], sampling, self.seeds[start:end], self.family.stop
                )
                completions += batch
                tokens += sum(c.tokens for c in batch)
                seconds = time.perf_counter() - started
                if len(completions) < len(prompts):
                    console.print(
                        f"  {len(completions)}/{len(prompts)} prompts, {tokens} tokens, "
                        f"{tokens / seconds:.1f} tokens/s"
                    )
            console.print(
                f"{name}: {step}: {tokens} tokens in {seconds:.1f} s, "
                f"{tokens / seconds:.1f} tokens/s"
            )
            measured[step] = {
                "output_tokens": tokens,
                "finished": sum(c.finished for c in completions),
                "longest": max(c.tokens for c in completions),
                "seconds": round(seconds, 2),
                "output_tokens_per_second": round(tokens / seconds, 1),
            }
        magpie = [measured[step] for step in ("instruction", "response")]
        measured["magpie_output_tokens_per_second"] = round(
            sum(s["output_tokens"] for s in magpie) / sum(s["seconds"] for s in magpie), 1
        )
        return measured


def bench_generate(console: Console, records: int = 64) -> Path:
    from tuner.generate.backends import TransformersBackend, VllmBackend, cpu_dtype
    from tuner.models import ensure_embedded_model

    model = str(ensure_embedded_model())
    workload = GenerateWorkload.for_model(model, records)
    # Both engines run in the CPU's dtype (cpu_dtype: bfloat16 where the CPU computes in
    # it, else float32). transformers runs first: vLLM binds its process to its own
    # threads, which would slow whatever runs after it.
    dtype = cpu_dtype()
    baseline_name = f"transformers_batch_8_{dtype}"
    engines = {
        baseline_name: lambda: TransformersBackend(model, 0, 8, dtype),
        # As a long `just generate` runs it (the default preset): compiled first. The
        # compilation is timed apart; tokens/s count generation only.
        "vllm": lambda: VllmBackend(model, seed=0, compile=workload.preset.compile),
    }
    measured = {name: workload.measure(name, engine, console) for name, engine in engines.items()}
    vllm, baseline = measured["vllm"], measured[baseline_name]
    rate = "output_tokens_per_second"
    speedup = round(
        vllm["magpie_output_tokens_per_second"] / baseline["magpie_output_tokens_per_second"], 2
    )
    return write_result(
        "generate",
        {
            "model": f"SmolLM2-135M-Instruct (embedded), CPU; both engines in {dtype}",
            "task": "chat",
            "preset": "default",
            "records": records,
            "results": measured,
            "speedup_by_step": {
                step: round(vllm[step][rate] / baseline[step][rate], 2)
                for step in ("instruction", "response", "fixed_length")
            },
            "speedup": speedup,
            "speedup_counts": "instruction and response steps together (output tokens/s)",
            "target_speedup": 8.0,
            "meets_target": speedup >= 8.0,
        },
        console,
    )


def bench_filter(console: Console, n: int = 1_000_000, workers: int = 2) -> Path:
    from tuner.filter.rules import load_preset
    from tuner.filter.run import filter_records
    from tuner.filter.synthetic import SyntheticCorpus, english_words
    from tuner.models import ensure_embedded_model
    from tuner.records import write_records

    folder = cache_dir() / "bench"
    corpus_path = folder / f"synthetic-{n}.jsonl"
    planted_path = folder / f"synthetic-{n}.planted.json"
    if not (corpus_path.is_file() and planted_path.is_file()):
        with console.status(f"Writing a seeded corpus of {n} records…"):
            words = english_words(ensure_embedded_model() / "tokenizer.json")
            records, planted = [], []
            for record, plant in SyntheticCorpus(words, seed=0).generate(n):
                records.append(record)
                if plant:
                    planted.append([plant.index, plant.source, plant.exact])
            write_records(corpus_path, records)
            planted_path.write_text(json.dumps(planted))
            del records
    out = folder / f"filtered-{n}"
    started = time.perf_counter()
    stats = filter_records(
        str(corpus_path), [f"out={out}", f"workers={workers}", "against=none"], console
    )
    seconds = time.perf_counter() - started
    quality = near_duplicate_quality(
        corpus_path, planted_path, out, load_preset("default").near_duplicates.jaccard
    )
    return write_result(
        "filter",
        {
            "records": n,
            "workers": workers,
            "seconds": round(seconds, 1),
            "target_seconds": 300,
            "meets_time_target": seconds <= 300,
            "kept": stats.kept,
            "removed_by_rule": stats.removed_by_rule,
            "near_duplicate_candidates_put_back": stats.near_duplicate_candidates_put_back,
            "near_duplicates": quality,
            "meets_quality_target": quality["recall"] >= 0.95 and quality["precision"] >= 0.95,
        },
        console,
    )


def near_duplicate_quality(
    corpus: Path, planted_path: Path, out: Path, threshold: float, sample: int = 1500
) -> dict[str, Any]:
    """Pairwise recall and precision on a sample: 1500 planted near-copies with their
    sources plus 1500 records drawn at random. A pair is a true duplicate when the exact
    Jaccard similarity of its word 5-gram sets reaches the threshold; it is found when
    the filter put both records in one near-duplicate cluster."""
    from tuner.filter.decontamination import ngram_keys
    from tuner.filter.run import jaccard

    rng = random.Random(1)
    planted = [p for p in json.loads(planted_path.read_text()) if not p[2]]
    chosen = set()
    for index, source, _ in rng.sample(planted, min(sample, len(planted))):
        chosen |= {index, source}
    total = sum(1 for _ in corpus.open())
    chosen |= set(rng.sample(range(total), sample))

    texts: dict[str, set[str]] = {}
    with corpus.open() as handle:
        for index, line in enumerate(handle):
            if index in chosen:
                record = json.loads(line)
                texts[record["meta"]["id"]] = ngram_keys(
                    "\n".join(m["content"] for m in record["messages"]), 5
                )
    clusters: dict[str, int] = {}
    ruled_out = set()
    for name in ("kept.jsonl", "rejected.jsonl"):
        with (out / name).open() as handle:
            for line in handle:
                record = json.loads(line)
                key = record["meta"]["id"]
                if key not in texts:
                    continue
                verdict = record["meta"]["filter"]
                if "cluster" in verdict and verdict["cluster"] is not None:
                    clusters[key] = verdict["cluster"]
                if set(verdict.get("rejected_by", [])) - {"near duplicate"}:
                    ruled_out.add(key)  # removed by a rule before deduplication
    ids = sorted(set(texts) - ruled_out)
    true_pos = false_pos = false_neg = 0
    for a, b in combinations(ids, 2):
        same = clusters.get(a, -1) >= 0 and clusters.get(a) == clusters.get(b)
        similar = jaccard(texts[a], texts[b]) >= threshold
        true_pos += same and similar
        false_pos += same and not similar
        false_neg += similar and not same
    return {
        "sample_records": len(ids),
        "pairs": len(ids) * (len(ids) - 1) // 2,
        "true_duplicate_pairs": true_pos + false_neg,
        "found_pairs": true_pos + false_pos,
        "recall": round(true_pos / (true_pos + false_neg), 4) if true_pos + false_neg else None,
        "precision": round(true_pos / (true_pos + false_pos), 4) if true_pos + false_pos else None,
        "jaccard_threshold": threshold,
    }


def bench_plan(console: Console) -> Path:
    """The memory planner against published peak-memory measurements
    (bench/published-memory.yaml): each row's relative error, and the band per method."""
    from dataclasses import asdict

    from rich.table import Table

    from tuner.references import TARGET, comparisons, error_bands

    rows = [comparison.as_dict() for comparison in comparisons()]
    table = Table(title="The planner against published peak memory (bench/published-memory.yaml)")
    for column in ("row", "measured", "estimated", "error", "why it misses"):
        table.add_column(column, justify="left" if column in ("row", "why it misses") else "right")
    for row in rows:
        mark = "✓" if row["within_20_percent"] else "✗"
        table.add_row(
            row["name"],
            f"{row['measured']} {row['unit']}",
            f"{row['estimated']:.2f}",
            f"{mark} {row['relative_error']:+.1%}",
            row.get("why_it_misses", ""),
        )
    console.print(table)
    return write_result(
        "plan",
        {
            "target": f"each estimate within {TARGET:.0%} of the published figure",
            "within_target": sum(r["within_20_percent"] for r in rows),
            "comparisons": len(rows),
            "error_bands": {method: asdict(band) for method, band in error_bands().items()},
            "results": rows,
        },
        console,
    )


def bench_experiment(console: Console, name: str = "pure-synthetic") -> Path:
    """The experiment runner's overhead over its runs, at cpu scale."""
    import tempfile

    from tuner.environments import TRAIN_PYTHON, run_in

    with tempfile.TemporaryDirectory() as runs:
        console.print(f"just experiment {name} cpu in {runs} (minutes; its progress follows)")
        start = time.monotonic()
        run_in(TRAIN_PYTHON, "experiment", name, "cpu", env={"TUNER_RUNS": runs})
        wall = time.monotonic() - start
        timings = json.loads(Path(runs, "experiments", name, "timings.json").read_text())
    cells = sum(sum(run.values()) for run in timings.values())
    overhead = (wall - cells) / cells
    return write_result(
        "experiment",
        {
            "target": "the runner's overhead at most 10 % of its runs' training and evaluation",
            "experiment": name,
            "runs": len(timings),
            "wall_s": round(wall, 1),
            "runs_s": round(cells, 1),
            "overhead": round(overhead, 4),
            "within_target": overhead <= 0.10,
            "per_run": timings,
        },
        console,
    )


BENCHMARKS = {
    "generate": bench_generate,
    "filter": bench_filter,
    "plan": bench_plan,
    "experiment": bench_experiment,
}


def run(names: list[str], console: Console) -> None:
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise TunerError(f"Unknown benchmark(s) {unknown}. Benchmarks: {', '.join(BENCHMARKS)}.")
    for name in names or list(BENCHMARKS):
        BENCHMARKS[name](console)
