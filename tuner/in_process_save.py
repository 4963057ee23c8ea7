"""An Axolotl plugin that writes a one-process dataset save in Axolotl's own process.

datasets 4.8 (Axolotl 0.19's pin) opens a *spawn* pool in `Dataset.save_to_disk` for
any `num_proc >= 1`, and Axolotl passes at least 1 when it saves the prepared dataset.
The spawned worker is a fresh interpreter that imports Axolotl's CLI again before it
writes a shard: seconds for a file of a hundred rows, at every training's start
(huggingface/datasets#7290). Where one process is asked for, this plugin saves in the
calling process instead, as datasets does for `num_proc=None`: the same shards and
files. The cpu overlay loads it (`plugins:`), beside `dataset_num_proc: 1`.

This module imports Axolotl: it is loaded by Axolotl's processes, in the training
environment."""

from __future__ import annotations

import functools
from typing import Any

from axolotl.integrations.base import BasePlugin
from datasets import Dataset


def _save_one_process_here(save_to_disk: Any) -> Any:
    @functools.wraps(save_to_disk)
    def save(self: Dataset, *args: Any, num_proc: int | None = None, **kwargs: Any) -> Any:
        return save_to_disk(self, *args, num_proc=None if num_proc == 1 else num_proc, **kwargs)

    save.saves_one_process_here = True
    return save


class InProcessSavePlugin(BasePlugin):
    def load_datasets(self, cfg: Any, preprocess: bool = False) -> None:
        """Axolotl calls this just before it loads and saves the datasets (training and
        `axolotl preprocess`); returning None leaves the loading to Axolotl."""
        if not getattr(Dataset.save_to_disk, "saves_one_process_here", False):
            Dataset.save_to_disk = _save_one_process_here(Dataset.save_to_disk)
