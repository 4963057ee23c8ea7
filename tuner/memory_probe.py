"""An Axolotl plugin that `just smoke` adds to its config: it measures what the plan
estimates, from inside the training process of each rank, and writes
`memory-rank{N}.json` into the output folder when training ends.

- per device: PyTorch's peak allocated and reserved bytes from just before the model
  loads. Axolotl resets the peak counters whenever it logs, so they are read at the
  end of every step, before the log, and the largest is kept;
- on the host: the process's resident memory before the model loads, and its peak;
- the wall time of every optimizer step.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class StepTimer(TrainerCallback):
    def __init__(self, output_dir: Path, resident_before_model: int):
        self.output_dir = output_dir
        self.resident_before_model = resident_before_model
        self.started = 0.0
        self.step_seconds: list[float] = []
        self.allocated = self.reserved = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        self.step_seconds.append(time.perf_counter() - self.started)
        if torch.cuda.is_available():
            self.allocated = max(self.allocated, torch.cuda.max_memory_allocated())
            self.reserved = max(self.reserved, torch.cuda.max_memory_reserved())

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        rank = int(os.environ.get("RANK", "0"))
        measured: dict[str, Any] = {
            "rank": rank,
            "resident_before_model": self.resident_before_model,
            "peak_resident": peak_resident_bytes(),
            "step_seconds": self.step_seconds,
        }
        if torch.cuda.is_available():
            device = torch.cuda.current_device()
            measured["device"] = {
                "index": device,
                "name": torch.cuda.get_device_name(device),
                "allocated": self.allocated,
                "reserved": self.reserved,
                "total": torch.cuda.get_device_properties(device).total_memory,
            }
        path = self.output_dir / f"memory-rank{rank}.json"
        path.write_text(json.dumps(measured, indent=2))


class MemoryProbe(BasePlugin):
    def __init__(self):
        super().__init__()
        self.resident_before_model = 0

    def pre_model_load(self, cfg):
        import torch

        self.resident_before_model = resident_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def add_callbacks_post_trainer(self, cfg, trainer):
        return [StepTimer(Path(cfg.output_dir), self.resident_before_model)]
