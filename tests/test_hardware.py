"""The machine check before training. No GPU runs here: the detected devices are given
as data (what torch.cuda would report on such a machine), the check itself is real."""

from __future__ import annotations

import pytest

from tuner.errors import TunerError
from tuner.hardware import DetectedGpu, GpuProfile, check_machine, detect_gpus, gpu_profile
from tuner.recipes import compose

A100 = DetectedGpu("NVIDIA A100-SXM4-80GB", "8.0", 79.2)
T4 = DetectedGpu("Tesla T4", "7.5", 14.6)
RTX4090 = DetectedGpu("NVIDIA GeForce RTX 4090", "8.9", 23.6)


def profile(hardware: str) -> GpuProfile:
    return gpu_profile(compose("math", hardware).meta, hardware)


def test_every_gpu_overlay_has_a_valid_profile_and_cpu_has_none():
    for hardware in ("t4", "a100", "dgx-spark", "4090x8"):
        assert profile(hardware).sm.startswith("sm_")
    assert profile("cpu") is None
    assert profile("t4").axolotl_capabilities()["bf16"] is False
    assert profile("a100").axolotl_capabilities()["compute_capability"] == "sm_80"


def test_this_cpu_machine_is_refused_for_a_gpu_overlay_with_what_to_do():
    assert detect_gpus() == []
    with pytest.raises(TunerError, match=r"no CUDA GPU.*just train TASK cpu"):
        check_machine("a100", profile("a100"), detect_gpus())


def test_a100_overlay_on_a_t4_is_refused():
    with pytest.raises(TunerError, match=r"written for 1 × NVIDIA A100.*Tesla T4 \(7.5\)"):
        check_machine("a100", profile("a100"), [T4])


def test_4090x8_needs_all_eight_cards():
    with pytest.raises(TunerError, match="8 × NVIDIA GeForce RTX 4090"):
        check_machine("4090x8", profile("4090x8"), [RTX4090] * 4)
    check_machine("4090x8", profile("4090x8"), [RTX4090] * 8)


def test_matching_card_passes():
    check_machine("a100", profile("a100"), [A100])


def test_a_card_with_the_right_architecture_but_less_memory_is_refused():
    a30 = DetectedGpu("NVIDIA A30", "8.0", 23.5)  # Ampere sm_80 like the A100, 24 GB
    with pytest.raises(TunerError, match=r"plans for 40 GiB per card; NVIDIA A30 has 23\.5"):
        check_machine("a100", profile("a100"), [a30])


def test_a_broken_profile_names_the_file():
    with pytest.raises(TunerError, match=r"recipes/hardware/x.yaml: `tuner.gpu`"):
        gpu_profile(
            {"gpu": {"name": "X", "compute_capability": "eight"}}, "recipes/hardware/x.yaml"
        )


@pytest.mark.parametrize(
    ("hardware", "launcher"),
    [
        ("4090x8", ["--launcher", "accelerate", "--", "--num_processes", "8"]),
        ("a100", ["--launcher", "python"]),
        ("cpu", ["--launcher", "python"]),
    ],
)
def test_one_process_per_gpu_of_a_multi_gpu_target_else_axolotls_own(hardware, launcher):
    from tuner.launch import launcher_args, multi_process

    recipe = compose("math", hardware)
    assert launcher_args(recipe) == launcher
    assert multi_process(recipe) == (hardware == "4090x8")
