"""Every pair validates with Axolotl's own schema; the project's checks catch what it lacks."""

from __future__ import annotations

import pytest

from tuner.recipes import compose, hardware_names, task_names
from tuner.validation import validate

PAIRS = [(t, h) for t in task_names() for h in hardware_names()]


@pytest.mark.parametrize(("task", "hardware"), PAIRS, ids=[f"{t}-{h}" for t, h in PAIRS])
def test_every_task_hardware_pair_validates(task, hardware):
    report = validate(compose(task, hardware))
    assert report.ok, report.summary()


def problems(task: str, hardware: str, *overrides: str) -> list[str]:
    return [str(p) for p in validate(compose(task, hardware, list(overrides))).problems]


def test_bf16_on_a_t4_is_refused():
    [problem] = problems("math", "t4", "bf16=true", "fp16=false")
    assert problem.startswith("bf16:") and "no native bf16" in problem


def test_a_misspelt_key_is_reported_with_the_nearest_valid_one():
    [problem] = problems("math", "a100", "lora_rr=32")
    assert "lora_rr" in problem and "Did you mean 'lora_r'?" in problem


def test_a_misspelt_dataset_key_is_reported_with_its_position():
    found = problems(
        "chat", "a100", "datasets=[{path: x/y, type: chat_template, feild_messages: m}]"
    )
    assert found == [
        "datasets[0].feild_messages: not an Axolotl config key, Axolotl would ignore it. "
        "Did you mean 'field_messages'?"
    ]


@pytest.mark.parametrize("hardware", ["t4", "dgx-spark"])
def test_flash_attention_where_no_build_exists_is_refused(hardware):
    found = problems("chat", hardware, "attn_implementation=flash_attention_2")
    assert any(p.startswith("attn_implementation:") and "no build" in p for p in found)


def test_legacy_flash_attention_flag_is_caught_too():
    found = problems("chat", "t4", "attn_implementation=null", "flash_attention=true")
    assert any("FlashAttention" in p for p in found)


def test_deepspeed_on_the_dgx_spark_is_refused():
    [problem] = problems("math", "dgx-spark", "deepspeed=recipes/deepspeed/zero2.json")
    assert problem.startswith("deepspeed:")


def test_packing_without_a_varlen_attention_kernel_is_refused():
    [problem] = problems("math", "dgx-spark", "sample_packing=true")
    assert problem.startswith("sample_packing:") and "sdpa" in problem


def test_axolotl_own_validation_runs_with_the_targets_capabilities():
    # Axolotl itself refuses packing for RLHF; the message comes from its schema.
    [problem] = problems("dpo", "a100", "sample_packing=true")
    assert problem.startswith("axolotl:") and "does not work with RLHF" in problem


@pytest.mark.parametrize(
    ("hardware", "attention"),
    [("a100", "flash_attention_2"), ("t4", "xformers"), ("t4", "flex_attention")],
)
def test_an_attention_backend_the_image_has_no_kernels_for_is_refused(hardware, attention):
    found = problems("math", hardware, f"attn_implementation={attention}")
    assert any(
        p.startswith("attn_implementation:") and f"no kernels in the {hardware} image" in p
        for p in found
    ), found


def test_the_cpu_target_runs_outside_any_gpu_image_whatever_its_attention():
    assert problems("math", "cpu", "attn_implementation=eager") == []


@pytest.mark.parametrize(
    ("override", "key", "bound"),
    [
        ("lora_r=-4", "lora_r", "greater than or equal to 1"),
        ("lora_dropout=1.5", "lora_dropout", "less than 1"),
        ("learning_rate=0", "learning_rate", "greater than 0"),
        ("micro_batch_size=0", "micro_batch_size", "greater than or equal to 1"),
        ("gradient_accumulation_steps=abc", "gradient_accumulation_steps", "valid integer"),
    ],
)
def test_values_axolotl_leaves_unbounded_are_range_checked(override, key, bound):
    report = validate(compose("math", "a100", [override]))
    assert [p.key for p in report.problems] == [key]
    assert bound in report.problems[0].message


@pytest.mark.parametrize(
    "plugins", ["[nonexistent.Plugin]", "[tuner.recipes.NoSuchPlugin]", "[7]", "[{a: 1}]"]
)
def test_a_plugin_that_does_not_load_is_a_problem_named_by_its_place(plugins, capfd):
    report = validate(compose("math", "a100", [f"plugins={plugins}"]))
    [problem] = report.problems
    assert problem.key == "plugins[0]" and "does not load as an Axolotl plugin" in problem.message
    assert "Traceback" not in capfd.readouterr().err  # Axolotl's registry prints one
