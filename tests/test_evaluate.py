"""Suites, the project's lm-eval tasks, scoring and the comparison arithmetic (fast; the
runs of lm-eval on the embedded model are in test_demo.py and
test_judged_and_code_suites.py)."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from tests.infer_env import infer_json, run_infer
from tuner.errors import TunerError
from tuner.evaluate import suites
from tuner.evaluate.compare import compare, markdown_table, paired_stderr, rich_table
from tuner.evaluate.diversity import distinct_n, distinct_n_with_stderr
from tuner.evaluate.harness import Engine, ModelUnderTest, lm_eval_command
from tuner.evaluate.report import write_report
from tuner.evaluate.scoring import tool_call_scores
from tuner.recipes import load_task, task_names

# ---- suites -------------------------------------------------------------------------


def test_every_task_names_a_suite_that_loads_with_both_variants():
    for task in task_names():
        name = load_task(task)["tuner"]["suite"]
        suite = suites.load_suite(name)
        assert suite.full.benchmarks and suite.local.benchmarks, name


def test_every_local_benchmark_is_a_project_task_on_local_data():
    defined = {}
    for path in suites.TASKS_DIR.glob("*.yaml"):
        config = yaml.safe_load(path.read_text().replace("!function", ""))
        defined[config["task"]] = config
    for name in suites.suite_names():
        local = suites.load_suite(name).local
        for benchmark in local.on("agreement"):
            assert (suites.ROOT / str(benchmark.data)).is_file(), (name, benchmark.data)
        for benchmark in local.on("lm-eval"):
            assert benchmark.task in defined, (name, benchmark.task)
            files = (defined[benchmark.task].get("dataset_kwargs") or {}).get("data_files")
            if files:
                assert (suites.ROOT / files).is_file(), files


def test_lm_eval_knows_every_benchmark_of_every_suite():
    """lm-eval's own task index (the inference environment's version), with the
    project's tasks included: a misspelt task name fails here, not on a rented GPU."""
    script = (
        "import json; from lm_eval.tasks import TaskManager; "
        "from tuner.evaluate.suites import TASKS_DIR; "
        "index = lambda defaults: sorted(TaskManager(include_path=str(TASKS_DIR), "
        "include_defaults=defaults).all_tasks); "
        "print(json.dumps([index(True), index(False)]))"
    )
    known, own = map(set, infer_json(script))
    for name in suites.suite_names():
        suite = suites.load_suite(name)
        for benchmark in suite.full.on("lm-eval") + suite.local.on("lm-eval"):
            assert benchmark.task in known, (name, benchmark.task)
    # What the harness takes for the project's tasks is what lm-eval finds in its folder.
    assert suites.project_tasks() == own


def test_lm_eval_indexes_its_built_in_tasks_only_for_a_call_that_asks_for_one():
    engine, model = Engine("hf", "float32", cpu=True), ModelUnderTest("base", "m", "m")
    settings = suites.Settings()
    own = lm_eval_command(engine, model, ["tuner_ifeval", "tuner_math"], 0, settings, Path("o"))
    assert own[1:3] == ["-m", "tuner.evaluate.lm_eval_main"]
    mixed = lm_eval_command(engine, model, ["tuner_math", "gsm8k"], 0, settings, Path("o"))
    assert mixed[1:3] == ["-m", "lm_eval"]


@pytest.fixture
def suite_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    return tmp_path


def test_an_unknown_suite_lists_the_valid_ones(suite_dir):
    (suite_dir / "math.yaml").write_text("description: x\n")
    with pytest.raises(TunerError, match=r"No evaluation suite 'maths'.*Suites: math"):
        suites.load_suite("maths")


def test_a_malformed_suite_names_the_file_and_the_key(suite_dir):
    (suite_dir / "broken.yaml").write_text("description: [unclosed\n")
    with pytest.raises(TunerError, match=r"broken\.yaml is not valid YAML"):
        suites.load_suite("broken")
    (suite_dir / "typo.yaml").write_text(
        "description: x\nfull: {benchmarks: [{task: a, num_fewshots: 5}]}\n"
        "local: {benchmarks: [{task: b}]}\n"
    )
    with pytest.raises(TunerError, match=r"typo\.yaml: full\.benchmarks\.0\.num_fewshots"):
        suites.load_suite("typo")
    (suite_dir / "nojudge.yaml").write_text(
        "description: x\nfull: {benchmarks: [{task: a, judge: true}]}\n"
        "local: {benchmarks: [{task: b}]}\n"
    )
    with pytest.raises(TunerError, match=r"marks a for judging but has no `judge:`"):
        suites.load_suite("nojudge")


def test_eval_of_a_task_never_trained_says_what_to_run(tmp_path):
    done = run_infer("eval", "math", "cpu", runs=tmp_path)
    assert done.returncode == 2
    assert "holds no trained model" in done.stderr
    assert "just train math cpu" in done.stderr and "only=base" in done.stderr
    assert "Traceback" not in done.stderr


def test_eval_rejects_unknown_options_and_values(tmp_path):
    done = run_infer("eval", "math", "cpu", "limits=3", runs=tmp_path)
    assert done.returncode == 2 and "unknown option 'limits'" in done.stderr
    done = run_infer("eval", "math", "cpu", "backend=tgi", runs=tmp_path)
    assert done.returncode == 2 and "choose one of: vllm, hf" in done.stderr


# ---- scoring ------------------------------------------------------------------------


def test_tool_calls_are_scored_for_validity_name_and_exact_arguments():
    expected = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}
    call = '{"name": "get_weather", "arguments": {"unit": "celsius", "city": "Oslo"}}'
    exact = f"<tool_call>\n{call}\n</tool_call>"
    assert tool_call_scores(expected, exact) == {
        "json_valid": 1.0,
        "name_match": 1.0,
        "exact_match": 1.0,
    }
    wrong_args = '<tool_call>{"name": "get_weather", "arguments": {"city": "Bergen"}}</tool_call>'
    assert tool_call_scores(expected, wrong_args)["name_match"] == 1.0
    assert tool_call_scores(expected, wrong_args)["exact_match"] == 0.0
    assert tool_call_scores(expected, "It is sunny in Oslo.") == {
        "json_valid": 0.0,
        "name_match": 0.0,
        "exact_match": 0.0,
    }
    # Cut off by max_gen_toks before the closing tag: still read.
    assert tool_call_scores(expected, exact.removesuffix("\n</tool_call>"))["exact_match"] == 1.0


def test_rouge_of_a_copy_is_one_and_of_unrelated_text_near_zero():
    """In the inference environment, where lm-eval scores with it: rouge_score imports
    absl's logging, whose handler would keep this process's captured stderr after the
    test closes it (and break Axolotl's logging in later tests)."""
    script = (
        "import json; from tuner.evaluate.scoring import rouge_scores; "
        "r = 'Volunteers planted five thousand trees to reduce flooding.'; "
        "print(json.dumps([rouge_scores(r, r), rouge_scores(r, 'The cat sat on the mat.')]))"
    )
    same, unrelated = infer_json(script)
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert unrelated["rouge1"] < 0.1


def test_distinct_n_counts_unique_ngrams_over_all_answers():
    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    varied = ["the cat sat", "a dog ran far", "the the the", "one two"]
    value, stderr = distinct_n_with_stderr(varied, 1)
    assert value == pytest.approx(9 / 12) and stderr is not None and stderr > 0


# ---- comparison ---------------------------------------------------------------------


def results(values: dict[str, float], stderr: float | None = 0.1) -> dict:
    return {
        "tasks": {
            "t": {
                "samples": len(values),
                "metrics": {
                    "acc": {
                        "value": statistics.mean(values.values()),
                        "stderr": stderr,
                        "higher_is_better": True,
                        "per_sample": values,
                    }
                },
            }
        }
    }


def test_deltas_are_paired_over_the_same_documents():
    base = {"0": 0.0, "1": 1.0, "2": 0.0, "3": 1.0}
    tuned = {"0": 1.0, "1": 1.0, "2": 1.0, "3": 1.0}
    (row,) = compare(results(base), [results(tuned)])
    assert row.delta == pytest.approx(0.5)
    differences = [1.0, 0.0, 1.0, 0.0]
    assert row.delta_stderr == pytest.approx(statistics.stdev(differences) / 2)
    assert row.paired
    assert row.relative == pytest.approx(1.0)
    assert row.relative_stderr == pytest.approx(row.delta_stderr / 0.5)
    assert "| t | acc ↑ | 0.5 ± 0.1 | 1 ± 0.1 | 0.5 ± 0.29 | +100.0% ± 57.7% |" in markdown_table(
        [row]
    )


def test_each_delta_is_tested_and_the_table_says_it_is_one_training_run():
    rng = random.Random(0)
    base = {str(i): float(rng.random() < 0.3) for i in range(200)}
    tuned = {doc: 1.0 if value or rng.random() < 0.4 else 0.0 for doc, value in base.items()}
    first, second = results(base), results(tuned)
    # A second task on which the tuned model answers exactly as the base did.
    first["tasks"]["u"] = second["tasks"]["u"] = results(base)["tasks"]["t"]
    better, same = compare(first, [second])
    # 200 documents, +0.28 paired: a z of about 9; the bootstrap's floor is 1/2001.
    assert better.delta == pytest.approx(0.28, abs=0.05)
    assert better.p_value < 0.001 and better.significant
    assert same.p_value == 1.0 and not same.significant
    # Benjamini-Hochberg over the two rows: the smaller p-value times 2 over its rank, 1.
    assert better.p_adjusted == pytest.approx(better.p_value * 2)
    table = markdown_table([better, same])
    assert table.count(" *") == 1 and "One training run (a single seed)" in table
    # The terminal's table keeps a long task name whole, within 80 columns.
    long = replace(better, task="tuner_perplexity_instruction", metric="word_perplexity")
    console = Console(width=80, record=True)
    console.print(rich_table([long, same], "title"))
    printed = console.export_text()
    assert max(len(line) for line in printed.splitlines()) <= 80
    assert "tuner_perplexity_instruction" in printed and f"{better.delta:.4g} *" in printed


def test_without_shared_documents_the_standard_errors_combine():
    (row,) = compare(results({"0": 1.0}, 0.3), [results({"5": 0.0}, 0.4)])
    assert not row.paired
    assert row.delta_stderr == pytest.approx(0.5)
    assert paired_stderr({"0": 1.0}, {"0": 1.0}) is None
    assert math.isclose(row.delta, -1.0)


# ---- report -------------------------------------------------------------------------


def test_report_with_nothing_to_report_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TUNER_DATA", str(tmp_path / "data"))
    from rich.console import Console

    with pytest.raises(TunerError, match="Nothing to report"):
        write_report(None, Console())


def test_a_malformed_run_folder_is_named_in_the_report_error(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "math-cpu"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "comparison.json").write_text("{not json")
    monkeypatch.setenv("TUNER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TUNER_DATA", str(tmp_path / "data"))
    from rich.console import Console

    with pytest.raises(TunerError, match=r"math-cpu/eval/comparison\.json is not valid JSON"):
        write_report(None, Console())
