"""The command line as a user meets it: output, files written, and errors; in-process
through `tuner.cli.main` (the `cli` fixture), as `python -m tuner` runs it."""

from __future__ import annotations

import re

import pytest
import yaml

from tuner.cli import COMMANDS, build_parser, declared_options
from tuner.project import ROOT


def test_config_prints_and_writes_the_composed_axolotl_yaml(cli, runs):
    done = cli("config", "math", "a100", "lora_r=64")
    assert done.returncode == 0, done.stderr
    written = (runs / "math-a100" / "config.yaml").read_text()
    assert written == done.stdout
    config = yaml.safe_load(written)
    assert config["lora_r"] == 64 and config["bf16"] is True and "tuner" not in config
    assert "math × a100: valid" in done.stderr


def test_config_of_an_invalid_combination_says_why_and_fails(cli, runs):
    done = cli("config", "math", "t4", "bf16=true")
    assert done.returncode == 1
    assert "bf16: Tesla T4 (sm_75) has no native bf16" in done.stderr


def test_unknown_task_is_a_one_paragraph_error_listing_valid_names(cli, runs):
    done = cli("train", "maths", "cpu")
    assert done.returncode == 2
    assert "Unknown task 'maths'. Valid task names: chat, code" in done.stderr
    assert "Traceback" not in done.stderr


def test_training_for_a_gpu_target_on_this_cpu_machine_is_refused_cleanly(cli, runs):
    done = cli("train", "math", "a100")
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "Traceback" not in done.stderr


def test_dpo_before_its_sft_run_says_which_run_to_make_first(cli, runs):
    done = cli("train", "dpo", "cpu")
    assert done.returncode == 2
    assert "just train instruction cpu" in done.stderr


def test_validate_prints_the_table_of_every_pair(cli):
    done = cli("validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "60 of 60 task × hardware pairs valid." in done.stdout


def test_list_shows_tasks_with_their_suites(cli):
    done = cli("list")
    assert done.returncode == 0
    assert "tool-use" in done.stdout and "4090x8" in done.stdout


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.options], ids=lambda c: c.name)
def test_every_declared_option_is_in_its_commands_help(command):
    declared = declared_options(command.options)
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command")
    text = " ".join(subcommands.choices[command.name].format_help().split())
    for name, option in declared.items():
        assert f"{name}= {' '.join(option.doc.split())}" in text


def test_the_readme_table_lists_every_just_recipe_and_each_calls_a_command():
    justfile = (ROOT / "Justfile").read_text()
    recipes = set(re.findall(r"^([a-z][a-z-]*)\b[^:=\n]*:(?!=)", justfile, re.M)) - {"default"}
    table = set(re.findall(r"^\| `just ([a-z-]+)", (ROOT / "README.md").read_text(), re.M))
    assert recipes == table
    called = set(re.findall(r"-m tuner ([a-z-]+)", justfile))
    assert called <= {command.name for command in COMMANDS}
