"""An Axolotl plugin that lets several processes train together on CPUs (DDP over
gloo), as they do on GPUs: the cpu overlay loads it (`plugins:`).

For any world size above one, Axolotl 0.19's config normalisation places the model on
`{"": LOCAL_RANK}`, an accelerator's index (`axolotl/utils/config/__init__.py`,
`normalize_config`); on a machine without one, transformers then stops with "Cannot
access accelerator device when none is available" while loading the weights. And
transformers' Trainer sets up data-parallel training on CPUs only when told it runs on
them (`use_cpu`, which Axolotl has no key for, or ACCELERATE_USE_CPU): otherwise each
process trains alone on all the data, with a process group it never uses. On a CPU the
plugin places the model on the CPU and says so; the Trainer then shards the data and
all-reduces the gradients over gloo.

This module imports Axolotl: it is loaded by Axolotl's processes, in the training
environment."""

from __future__ import annotations

import os
from typing import Any

from axolotl.integrations.base import BasePlugin


class CpuDistributedPlugin(BasePlugin):
    def load_datasets(self, cfg: Any, preprocess: bool = False) -> None:
        """Axolotl calls this after normalising the config and before loading the model
        (training and `axolotl preprocess`); returning None leaves the data to Axolotl."""
        if cfg.device == "cpu" and (cfg.world_size or 1) > 1:
            cfg.device_map = "cpu"
            os.environ["ACCELERATE_USE_CPU"] = "true"
