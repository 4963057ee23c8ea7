"""The cpu overlay's plugin that keeps a one-process dataset save in Axolotl's own
process (tuner/in_process_save.py)."""

from __future__ import annotations

import datasets.arrow_dataset
from axolotl.utils.dict import DictDefault
from datasets import Dataset, load_from_disk

from tuner.in_process_save import InProcessSavePlugin


def test_a_one_process_save_opens_no_process_pool_and_writes_the_same_dataset(
    tmp_path, monkeypatch
):
    rows = {"input_ids": [[1, 2, 3, index] for index in range(85)]}
    # Restored after the test: the plugin patches datasets for the whole process.
    monkeypatch.setattr(Dataset, "save_to_disk", Dataset.save_to_disk)
    InProcessSavePlugin().load_datasets(DictDefault({}), preprocess=True)

    def no_pool(*args, **kwargs):
        raise AssertionError("save_to_disk opened a process pool")

    monkeypatch.setattr(datasets.arrow_dataset.mp, "get_context", no_pool)
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"), num_proc=1)
    assert load_from_disk(str(tmp_path / "saved"))["input_ids"] == rows["input_ids"]
    assert len(list((tmp_path / "saved").glob("data-*.arrow"))) == 1
