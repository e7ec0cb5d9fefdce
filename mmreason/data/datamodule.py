"""The LightningDataModule every family trains on: canonical shards in, batches out.

With ``synth`` set, the synthetic benchmark is generated into ``synth.out``
when absent, so a tiny recipe runs on a fresh machine with no data step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch

from mmreason.data.preprocess import Preprocess
from mmreason.data.shards import MAX_CONSECUTIVE_SKIPS, EpochLoader, eval_stream, resolve_shards, train_stream
from mmreason.data.synth import SynthConfig
from mmreason.data.synth_shards import synthesize
from mmreason.data.workers import die_with_parent

log = logging.getLogger(__name__)


class ShardDataModule(L.LightningDataModule):
    """Train/val/test shard specs (brace pattern, glob, list or a folder of ``{split}-*.tar``).

    Args:
        train, val, test: shard specs; a folder picks its ``train-*``, ``val-*``, ``test-*`` shards.
        synth: options of the synthetic benchmark, generated (or completed) into ``out`` before
            training and used for every split not given explicitly, e.g.
            ``{out: data/synth, train: 30000, val: 500, test: 1000, heldout: 1000, rationale_style: short}``.
        epoch_samples: samples per training epoch (default: the training shards' size).
        max_consecutive_skips: stop training with an error after this many bad samples or unreadable
            shards in a row (data that yields nothing would otherwise spin forever); None never stops.
        length_group: sort this many batches' worth of samples by text length before batching
            (less padding, faster steps); 1 keeps the plain shuffled order.
        check_vocabulary: before training, refuse a model whose tokenizer turns words of the training
            records (a sample of them) into ``<unk>`` (:mod:`mmreason.text.vocabulary`).
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 1,
        shuffle_buffer: int = 500,
        length_group: int = 1,
        epoch_samples: int | None = None,
        max_pixels: int = 64_000_000,
        max_consecutive_skips: int | None = MAX_CONSECUTIVE_SKIPS,
        allow_pipe: bool = False,
        seed: int = 0,
        synth: dict[str, Any] | None = None,
        check_vocabulary: bool = True,
    ):
        super().__init__()
        self.train, self.val, self.test = train, val, test
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.length_group, self.max_consecutive_skips = length_group, max_consecutive_skips
        self.epoch_samples, self.allow_pipe, self.synth = epoch_samples, allow_pipe, synth
        self.check_vocabulary = check_vocabulary
        # image size and normalisation are set by the model in its setup(); only the pixel limit is ours
        self.preprocess = Preprocess(max_pixels=max_pixels)
        self.processor = None  # the model's batch processor, set by the training module; runs in the workers

    def prepare_data(self) -> None:
        if self.synth is None:
            return
        options = dict(self.synth)
        out = options.pop("out", "data/synth")
        counts = {split: int(options.pop(split, 0)) for split in ("train", "val", "test", "heldout")}
        synthesize(out, counts, SynthConfig(**options))

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _urls(self, spec, split):
        if spec is None and self.synth is not None:
            spec = self.synth.get("out", "data/synth")
        if spec is None:
            raise ValueError(f"no {split} shards configured: set data.{split} (a shard pattern or folder)")
        return resolve_shards(spec, split if isinstance(spec, str) and os.path.isdir(spec) else None,
                              self.allow_pipe)

    def train_urls(self) -> list[str]:
        return self._urls(self.train, "train")

    def train_dataloader(self):
        rank, world = self._rank()
        stream, _ = train_stream(
            self._urls(self.train, "train"), self.preprocess, self.batch_size, rank, world,
            self.num_workers, self.epoch_samples, self.seed, self.shuffle_buffer, self.length_group,
            self.max_consecutive_skips, self.processor,
        )
        trainer = getattr(self, "trainer", None)
        epoch_fn = (lambda: trainer.current_epoch) if trainer is not None else None
        return EpochLoader(stream, epoch_fn, num_workers=self.num_workers,
                           persistent_workers=False, multiprocessing_context=_fork_context(self.num_workers))

    def _eval_loader(self, spec, split):
        rank, world = self._rank()
        # one worker per rank keeps the batch count equal across ranks when evaluation is distributed
        workers = self.num_workers if world == 1 else min(self.num_workers, 1)
        stream, _ = eval_stream(self._urls(spec, split), self.preprocess, self.eval_batch_size, rank, world,
                                workers)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, worker_init_fn=die_with_parent,
                                           multiprocessing_context=_fork_context(workers))

    def val_dataloader(self):
        return self._eval_loader(self.val, "val")

    def test_dataloader(self):
        return self._eval_loader(self.test, "test")


def _fork_context(num_workers: int):
    """Fork keeps the parent's process-group state visible to loader workers (spawn hides it)."""
    import multiprocessing

    if num_workers == 0 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return "fork"
