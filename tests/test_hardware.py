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


def test_several_machines_launch_through_torchrun_with_the_rendezvous_of_the_environment():
    from tuner.launch import launcher_args, rendezvous

    recipe = compose("math", "4090x8", ["nodes=2"])
    meeting = rendezvous(2, {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1"})
    assert launcher_args(recipe, meeting) == [
        "--launcher",
        "torchrun",
        "--",
        "--nnodes=2",
        "--nproc_per_node=8",
        "--node_rank=1",
        "--master_addr=10.0.0.1",
        "--master_port=29500",
    ]
    assert not meeting.primary and rendezvous(1, {}) is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "0"}, "MASTER_PORT is not set"),
        ({"MASTER_ADDR": "a", "MASTER_PORT": "x", "NODE_RANK": "0"}, "must be whole numbers"),
        ({"MASTER_ADDR": "a", "MASTER_PORT": "70000", "NODE_RANK": "0"}, "not a TCP port"),
        ({"MASTER_ADDR": "a", "MASTER_PORT": "29500", "NODE_RANK": "2"}, "must lie in 0..1"),
    ],
)
def test_a_missing_or_wrong_rendezvous_is_refused_with_what_to_set(env, named):
    from tuner.launch import rendezvous

    with pytest.raises(TunerError, match=named):
        rendezvous(2, env)


def test_the_planner_spreads_a_multi_node_run_over_every_device():
    from tuner.plan import make_plan

    one, two = (make_plan("math", "4090x8", ["adapter=null", f"nodes={n}"]) for n in (1, 2))
    assert (one.devices, two.devices) == (8, 16)
    # ZeRO-3 (the overlay's for full weights) shards over all 16 cards; data parallel
    # halves the steps; the price counts both machines.
    assert two.memory.allocated < one.memory.allocated
    assert two.steps == pytest.approx(one.steps / 2, abs=1)
    assert two.cost == pytest.approx(one.cost, rel=0.01)


def test_full_weights_on_4090x8_shard_with_zero3_unless_the_user_says_otherwise():
    assert compose("math", "4090x8", ["adapter=null"]).config["deepspeed"].endswith("zero3.json")
    assert compose("math", "4090x8").config["deepspeed"].endswith("zero2.json")
    kept = compose("pretrain", "4090x8", ["deepspeed=recipes/deepspeed/zero2.json"])
    assert kept.config["deepspeed"].endswith("zero2.json")
