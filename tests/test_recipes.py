"""Composition: base, task, overlay, task requirements, then user overrides."""

from __future__ import annotations

import pytest
import yaml

from tuner.errors import TunerError
from tuner.project import ROOT
from tuner.recipes import (
    compose,
    deep_merge,
    hardware_names,
    load_task,
    local_data_files,
    parse_overrides,
    task_names,
)

TASKS = [
    "chat", "code", "creative", "dpo", "instruction",
    "legal", "math", "medical", "micro-judge", "pretrain", "summarization", "tool-use",
]  # fmt: skip
HARDWARE = ["4090x8", "a100", "cpu", "dgx-spark", "t4"]


def test_twelve_tasks_and_five_targets_are_shipped():
    assert task_names() == TASKS
    assert hardware_names() == HARDWARE


def test_deep_merge_later_layer_wins_mappings_merge_lists_replace():
    base = {"a": 1, "nested": {"x": 1, "y": 2}, "items": [1, 2, 3]}
    over = {"a": 2, "nested": {"y": 3}, "items": [9]}
    assert deep_merge(base, over) == {"a": 2, "nested": {"x": 1, "y": 3}, "items": [9]}
    assert base["nested"] == {"x": 1, "y": 2}, "inputs are not modified"


def test_overrides_are_typed_yaml_values_and_dotted_keys_nest():
    parsed = parse_overrides(
        ["lora_r=32", "bf16=false", "base_model=org/model", "a.b=[1, 2]", "empty="]
    )
    assert parsed == {
        "lora_r": 32,
        "bf16": False,
        "base_model": "org/model",
        "a": {"b": [1, 2]},
        "empty": None,
    }


@pytest.mark.parametrize("bad", ["lora_r", "=3", "x=[unclosed"])
def test_malformed_override_names_itself(bad):
    with pytest.raises(TunerError, match="Override"):
        parse_overrides([bad])


def test_overlay_wins_over_task_and_user_wins_over_both():
    recipe = compose("math", "t4", ["micro_batch_size=3"])
    assert recipe.config["sequence_len"] == 1024  # from the task
    assert recipe.config["fp16"] is True and recipe.config["bf16"] is False  # from t4
    assert recipe.config["adapter"] == "qlora"  # t4 replaces base.yaml's lora
    assert recipe.config["micro_batch_size"] == 3  # the user's word is last


def test_metadata_is_stripped_but_kept_beside_the_config():
    recipe = compose("tool-use", "4090x8")
    assert "tuner" not in recipe.config
    assert recipe.meta["suite"] == "tool-use"
    assert recipe.env == {"NCCL_P2P_DISABLE": "1"}
    assert recipe.meta["gpu"]["count"] == 8


def test_task_requirements_beat_the_overlay():
    assert compose("instruction", "a100").config["sample_packing"] is True
    assert compose("dpo", "a100").config["sample_packing"] is False


def test_cpu_overlay_uses_embedded_model_and_local_data_read_like_the_real_set():
    task = load_task("tool-use")
    recipe = compose("tool-use", "cpu")
    assert recipe.config["base_model"].endswith(".cache/models/SmolLM2-135M-Instruct")
    [local] = recipe.config["datasets"]
    assert local["path"] == "./recipes/data/tool-use.jsonl" and local["ds_type"] == "json"
    real = task["datasets"][0]
    for key in ("type", "field_messages", "message_property_mappings", "roles"):
        assert local[key] == real[key]
    assert "data_files" not in local


def test_dpo_starts_from_the_instruction_sft_model_of_the_same_hardware(runs):
    recipe = compose("dpo", "a100")
    assert recipe.starts_from == "instruction"
    assert recipe.config["base_model"] == str(runs / "instruction-a100" / "merged")
    assert recipe.config["rl"] == "dpo"
    assert compose("dpo", "a100", ["base_model=my/sft"]).config["base_model"] == "my/sft"


def test_run_paths_live_in_the_run_folder(runs):
    recipe = compose("code", "dgx-spark")
    assert recipe.config["output_dir"] == str(runs / "code-dgx-spark")
    assert recipe.config["dataset_prepared_path"] == str(runs / "code-dgx-spark" / "prepared")


def test_default_run_paths_are_relative_to_the_repository(monkeypatch):
    monkeypatch.delenv("TUNER_RUNS", raising=False)
    assert compose("math", "a100").config["output_dir"] == "./runs/math-a100"


def test_composed_yaml_round_trips_and_names_its_layers():
    recipe = compose("summarization", "a100", ["lora_r=8"])
    text = recipe.to_yaml()
    assert yaml.safe_load(text) == recipe.config
    assert "recipes/tasks/summarization.yaml" in text and "overrides: lora_r" in text


@pytest.mark.parametrize(
    ("task", "hardware", "listed"),
    [("mathematics", "a100", "math, medical"), ("math", "h100", "4090x8, a100, cpu")],
)
def test_unknown_names_list_the_valid_ones(task, hardware, listed):
    with pytest.raises(TunerError, match="Valid .* names: .*" + listed):
        compose(task, hardware)


def test_every_task_names_a_hub_model_a_suite_and_a_local_dataset():
    for name in TASKS:
        task = load_task(name)
        meta = task["tuner"]
        assert meta["suite"] and meta["description"]
        files = local_data_files(meta)
        assert files
        for path in files:
            assert (ROOT / path).is_file(), path
        for dataset in task["datasets"]:
            assert "/" in dataset["path"], "a hub dataset id (org/name)"
        if name != "dpo":
            assert "/" in task["base_model"]
