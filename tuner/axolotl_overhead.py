"""An Axolotl plugin that removes two fixed costs of Axolotl's process, which outweigh
the training itself on the cpu overlay's short runs (it loads the plugin: `plugins:`).

- A one-process save of the prepared dataset stays in Axolotl's process. datasets 4.8
  (Axolotl 0.19's pin) opens a *spawn* pool in `Dataset.save_to_disk` for any
  `num_proc >= 1`, and Axolotl passes at least 1. The spawned worker is a fresh
  interpreter that imports Axolotl's CLI again before it writes a shard: 4 to 20 s for
  a file of a hundred rows (huggingface/datasets#7290). For one process the plugin
  saves as datasets does for `num_proc=None`: the same shards and files.
- The objects made while importing Axolotl, torch and transformers (about 650,000) are
  moved out of the garbage collector's reach with `gc.freeze()`. Axolotl calls
  `gc.collect()` around model loading and every checkpoint; each call walked all of
  them, 0.7 s here, seven times a run. Objects made afterwards (datasets, models) are
  collected as before, and at exit the frozen ones are handed back, so that the
  interpreter's shutdown frees them (triton's extension reports leaks otherwise).

This module imports Axolotl: it is loaded by Axolotl's processes, in the training
environment."""

from __future__ import annotations

import atexit
import functools
import gc
from typing import Any

from axolotl.integrations.base import BasePlugin
from datasets import Dataset


def _save_one_process_here(save_to_disk: Any) -> Any:
    @functools.wraps(save_to_disk)
    def save(self: Dataset, *args: Any, num_proc: int | None = None, **kwargs: Any) -> Any:
        return save_to_disk(self, *args, num_proc=None if num_proc == 1 else num_proc, **kwargs)

    save.saves_one_process_here = True
    return save


class AxolotlOverheadPlugin(BasePlugin):
    def load_datasets(self, cfg: Any, preprocess: bool = False) -> None:
        """Axolotl calls this once its imports are done, just before it loads and saves
        the datasets (training and `axolotl preprocess`); returning None leaves the
        loading to Axolotl."""
        if not getattr(Dataset.save_to_disk, "saves_one_process_here", False):
            Dataset.save_to_disk = _save_one_process_here(Dataset.save_to_disk)
        gc.freeze()
        atexit.register(gc.unfreeze)
