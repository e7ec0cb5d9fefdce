"""The DataModule generates the benchmark when absent and serves every split."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TEST_CONFIG

from mmreason.build import build_model
from mmreason.data.datamodule import ShardDataModule


def test_synth_is_generated_once_and_each_split_is_served(tmp_path):
    synth = {"out": str(tmp_path / "synth"), "train": 24, "val": 10, "test": 6, "heldout": 0,
             "tasks": ["exist", "count"]}
    dm = ShardDataModule(batch_size=4, num_workers=0, synth=synth)
    dm.prepare_data()
    shard = tmp_path / "synth" / "train-000000.tar"
    stamp = shard.stat().st_mtime_ns
    dm.prepare_data()
    assert shard.stat().st_mtime_ns == stamp  # finished shards are not redone
    train = list(dm.train_dataloader())
    assert len(train) == len(dm.train_dataloader()) == 6
    val = list(dm.val_dataloader())
    assert sum(len(b["keys"]) for b in val) == 10
    assert {r.task for b in val for r in b["records"]} == {"exist", "count"}
    assert all(k.startswith("test-") for b in dm.test_dataloader() for k in b["keys"])


def test_missing_split_is_a_clear_error():
    dm = ShardDataModule()
    with pytest.raises(ValueError, match="no val shards configured: set data.val"):
        dm.val_dataloader()


def test_a_model_processor_tokenises_training_batches_in_the_loader_worker(tmp_path):
    synth = {"out": str(tmp_path / "synth"), "train": 8, "val": 0, "test": 0, "heldout": 0, "tasks": ["count"]}
    dm = ShardDataModule(batch_size=4, num_workers=1, synth=synth)
    dm.prepare_data()
    model = build_model("baseline", TINY_TEST_CONFIG)
    dm.processor = model.batch_processor()
    batches = list(dm.train_dataloader())  # one worker process: the processor is copied into it
    assert len(batches) == 2
    for batch in batches:
        expected = model.processor.training_inputs(batch["records"], skip_too_long=True)
        assert batch["inputs"].keys() == expected.keys()
        assert all(torch.equal(batch["inputs"][k], expected[k]) for k in expected)
