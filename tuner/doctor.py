"""`just doctor`: what this machine has for the recipes — GPUs and their peer access,
the NVIDIA driver against the GPU images' minimum, the environments, container
engines, the code sandbox, bigcode-evaluation-harness, tokens (present or not, never
their values) — and the preflight checks `just train` runs on a GPU target."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuner.containers import available_engines, driver_problem, host_driver, in_image, load_targets
from tuner.environments import VENVS
from tuner.errors import TunerError
from tuner.hardware import GpuProfile, detect_gpus

TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def peer_access(count: int) -> dict[tuple[int, int], bool]:
    """Whether each GPU can reach each other one directly (NVIDIA blocks it on GeForce
    cards; NCCL must then go through host memory)."""
    import torch

    return {
        (a, b): torch.cuda.can_device_access_peer(a, b)
        for a in range(count)
        for b in range(count)
        if a != b
    }


def multi_gpu_preflight(profile: GpuProfile, env: dict[str, str], console: Console) -> None:
    """Before a multi-GPU run: without peer access between every pair, NCCL's P2P path
    can hang (DeepSpeed #4433), so it is switched off."""
    access = peer_access(profile.count)
    if all(access.values()):
        console.print(f"P2P: all {profile.count} GPUs reach each other directly.")
        return
    blocked = sum(not ok for ok in access.values())
    env["NCCL_P2P_DISABLE"] = "1"
    console.print(f"P2P: {blocked} GPU pairs lack peer access; NCCL_P2P_DISABLE=1.")


def unified_memory_preflight(drop_caches: bool, console: Console) -> None:
    """The DGX Spark's GPU shares its 128 GB with the CPU: the page cache competes with
    the model. NVIDIA's playbooks drop it before big loads; done only when asked."""
    if not drop_caches:
        console.print(
            "Unified memory: the page cache shares the GPU's memory. To free it first, "
            "run with --drop-caches (needs root) or `sync; echo 3 > /proc/sys/vm/drop_caches`."
        )
        return
    os.sync()
    DROP_CACHES.write_text("3\n")
    console.print("Dropped the page cache (unified memory).")


def report(console: Console) -> None:
    table = Table(title="just doctor", show_header=False)
    table.add_column("what")
    table.add_column("found")
    table.add_row("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    table.add_row("in an image", "yes (TUNER_IMAGE=1)" if in_image() else "no")
    gpus = detect_gpus()
    if gpus:
        for index, gpu in enumerate(gpus):
            table.add_row(
                f"GPU {index}",
                f"{gpu.name}, compute capability {gpu.compute_capability}, "
                f"{gpu.memory_gib:.1f} GiB",
            )
        if len(gpus) > 1:
            access = peer_access(len(gpus))
            table.add_row("P2P", f"{sum(access.values())} of {len(access)} GPU pairs")
    else:
        table.add_row("GPU", "none (CUDA not available): the cpu overlay runs here")
    table.add_row("NVIDIA driver", driver_status(host_driver()))
    for name in ("train", "infer"):
        python = VENVS / name / "bin" / "python"
        table.add_row(f"{name} environment", str(python) if python.is_file() else "missing")
    engines = available_engines()
    if "docker" not in engines and shutil.which("docker"):
        engines.append("docker CLI without a daemon (unused)")
    table.add_row("container engines", ", ".join(engines) or "none")
    table.add_row("code sandbox", sandbox_status())
    table.add_row("bigcode-evaluation-harness", bigcode_status())
    for token in TOKENS:
        table.add_row(token, "set" if os.environ.get(token) else "not set")
    console.print(table)


def driver_status(host: str | None) -> str:
    """The host's driver against each GPU image's minimum (containers/targets.yaml)."""
    if host is None:
        return "none (nvidia-smi not found)"
    gpu_targets = [name for name, t in load_targets().items() if t.get("min_driver")]
    too_old = [name for name in gpu_targets if driver_problem(name, host)]
    if not too_old:
        return f"{host}: runs the GPU images ({', '.join(gpu_targets)})"
    return f"{host}: too old for {', '.join(too_old)}. {driver_problem(too_old[0], host)}"


def sandbox_status() -> str:
    from tuner.evaluate.sandbox import isolation

    try:
        return isolation()
    except TunerError as problem:
        return f"unavailable: {problem}"


def bigcode_status() -> str:
    from tuner.evaluate.bigcode import HARNESS_PYTHON_ENV, bigcode_version, harness_python

    if not os.environ.get(HARNESS_PYTHON_ENV):
        return f"not set up ({HARNESS_PYTHON_ENV} unset): the evaluation image has it"
    try:
        python = harness_python([])
        return f"{bigcode_version(python)} in {python}"
    except TunerError as problem:
        return f"unavailable: {problem}"
