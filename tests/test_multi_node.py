"""Training on several machines: the launch line with the rendezvous from the
environment, the refusals, the planner's spread over every device, ZeRO-3 for full
weights on 4090x8, and the Slurm batch job. The real launch on two "machines" over
loopback is in test_plumbing.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from tuner.errors import TunerError
from tuner.recipes import compose


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


def test_the_slurm_job_runs_train_on_every_node_with_the_rendezvous(runs, tmp_path, cli):
    """`just slurm math 4090x8 nodes=2`: the batch file parses, its directives ask for
    two exclusive machines of 8 GPUs, and run, it gives each machine the rendezvous.
    Slurm is not here: `scontrol` and `srun` are stand-ins that print the job's hosts
    and record what srun was asked to run on each node, with which environment."""
    done = cli("slurm", "math", "4090x8", "nodes=2", "partition=gpu", "lora_r=32")
    assert done.returncode == 0, done.stderr
    job = runs / "math-4090x8" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(job)]).returncode == 0
    text = job.read_text()
    directives = dict(
        line.removeprefix("#SBATCH --").partition("=")[::2]
        for line in text.splitlines()
        if line.startswith("#SBATCH")
    )
    assert directives["nodes"] == "2" and directives["gpus-per-node"] == "8"
    assert directives["partition"] == "gpu" and "exclusive" in directives
    assert directives["output"] == str(runs / "math-4090x8" / "logs" / "slurm-%j.out")
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    record = tmp_path / "srun.json"
    (stand_ins / "srun").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'addr': os.environ['MASTER_ADDR'], "
        f"'port': os.environ['MASTER_PORT']}}, open({str(record)!r}, 'w'))\n"
    )
    for tool in stand_ins.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "x"}
    assert subprocess.run(["bash", str(job)], env=env).returncode == 0
    ran = json.loads(record.read_text())
    assert (ran["addr"], ran["port"]) == ("gpu-a", "29500")
    assert ran["argv"][:3] == ["--kill-on-bad-exit=1", "bash", "-c"]
    per_node = shlex.split(ran["argv"][3])
    launch = ["NODE_RANK=$SLURM_NODEID", "exec", ".venvs/bin/just"]
    assert per_node == [*launch, "train", "math", "4090x8", "nodes=2", "lora_r=32"]
    image = cli("slurm", "math", "4090x8", "nodes=2", "image=true")
    assert image.returncode == 0
    inner = shlex.split(shlex.split(job.read_text().splitlines()[-1])[-1])
    assert inner[2:4] == ["docker", "run"] and "llm-tuner:4090x8" in inner
    assert "--network" in inner and all(f"{v}" in inner for v in ("MASTER_ADDR", "NODE_RANK"))
    assert "nodes=" in cli("slurm", "math", "4090x8").stderr
