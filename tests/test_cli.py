"""The command line as a user meets it: output, files written, and errors."""

from __future__ import annotations

import yaml

from tests.conftest import run_tuner


def test_config_prints_and_writes_the_composed_axolotl_yaml(tmp_path):
    runs = tmp_path / "runs"
    done = run_tuner("config", "math", "a100", "lora_r=64", runs=runs)
    assert done.returncode == 0, done.stderr
    written = (runs / "math-a100" / "config.yaml").read_text()
    assert written == done.stdout
    config = yaml.safe_load(written)
    assert config["lora_r"] == 64 and config["bf16"] is True and "tuner" not in config
    assert "math × a100: valid" in done.stderr


def test_config_of_an_invalid_combination_says_why_and_fails(tmp_path):
    done = run_tuner("config", "math", "t4", "bf16=true", runs=tmp_path)
    assert done.returncode == 1
    assert "bf16: Tesla T4 (sm_75) has no native bf16" in done.stderr


def test_unknown_task_is_a_one_paragraph_error_listing_valid_names(tmp_path):
    done = run_tuner("train", "maths", "cpu", runs=tmp_path)
    assert done.returncode == 2
    assert "Unknown task 'maths'. Valid task names: chat, code" in done.stderr
    assert "Traceback" not in done.stderr


def test_training_for_a_gpu_target_on_this_cpu_machine_is_refused_cleanly(tmp_path):
    done = run_tuner("train", "math", "a100", runs=tmp_path)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "Traceback" not in done.stderr


def test_dpo_before_its_sft_run_says_which_run_to_make_first(tmp_path):
    done = run_tuner("train", "dpo", "cpu", runs=tmp_path)
    assert done.returncode == 2
    assert "just train instruction cpu" in done.stderr


def test_validate_prints_the_fifty_pair_table():
    done = run_tuner("validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "50 of 50 task × hardware pairs valid." in done.stdout


def test_list_shows_tasks_with_their_suites():
    done = run_tuner("list")
    assert done.returncode == 0
    assert "tool-use" in done.stdout and "4090x8" in done.stdout
