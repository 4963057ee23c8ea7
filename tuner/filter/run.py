"""Runs the filter stages on one of datatrove's executors and writes the outputs.

`executor=local` (the default) runs each stage's tasks in processes here. `executor=ray`
runs the same steps as Ray tasks: on the cluster RAY_ADDRESS names, or on one started
here on loopback for the run, with a worker per `workers=`. `executor=slurm` submits them
as Slurm jobs (tuner/filter/slurm_jobs.py). A cluster's machines must all see the output
folder (a shared filesystem), as datatrove's executors expect."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from datatrove.data import Document
from rich.console import Console

from tuner.errors import TunerError
from tuner.evaluate.suites import local_evaluation_sets
from tuner.filter import report
from tuner.filter.decontamination import EvalNgrams, ngram_keys
from tuner.filter.pipeline import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    QualityFilter,
    RegexWordTokenizer,
    read_and_shard,
    record_id,
)
from tuner.filter.rules import FilterPreset, NearDuplicates, load_preset
from tuner.filter.slurm_jobs import SlurmSubmission, submit
from tuner.options import Option, choice, parse_options, positive_int, slurm_time
from tuner.records import text_lines, write_records


def paths(raw: str) -> list[Path]:
    return [Path(part) for part in raw.split(",") if part]


def eval_sets(raw: str) -> list[Path]:
    """`against=`: files, or `none` to skip decontamination."""
    return [] if raw == "none" else paths(raw)


def sizes(raw: str) -> list[int]:
    return [positive_int(part) for part in raw.split(",") if part]


OPTIONS = {
    "preset": Option(str, "default", "filter/presets/NAME.yaml, or a YAML path"),
    "out": Option(Path, None, "output folder; INPUT's name + .filtered"),
    "against": Option(
        eval_sets,
        None,
        "evaluation sets to decontaminate against (comma list of JSONL or text files; "
        "every local set of the suites by default), or none",
    ),
    "workers": Option(positive_int, min(2, os.cpu_count() or 1), "processes"),
    "tasks": Option(positive_int, None, "shards; as many as workers"),
    "tiers": Option(sizes, [], "comma list of sizes: the top-K records by quality score"),
    "executor": Option(
        choice("local", "ray", "slurm"),
        "local",
        "datatrove's executor: local processes; ray (RAY_ADDRESS's cluster, else one "
        "started on loopback); slurm (a job array per stage, submitted with sbatch)",
    ),
    "partition": Option(str, None, "executor=slurm: the partition to queue in"),
    "time": Option(slurm_time, "4:00:00", "executor=slurm: each stage's time limit"),
    "dry_run": Option(
        choice("true", "false"), "false", "executor=slurm: write the jobs, submit nothing"
    ),
}


def fingerprint(inputs: list[Path], preset: FilterPreset, against: list[Path], tasks: int) -> str:
    """What the intermediate files depend on: a change restarts the stages."""
    digest = hashlib.sha256(preset.model_dump_json().encode() + str(tasks).encode())
    for path in [*inputs, *against]:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def filter_records(
    input_arg: str, option_pairs: list[str], console: Console
) -> report.FilterStats | SlurmSubmission:
    """The filter's outputs, written; or, with executor=slurm and stages not finished,
    what was submitted to Slurm (the same command writes the outputs afterwards)."""
    options = parse_options(option_pairs, OPTIONS, "filter")
    if options["against"] is None:
        options["against"] = local_evaluation_sets()
    inputs = paths(input_arg)
    for path in inputs:
        if not path.is_file():
            raise TunerError(f"{path}: no such file (INPUT is a JSONL file or a comma list).")
    preset = load_preset(options["preset"])
    out: Path = options["out"] or inputs[0].with_name(inputs[0].stem + ".filtered")
    tasks = options["tasks"] or options["workers"]
    work = out / "work"
    created = not out.exists()
    stamp = work / "fingerprint"
    wanted = fingerprint(inputs, preset, options["against"], tasks)
    if stamp.is_file() and stamp.read_text() != wanted:
        shutil.rmtree(work)  # inputs or settings changed: the old intermediates do not apply
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)

    eval_ngrams = None
    if options["against"] and preset.decontamination:
        eval_ngrams = EvalNgrams(options["against"], preset.decontamination.ngram)

    if not (work / "shards").is_dir():
        try:
            with console.status("Reading and checking the input…"):
                read_and_shard(inputs, work / "shards", tasks, work / "exact.json")
        except TunerError:
            # Refused input leaves nothing behind: the folder this run made, or in an
            # earlier run's folder the shards begun.
            shutil.rmtree(out if created else work / "shards.partial", ignore_errors=True)
            raise
    stage_list = stages(work, preset, eval_ngrams, tasks)
    if options["executor"] == "slurm":
        submission = submit(work, stage_list, options, console)
        if submission is not None:
            return submission
    else:
        run_stages(work, stage_list, options["workers"], options["executor"], console)
    with console.status("Writing kept and rejected records…"):
        return write_outputs(out, work, preset, options["tiers"], options, inputs)


Stage = tuple[str, list[Any], int]  # a datatrove pipeline: name, steps, tasks


def jsonl_writer(
    work: Path, folder: str, text: Callable[[Document], bool] = lambda doc: True
) -> Any:
    """A JSONL writer keeping each document's text only where `text(doc)` says a later
    step reads it: the records themselves are read from the input at the end."""
    from datatrove.pipeline.writers import JsonlWriter

    def adapter(_, doc: Document) -> dict[str, Any]:
        kept_text = doc.text if text(doc) else ""
        return {"id": doc.id, "text": kept_text, "metadata": doc.metadata}

    return JsonlWriter(
        str(work / folder), output_filename="${rank}.jsonl", compression=None, adapter=adapter
    )


def minhash_config(dedup: NearDuplicates) -> Any:
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.text import TextNormConfig

    return MinhashConfig(
        n_grams=dedup.ngram,
        num_buckets=dedup.buckets,
        hashes_per_bucket=dedup.hashes_per_bucket,
        # Lower case and numbers as datatrove does; punctuation and whitespace are left to
        # the \w+ tokenizer, and diacritics are kept: datatrove strips them character by
        # character in Python, which doubles the cost of a signature.
        norm_config=TextNormConfig(
            remove_punctuation=False, norm_whitespace=False, norm_unicode_diacritics=False
        ),
    )


def near_duplicate_stages(work: Path, dedup: NearDuplicates, tasks: int) -> list[Stage]:
    """After the rules (which also write MinHash signatures): buckets, clusters, and the
    removal of every cluster member but one."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader

    config = minhash_config(dedup)
    buckets = MinhashDedupBuckets(
        input_folder=str(work / "signatures"), output_folder=str(work / "buckets"), config=config
    )
    clusters = MinhashDedupCluster(
        input_folder=str(work / "buckets"),
        output_folder=str(work / "clusters"),
        config=config,
        save_cluster_id=True,
    )
    removal = [
        JsonlReader(str(work / "passed"), compression=None),
        MinhashDedupFilter(
            str(work / "clusters"),
            exclusion_writer=jsonl_writer(work, "rejected-near"),
            load_cluster_ids=True,
        ),
        # The record kept for a cluster: its text verifies the cluster's removals.
        jsonl_writer(work, "kept", lambda doc: doc.metadata.get("minhash_cluster_id", -1) >= 0),
    ]
    return [
        ("minhash buckets", [buckets], dedup.buckets),
        ("minhash clusters", [clusters], 1),
        ("remove near-duplicates", removal, tasks),
    ]


def stages(
    work: Path, preset: FilterPreset, eval_ngrams: EvalNgrams | None, tasks: int
) -> list[Stage]:
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
    from datatrove.pipeline.readers import JsonlReader

    rejected = jsonl_writer(work, "rejected-rules", lambda doc: False)
    rules = [
        JsonlReader(str(work / "shards"), compression=None),
        QualityFilter(preset, eval_ngrams, exclusion_writer=rejected),
        jsonl_writer(work, "passed"),
    ]
    dedup = preset.near_duplicates
    if dedup is None:
        return [("rules", rules, tasks)]
    signatures = MinhashDedupSignature(
        output_folder=str(work / "signatures"),
        config=minhash_config(dedup),
        language=RegexWordTokenizer(),
    )
    return [("rules", [*rules, signatures], tasks), *near_duplicate_stages(work, dedup, tasks)]


def run_stages(
    work: Path, stage_list: list[Stage], workers: int, executor: str, console: Console
) -> None:
    """Each stage after the one before, its tasks on `executor`; a re-run skips the tasks
    datatrove recorded as done."""
    with ray_cluster(workers, console) if executor == "ray" else contextlib.nullcontext():
        for name, pipeline, n_tasks in stage_list:
            console.print(
                f"[bold]filter:[/bold] {name} ({n_tasks} task(s), {workers} worker(s), {executor})"
            )
            settings = {
                "pipeline": pipeline,
                "tasks": n_tasks,
                "workers": min(workers, n_tasks),
                "logging_dir": str(work / "logs" / name),
            }
            if executor == "ray":
                from datatrove.executor.ray import RayPipelineExecutor

                # A Ray job per worker, each running its share of the tasks: a job is a
                # process that imports the pipeline's code first, seconds each.
                share = -(-n_tasks // settings["workers"])
                RayPipelineExecutor(
                    **settings, cpus_per_task=1, mem_per_cpu_gb=1, tasks_per_job=share
                ).run()
            else:
                from datatrove.executor import LocalPipelineExecutor

                LocalPipelineExecutor(**settings).run()


@contextlib.contextmanager
def ray_cluster(workers: int, console: Console) -> Iterator[None]:
    """Connected to RAY_ADDRESS's cluster, or to one started here on loopback for the
    run (a CPU per worker, no dashboard), and disconnected after."""
    try:
        import ray
    except ImportError:
        raise TunerError(
            "filter: executor=ray needs Ray in the inference environment: "
            ".venvs/infer/bin/pip install 'ray==2.60.0' (or run executor=local)."
        ) from None
    address = os.environ.get("RAY_ADDRESS")
    began = time.time()
    with console.status(
        f"Connecting to the Ray cluster at {address}…"
        if address
        else f"Starting a Ray cluster here on loopback ({workers} CPUs)…"
    ):
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
            )
    try:
        yield
    finally:
        # A cluster started here ends with the run: its daemons (the raylet's agents
        # among them) can outlive ray.shutdown(), holding this process's output open.
        import psutil  # vLLM's and Ray's dependency

        started = [] if address else psutil.Process().children(recursive=True)
        ray.shutdown()
        if not address:
            # Agents the raylet started, orphaned by the time they are looked for: Ray's
            # processes that now belong to no one and began after this run's cluster.
            started += [
                process
                for process in psutil.process_iter(["name", "ppid", "create_time"])
                if process.info["name"].startswith("ray::")
                and process.info["ppid"] == 1
                and process.info["create_time"] >= began
            ]
        stop_processes(started)


def stop_processes(processes: list[Any]) -> None:
    """SIGTERM to those still running, SIGKILL to those left after ten seconds."""
    import psutil

    alive = [process for process in processes if process.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, left = psutil.wait_procs(alive, timeout=10)
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def documents(folder: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            yield from map(orjson.loads, handle)


def verify_near_duplicates(
    work: Path, dedup: NearDuplicates, kept_texts: dict[int, str]
) -> dict[str, dict[str, Any]]:
    """LSH finds candidates: pairs whose MinHash agrees on a whole band, which happens
    to pairs somewhat below the threshold too (its S-curve is not a step). Each record
    removed as a near-duplicate is checked against the record kept for its cluster
    with the exact Jaccard similarity of their word n-grams, and put back when it falls
    under the threshold. `kept_texts` holds the kept record's text by cluster. Returns
    the verdicts of the removed records."""
    clustered = {}
    for doc in documents(work / "rejected-near"):
        clustered.setdefault(doc["metadata"]["minhash_cluster_id"], []).append(doc)
    found = {}
    for cluster, docs in clustered.items():
        kept = ngram_keys(kept_texts[cluster], dedup.ngram)
        for doc in docs:
            similarity = jaccard(ngram_keys(doc["text"], dedup.ngram), kept)
            if similarity >= dedup.jaccard:
                found[doc["id"]] = {
                    "rejected_by": [NEAR_DUPLICATE],
                    "cluster": cluster,
                    "jaccard": round(similarity, 3),
                }
            else:
                found[doc["id"]] = {
                    "quality": doc["metadata"]["quality"],
                    "lsh_candidate": {"cluster": cluster, "jaccard": round(similarity, 3)},
                }
    return found


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def verdicts(work: Path, preset: FilterPreset) -> dict[str, dict[str, Any]]:
    """What each stage decided, by record id: {"quality": …} for a kept record,
    {"rejected_by": [...]} for a removed one, and the near-duplicate cluster if any."""
    found: dict[str, dict[str, Any]] = {
        key: {"rejected_by": [EXACT_DUPLICATE]}
        for key in json.loads((work / "exact.json").read_text())
    }
    for doc in documents(work / "rejected-rules"):
        found[doc["id"]] = {"rejected_by": doc["metadata"]["reasons"]}
    kept_texts: dict[int, str] = {}
    for doc in documents(work / ("kept" if preset.near_duplicates else "passed")):
        verdict = {"quality": doc["metadata"]["quality"]}
        cluster = doc["metadata"].get("minhash_cluster_id", -1)
        if cluster >= 0:
            verdict["cluster"] = cluster  # kept for its cluster
            kept_texts[cluster] = doc["text"]
        found[doc["id"]] = verdict
    if preset.near_duplicates:
        found |= verify_near_duplicates(work, preset.near_duplicates, kept_texts)
    return found


def write_outputs(
    out: Path,
    work: Path,
    preset: FilterPreset,
    tiers: list[int],
    options: dict[str, Any],
    inputs: list[Path],
) -> report.FilterStats:
    """The input records again, each with its verdict under meta.filter, into kept.jsonl
    or rejected.jsonl; then the tiers, stats.json and the chart."""
    decided = verdicts(work, preset)
    kept, rejected = [], []
    for file_index, path in enumerate(inputs):
        for number, raw in text_lines(path):
            record = orjson.loads(raw)
            verdict = decided.pop(record_id(file_index, number))
            record["meta"] = {**(record.get("meta") or {}), "filter": verdict}
            (rejected if "rejected_by" in verdict else kept).append(record)
    assert not decided, f"verdicts for records that are not in the input: {list(decided)[:3]}"
    write_records(out / "kept.jsonl", kept)
    write_records(out / "rejected.jsonl", rejected)
    tier_files = report.write_tiers(out, kept, tiers)
    stats = report.statistics(
        output=out,
        inputs=[str(p) for p in inputs],
        kept_records=kept,
        rejected=rejected,
        preset=preset,
        options={k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
        tiers=tier_files,
    )
    (out / "stats.json").write_text(stats.to_json())
    report.removals_chart(stats, out / "removals.png")
    shutil.rmtree(work)
    return stats
