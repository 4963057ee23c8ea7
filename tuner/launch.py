"""How Axolotl's training processes start: one in Axolotl's own process, one per GPU of
a multi-GPU machine (accelerate, Axolotl's default), or one per GPU on each of several
machines (`nodes=N`: torchrun, as Axolotl's multi-node guide launches it,
https://docs.axolotl.ai/docs/multi-node.html).

Several machines meet at a rendezvous that the cluster gives each of them in the
environment, as torchrun and Slurm jobs name it: MASTER_ADDR and MASTER_PORT (the
first machine's address and a free port there), NODE_RANK (this machine's number,
0 to N-1). Each machine runs the same `just train TASK HW nodes=N`. Machine 0 keeps the
run's record (manifest, folder preparation); every machine writes the same config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tuner.errors import TunerError
from tuner.hardware import gpu_profile
from tuner.recipes import ComposedRecipe

RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


@dataclass(frozen=True)
class Rendezvous:
    """Where the machines of a multi-node run meet, and which one this is."""

    address: str
    port: int
    node_rank: int

    @property
    def primary(self) -> bool:
        return self.node_rank == 0


def rendezvous(nodes: int, env: Mapping[str, str] = os.environ) -> Rendezvous | None:
    """The rendezvous of a run on `nodes` machines from the environment; None for one."""
    if nodes == 1:
        return None
    missing = [name for name in RENDEZVOUS_VARIABLES if not env.get(name)]
    if missing:
        raise TunerError(
            f"nodes={nodes}: each machine needs the rendezvous in its environment, and "
            f"{', '.join(missing)} is not set. On every machine run, e.g. MASTER_ADDR=10.0.0.1 "
            "MASTER_PORT=29500 NODE_RANK=0 (1, 2, … on the others) just train …; under "
            "Slurm, `just slurm TASK HW nodes=N` writes a job that sets them."
        )
    try:
        port, rank = int(env["MASTER_PORT"]), int(env["NODE_RANK"])
    except ValueError:
        raise TunerError(
            f"MASTER_PORT={env['MASTER_PORT']} and NODE_RANK={env['NODE_RANK']} must be whole "
            "numbers."
        ) from None
    if not 1 <= port <= 65535:
        raise TunerError(f"MASTER_PORT={port} is not a TCP port (1..65535).")
    if not 0 <= rank < nodes:
        raise TunerError(f"NODE_RANK={rank} must lie in 0..{nodes - 1} for nodes={nodes}.")
    return Rendezvous(env["MASTER_ADDR"], port, rank)


def processes_per_node(recipe: ComposedRecipe) -> int:
    """One per GPU of the overlay's machine; one on a CPU."""
    profile = gpu_profile(recipe.meta, recipe.hardware)
    return profile.count if profile else 1


def multi_process(recipe: ComposedRecipe) -> bool:
    """Several training processes on this machine, one per GPU."""
    return processes_per_node(recipe) > 1


def launcher_args(recipe: ComposedRecipe, meeting: Rendezvous | None = None) -> list[str]:
    """`axolotl train`'s launcher and its arguments. For one device Axolotl's `python`
    launcher trains in the `axolotl` process itself, without starting another
    (accelerate's) that imports torch and Axolotl again."""
    per_node = processes_per_node(recipe)
    if meeting is not None:
        return [
            "--launcher",
            "torchrun",
            "--",
            f"--nnodes={recipe.nodes}",
            f"--nproc_per_node={per_node}",
            f"--node_rank={meeting.node_rank}",
            f"--master_addr={meeting.address}",
            f"--master_port={meeting.port}",
        ]
    if per_node > 1:
        return ["--launcher", "accelerate", "--", "--num_processes", str(per_node)]
    return ["--launcher", "python"]
