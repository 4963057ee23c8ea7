"""The filter stage: each rule on crafted examples, then the whole datatrove pipeline
(two workers) on records with planted exact and near duplicates, contamination and bad
input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from tuner.errors import TunerError
from tuner.filter.rules import QualityRules, load_preset, longest_run, repeated_ngram_ratio
from tuner.filter.run import filter_records
from tuner.filter.synthetic import SyntheticCorpus, english_words
from tuner.models import ensure_embedded_model
from tuner.project import ROOT
from tuner.records import write_records

QUIET = Console(quiet=True)
GOOD_QUESTION = "How do plants turn sunlight into the energy they need to grow?"
GOOD_ANSWER = (
    "Plants capture sunlight with chlorophyll in their leaves. During photosynthesis they "
    "use that light energy to combine carbon dioxide from the air with water from the soil, "
    "producing glucose and releasing oxygen. The glucose fuels growth and is stored as starch."
)

OTHER_ANSWER = (
    "Water moves up from the roots through narrow tubes called xylem, pulled by the "
    "evaporation of water from tiny pores in the leaves, while sugars made in the leaves "
    "travel down to the roots and fruit through the phloem."
)


@pytest.fixture(scope="module")
def rules() -> QualityRules:
    return QualityRules(load_preset("default"))


def test_helpers_match_hand_computations():
    assert longest_run(["a", "b", "b", "b", "c", "c"]) == 3
    assert longest_run([]) == 0
    # 3-grams of "a b c a b c a": abc bca cab abc bca -> 5 grams, 3 distinct
    assert repeated_ngram_ratio(["a", "b", "c", "a", "b", "c", "a"], 3) == pytest.approx(1 - 3 / 5)
    assert repeated_ngram_ratio(["a", "b"], 3) == 0.0


def test_a_good_conversation_passes_with_a_high_score(rules):
    reasons, score = rules.reasons(GOOD_QUESTION, GOOD_ANSWER)
    assert reasons == []
    assert 0.7 < score <= 1.0


@pytest.mark.parametrize(
    ("instruction", "response", "reason"),
    [
        ("Why?", GOOD_ANSWER, "instruction length"),
        (GOOD_QUESTION, "Because of light.", "response length"),
        (
            GOOD_QUESTION,
            GOOD_ANSWER + " It is very very very very important.",
            "consecutive repetition",
        ),
        (GOOD_QUESTION, "Plants grow in the sun. " * 12, "n-gram repetition"),
        (GOOD_QUESTION, "I\u2019m not able to explain biology, but " + GOOD_ANSWER, "refusal"),
        (GOOD_QUESTION, "As an AI language model I cannot help. " + GOOD_ANSWER, "refusal"),
        (
            "Comment les plantes transforment-elles la lumière du soleil en énergie ?",
            "Les plantes captent la lumière grâce à la chlorophylle de leurs feuilles et "
            "fabriquent du glucose à partir du dioxyde de carbone et de l'eau.",
            "language",
        ),
    ],
)
def test_each_rule_rejects_its_case_and_names_itself(rules, instruction, response, reason):
    reasons, _ = rules.reasons(instruction, response)
    assert reason in reasons


def test_every_failed_rule_is_listed(rules):
    reasons, _ = rules.reasons("Hi", "As an AI I cannot cannot cannot cannot help.")
    assert {"instruction length", "response length", "consecutive repetition", "refusal"} <= set(
        reasons
    )


def test_a_rule_set_to_null_is_off(tmp_path: Path):
    preset = tmp_path / "lenient.yaml"
    preset.write_text("response_words: {min: 1, max: 5}\n")
    reasons, _ = QualityRules(load_preset(str(preset))).reasons("Why?", "As an AI I cannot.")
    assert reasons == []


def test_an_unknown_preset_lists_the_presets():
    with pytest.raises(TunerError, match="Presets: default"):
        load_preset("strictest")


def conversation(question: str, answer: str, key: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "meta": {"id": key},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """40 distinct records, 3 near-copies (one word of ~80 changed), 2 exact copies, and
    one record for each of three rules; returns the file and the expected verdicts."""
    words = english_words(ensure_embedded_model() / "tokenizer.json")
    rules = QualityRules(load_preset("default"))

    def passes(record: dict) -> bool:
        return not rules.reasons(*(m["content"] for m in record["messages"]))[0]

    # Random words are English to fastText only most of the time: keep those that pass
    # every rule, so that only the planted cases are removed.
    generated = SyntheticCorpus(words, seed=3).generate(80, near_share=0, exact_share=0)
    records = [record for record, _ in generated if passes(record)][:40]
    assert len(records) == 40
    for index, record in enumerate(records):
        record["meta"]["id"] = f"distinct-{index}"
    expected: dict[str, set[str]] = {}
    near = []
    for source in records:
        answer = source["messages"][1]["content"].split()
        answer[len(answer) // 2] = "zebra"
        copy = conversation(source["messages"][0]["content"], " ".join(answer), f"near-{len(near)}")
        copy["meta"]["copy_of"] = source["meta"]["id"]
        if passes(copy):
            near.append((source, copy))
        if len(near) == 3:
            break
    for _, copy in near:
        records.append(copy)
        expected[copy["meta"]["id"]] = {"near duplicate"}
    for i, source in enumerate(records[3:5]):
        records.append({**source, "meta": {"id": f"exact-{i}"}})
        expected[f"exact-{i}"] = {"exact duplicate"}
    records.append(conversation("Why?", OTHER_ANSWER, "short"))
    expected["short"] = {"instruction length"}
    records.append(conversation(GOOD_QUESTION, "I cannot answer that. " + OTHER_ANSWER, "refusal"))
    expected["refusal"] = {"refusal"}
    records.append(conversation(GOOD_QUESTION, GOOD_ANSWER, "contaminated"))
    expected["contaminated"] = {"contamination"}
    path = tmp_path_factory.mktemp("corpus") / "records.jsonl"
    write_records(path, records)
    return path, expected


@pytest.fixture(scope="module")
def filtered(corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path, _ = corpus
    eval_set = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    # An evaluation item that quotes 13+ words of one record's answer.
    eval_set.write_text(json.dumps({"question": GOOD_ANSWER[:120], "answer": "B"}) + "\n")
    out = path.parent / "out"
    stats = filter_records(
        str(path), [f"out={out}", "workers=2", f"against={eval_set}", "tiers=5,10"], QUIET
    )
    return out, stats


def by_id(path: Path) -> dict[str, dict]:
    return {r["meta"]["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_the_pipeline_removes_what_it_should_and_keeps_the_rest(corpus, filtered):
    _, expected = corpus
    out, _ = filtered
    kept, rejected = by_id(out / "kept.jsonl"), by_id(out / "rejected.jsonl")
    for key, reasons in expected.items():
        assert key in rejected, key
        assert set(rejected[key]["meta"]["filter"]["rejected_by"]) == reasons, key
    # Every distinct record is kept, including the sources of the near and exact copies.
    assert {f"distinct-{i}" for i in range(40)} == set(kept)
    assert all(0 <= r["meta"]["filter"]["quality"] <= 1 for r in kept.values())


def test_near_duplicates_share_a_cluster_with_the_record_kept_for_them(filtered):
    out, _ = filtered
    kept, rejected = by_id(out / "kept.jsonl"), by_id(out / "rejected.jsonl")
    for i in range(3):
        copy = rejected[f"near-{i}"]["meta"]
        source = kept[copy["copy_of"]]
        assert source["meta"]["filter"]["cluster"] == copy["filter"]["cluster"]
        assert copy["filter"]["jaccard"] >= 0.8


def test_the_statistics_add_up(filtered):
    out, stats = filtered
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    kept = (out / "kept.jsonl").read_text().splitlines()
    assert stats.input_records == 48 == len(kept) + len(rejected)
    assert stats.kept == len(kept) and stats.rejected == len(rejected)
    counted = {}
    for record in rejected:
        for reason in record["meta"]["filter"]["rejected_by"]:
            counted[reason] = counted.get(reason, 0) + 1
    assert stats.removed_by_rule == counted
    assert json.loads((out / "stats.json").read_text())["removed_by_rule"] == counted
    assert (out / "removals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "work").exists()


def test_tiers_hold_the_top_records_by_quality(filtered):
    out, stats = filtered
    top5 = [json.loads(line) for line in (out / "top-5.jsonl").read_text().splitlines()]
    top10 = [json.loads(line) for line in (out / "top-10.jsonl").read_text().splitlines()]
    assert len(top5) == 5 and len(top10) == 10
    assert top10[:5] == top5
    scores = [r["meta"]["filter"]["quality"] for r in top10]
    assert scores == sorted(scores, reverse=True)
    everything = [json.loads(x)["meta"]["filter"]["quality"] for x in (out / "kept.jsonl").open()]
    assert scores[0] == max(everything)
    assert set(stats.tiers) == {"5", "10"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"',
            "bad.jsonl:2: not valid JSON",
        ),
        (
            '{"text": "no messages here"}',
            "bad.jsonl:2: not a Conversation record (messages: Field required",
        ),
    ],
)
def test_malformed_input_names_the_line_and_loses_no_earlier_output(
    filtered, tmp_path: Path, content: str, message: str
):
    out, _ = filtered
    before = (out / "kept.jsonl").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(conversation(GOOD_QUESTION, GOOD_ANSWER, "ok")) + "\n" + content + "\n"
    )
    with pytest.raises(TunerError, match=re.escape(message)):
        filter_records(str(bad), [f"out={out}"], QUIET)
    assert (out / "kept.jsonl").read_bytes() == before


def test_a_refused_input_leaves_no_folder_behind(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(conversation(GOOD_QUESTION, GOOD_ANSWER, "ok"))
    bad.write_bytes((good + "\n").encode() * 3 + b'{"messages": [{"content": "\xff"}]}\n')
    with pytest.raises(TunerError, match=r"bad\.jsonl:4: not UTF-8"):
        filter_records(str(bad), [], QUIET)
    assert not (tmp_path / "bad.filtered").exists()


def test_an_empty_input_is_an_error(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TunerError, match=r"empty\.jsonl: no records to filter"):
        filter_records(str(empty), [f"out={tmp_path / 'out'}"], QUIET)


def test_lsh_candidates_under_the_threshold_are_put_back(tmp_path: Path):
    """A preset whose LSH flags pairs far below 0.8 (20 bands of 2 hashes): a pair with
    half its word 5-grams in common is a candidate, and the exact check keeps both."""
    words = english_words(ensure_embedded_model() / "tokenizer.json")
    generator = SyntheticCorpus(words, seed=5)
    records = [record for record, _ in generator.generate(10, near_share=0, exact_share=0)]
    answer = records[0]["messages"][1]["content"].split()
    half = answer[: len(answer) // 2] + generator.sentence(len(answer) // 2, len(answer) // 2)
    records.append(conversation(records[0]["messages"][0]["content"], " ".join(half), "half"))
    source = tmp_path / "records.jsonl"
    write_records(source, records)
    preset = tmp_path / "loose.yaml"
    default = load_preset("default").model_dump(exclude={"near_duplicates"})
    preset.write_text(
        json.dumps(
            default
            | {
                "near_duplicates": {
                    "jaccard": 0.8,
                    "ngram": 5,
                    "buckets": 20,
                    "hashes_per_bucket": 2,
                }
            }
        )
    )
    stats = filter_records(str(source), [f"out={tmp_path / 'out'}", f"preset={preset}"], QUIET)
    kept = by_id(tmp_path / "out" / "kept.jsonl")
    assert "near duplicate" not in stats.removed_by_rule
    assert "synthetic-0000000" in kept
    candidate = kept["half"]["meta"]["filter"]["lsh_candidate"]
    assert 0.2 < candidate["jaccard"] < 0.8


def test_by_default_records_quoting_a_local_evaluation_set_are_removed(tmp_path):
    """Without against=, the suites' local evaluation sets (evaluate/fixtures/, HumanEval)
    are the decontamination reference; against=none turns it off."""
    fixture = json.loads(
        (ROOT / "evaluate/fixtures/summarization.jsonl").read_text().split("\n")[0]
    )
    records = [
        conversation(f"Summarise this article please: {fixture['article']}", GOOD_ANSWER, "leak"),
        conversation(GOOD_QUESTION, GOOD_ANSWER, "clean"),
    ]
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    stats = filter_records(str(path), [f"out={tmp_path / 'default'}", "workers=1"], QUIET)
    assert stats.removed_by_rule == {"contamination": 1}
    rejected = json.loads((tmp_path / "default" / "rejected.jsonl").read_text())
    assert rejected["meta"]["id"] == "leak"
    assert any(str(p).endswith("HumanEval.jsonl.gz") for p in stats.options["against"])
    off = filter_records(str(path), [f"out={tmp_path / 'off'}", "workers=1", "against=none"], QUIET)
    assert off.kept == 2


def test_publish_data_of_filtered_records_gives_the_filter_and_decontamination(
    filtered, cli, monkeypatch
):
    """Records not generated here name no generator, so no license to inherit: the user
    gives one. Nothing is written before that."""
    from huggingface_hub import DatasetCard

    monkeypatch.delenv("HF_TOKEN", raising=False)  # the Hub is out of reach here
    out, stats = filtered
    kept = out / "kept.jsonl"
    refused = cli("publish-data", str(kept), "repo=test/filtered")
    assert refused.returncode == 2 and "license=apache-2.0" in refused.stderr
    assert not kept.with_suffix(".publish").exists()
    done = cli("publish-data", str(kept), "repo=test/filtered", "license=cc-by-4.0")
    assert done.returncode == 0, done.stderr
    card = DatasetCard.load(kept.with_suffix(".publish") / "README.md")
    assert card.data.license == "cc-by-4.0"
    assert f"kept {stats.kept} of {stats.input_records}" in card.text
    assert "Decontamination: 1 removed for overlapping the evaluation sets eval.jsonl" in card.text


@pytest.mark.slow
def test_the_ray_executor_keeps_what_the_local_executor_keeps(corpus, filtered, tmp_path):
    """`just filter … executor=ray workers=2`: the same datatrove steps as Ray tasks on a
    cluster started on loopback for the run (Ray lives in the inference environment,
    where the Justfile runs the filter)."""
    from tests.infer_env import run_infer

    path, _ = corpus
    local_out, local_stats = filtered
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(json.dumps({"question": GOOD_ANSWER[:120], "answer": "B"}) + "\n")
    out = tmp_path / "ray"
    done = run_infer(
        "filter", str(path), f"out={out}", "workers=2", f"against={eval_set}", "executor=ray"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "filter: rules (2 task(s), 2 worker(s), ray)" in done.stderr
    assert (out / "kept.jsonl").read_text() == (local_out / "kept.jsonl").read_text()
    assert json.loads((out / "stats.json").read_text())["removed_by_rule"] == (
        local_stats.removed_by_rule
    )


def test_the_slurm_executor_writes_a_job_array_per_stage_that_runs_as_slurm_would(corpus, tmp_path):
    """`executor=slurm dry_run=true`: datatrove's Slurm jobs, chained stage after stage,
    kept by the stand-in for sbatch. Slurm is not here: the first stage's job script is
    then run as Slurm runs an array, once per SLURM_ARRAY_TASK_ID, with a stand-in srun
    that runs its command and a stand-in scontrol that names this machine; datatrove
    records both tasks done."""
    import os
    import shutil
    import subprocess

    path, _ = corpus
    out = tmp_path / "out"
    base = [f"out={out}", "workers=2", "against=none", "executor=slurm"]
    with pytest.raises(TunerError, match="partition=NAME"):
        filter_records(str(path), base, QUIET)
    if shutil.which("sbatch") is None:
        with pytest.raises(TunerError, match="sbatch, which is not on this machine"):
            filter_records(str(path), [*base, "partition=debug"], QUIET)
    submitted = filter_records(str(path), [*base, "partition=debug", "dry_run=true"], QUIET)
    assert submitted.dry_run and submitted.job_ids
    stages = [s for s in submitted.scripts if "launch_pickled_pipeline" in s.read_text()]
    names = [re.search(r"--job-name=(\S+)", s.read_text())[1] for s in stages]
    assert names == [
        "filter-rules",
        "filter-minhash-buckets",
        "filter-minhash-clusters",
        "filter-remove-near-duplicates",
    ]
    first, second = (s.read_text() for s in stages[:2])
    assert "#SBATCH --partition=debug" in first and "#SBATCH --array=0-1%2" in first
    assert f"source {Path(os.sys.executable).with_name('activate')}" in first
    first_id = submitted.scripts.index(stages[0]) + 1  # the stand-in numbers them in order
    assert f"--dependency=afterok:{first_id}" in second.splitlines()[0]

    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "srun").write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # drops -l -n 1
    (stand_ins / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    for tool in stand_ins.iterdir():
        tool.chmod(0o755)
    for task in ("0", "1"):
        env = {**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}"}
        env |= {"SLURM_ARRAY_TASK_ID": task, "SLURM_NODELIST": "localhost"}
        ran = subprocess.run(["bash", str(stages[0])], env=env, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr[-2000:]
    assert sorted(p.name for p in (out / "work/logs/rules/completions").iterdir()) == [
        "00000",
        "00001",
    ]
