"""The cpu overlay's plugin that removes two fixed costs of Axolotl's process
(tuner/axolotl_overhead.py), called as Axolotl calls it, in this process."""

from __future__ import annotations

import gc

import datasets.arrow_dataset
import pytest
from axolotl.utils.dict import DictDefault
from datasets import Dataset, load_from_disk

from tuner.axolotl_overhead import AxolotlOverheadPlugin


@pytest.fixture
def plugin_loaded(monkeypatch):
    """The plugin's hook run once; what it changes for the whole process is undone
    afterwards."""
    monkeypatch.setattr(Dataset, "save_to_disk", Dataset.save_to_disk)
    tracked_before = len(gc.get_objects())
    AxolotlOverheadPlugin().load_datasets(DictDefault({}), preprocess=True)
    yield tracked_before
    gc.unfreeze()


def test_a_one_process_save_opens_no_process_pool_and_writes_the_same_dataset(
    plugin_loaded, tmp_path, monkeypatch
):
    def no_pool(*args, **kwargs):
        raise AssertionError("save_to_disk opened a process pool")

    monkeypatch.setattr(datasets.arrow_dataset.mp, "get_context", no_pool)
    rows = {"input_ids": [[1, 2, 3, index] for index in range(85)]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"), num_proc=1)
    assert load_from_disk(str(tmp_path / "saved"))["input_ids"] == rows["input_ids"]
    assert len(list((tmp_path / "saved").glob("data-*.arrow"))) == 1


def test_the_objects_made_before_are_out_of_the_collectors_reach_and_later_ones_are_not(
    plugin_loaded,
):
    tracked_before = plugin_loaded
    assert gc.get_freeze_count() >= 0.9 * tracked_before
    assert len(gc.get_objects()) < 0.1 * tracked_before
    made_after = [{"a": []}]
    assert gc.is_tracked(made_after) and any(o is made_after for o in gc.get_objects())
