"""What a hardware target is (from its overlay's `tuner.gpu`) and what this machine has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuner.errors import TunerError


class GpuProfile(BaseModel):
    """The card an overlay is written for: what Axolotl's validation calls capabilities."""

    model_config = ConfigDict(extra="forbid")

    name: str
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    count: int = Field(ge=1)
    memory_gib: float = Field(gt=0)
    bf16: bool
    tf32: bool
    fp8: bool = False
    # For `just plan`: dense 16-bit tensor throughput per card, and a price per hour for
    # the whole machine (both overridable on the command line).
    peak_tflops: float | None = Field(default=None, gt=0)
    # The GPU shares the CPU's memory (DGX Spark): the page cache competes with it.
    unified_memory: bool = False
    price_per_hour: float | None = Field(default=None, ge=0)

    @property
    def sm(self) -> str:
        """`sm_75` style, as Axolotl writes compute capabilities."""
        return "sm_" + self.compute_capability.replace(".", "")

    def axolotl_capabilities(self) -> dict[str, Any]:
        return {
            "bf16": self.bf16,
            "fp8": self.fp8,
            "tf32": self.tf32,
            "n_gpu": self.count,
            "compute_capability": self.sm,
        }


def gpu_profile(meta: dict[str, Any], source: str) -> GpuProfile | None:
    raw = meta.get("gpu")
    if raw is None:
        return None
    try:
        return GpuProfile(**raw)
    except Exception as err:
        raise TunerError(f"{source}: `tuner.gpu` is not a valid GPU profile: {err}") from err


@dataclass(frozen=True)
class DetectedGpu:
    name: str
    compute_capability: str
    memory_gib: float


def detect_gpus() -> list[DetectedGpu]:
    """The CUDA devices torch sees here (empty on a CPU-only machine)."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(
            DetectedGpu(props.name, f"{props.major}.{props.minor}", props.total_memory / 2**30)
        )
    return found


def check_machine(hardware: str, profile: GpuProfile, found: list[DetectedGpu]) -> None:
    """Refuse to train an overlay on a machine that is not the one it was written for."""
    want = f"{profile.count} × {profile.name} (compute capability {profile.compute_capability})"
    if not found:
        raise TunerError(
            f"The '{hardware}' overlay is written for {want}, and this machine has no CUDA "
            f"GPU. Run it on such a machine, or train here with `just train TASK cpu`; "
            f"`just config TASK {hardware}` writes the config without training."
        )
    have = ", ".join(f"{g.name} ({g.compute_capability})" for g in found)
    mismatched = [g for g in found if g.compute_capability != profile.compute_capability]
    if mismatched or len(found) < profile.count:
        raise TunerError(
            f"The '{hardware}' overlay is written for {want}; this machine has {have}. "
            "Its precision, attention and batch settings would not hold here: pick the "
            "overlay for this card (`just validate` lists them)."
        )
    # Cards report a little under their nominal size (a 24 GB RTX 4090: 23.6 GiB).
    small = [g for g in found[: profile.count] if g.memory_gib < 0.9 * profile.memory_gib]
    if small:
        raise TunerError(
            f"The '{hardware}' overlay plans for {profile.memory_gib:g} GiB per card; "
            f"{small[0].name} has {small[0].memory_gib:.1f} GiB. Its batch and sequence "
            f"settings would run out of memory: `just plan TASK {hardware} "
            "micro_batch_size=…` shows what fits."
        )
