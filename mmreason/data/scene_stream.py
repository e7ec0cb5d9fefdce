"""Fresh random scenes for perception pretraining, endlessly, in the shard batches' format.

Every batch is ``{pixels, records}`` like a shard batch, each record carrying
its scene graph in ``meta["scene"]``, so an encoder trains on this stream or on
any synthetic shards alike. Scenes are a function of (seed, rank, worker,
epoch, index): runs repeat exactly; validation uses a seed of its own, so it
never sees a training scene's random draw.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from mmreason.data import scenes
from mmreason.data.preprocess import Preprocess
from mmreason.data.schema import Record
from mmreason.data.shards import EpochLoader, eval_stream, resolve_shards
from mmreason.data.workers import die_with_parent

_VAL_SEED_OFFSET = 1_000_003


def random_scene(rng: random.Random, image_size: int, min_objects: int, max_objects: int) -> list[dict]:
    """2–7 (or as set) objects of uniformly drawn colour, shape and size, in reading order."""
    n = rng.randint(min_objects, max_objects)
    specs = [(rng.choice(tuple(scenes.COLOURS)), rng.choice(scenes.SHAPES), rng.choice(scenes.SIZES))
             for _ in range(n)]
    return scenes.reading_order(scenes.place_objects(specs, image_size, rng))


class SceneStream(torch.utils.data.IterableDataset):
    """``batches_per_worker`` batches of fresh scenes per epoch from each loader worker."""

    def __init__(self, preprocess: Preprocess, batch_size: int, batches_per_worker: int, seed: int = 0,
                 image_size: int = 64, min_objects: int = 2, max_objects: int = 7, noise_share: float = 0.5):
        super().__init__()
        self.preprocess, self.batch_size, self.seed = preprocess, batch_size, seed
        self.batches_per_worker = batches_per_worker
        self.image_size, self.min_objects, self.max_objects = image_size, min_objects, max_objects
        self.noise_share = noise_share
        self.epoch, self.rank = 0, 0

    def __len__(self) -> int:
        return self.batches_per_worker

    def sample(self, rng: random.Random) -> tuple[torch.Tensor, Record]:
        scene = random_scene(rng, self.image_size, self.min_objects, self.max_objects)
        noise = rng.random() < self.noise_share
        image = scenes.render(scene, self.image_size, noise, np.random.default_rng(rng.getrandbits(32)))
        record = Record(question="describe the scene.", answer="", task="scene",
                        meta={"scene": scene, "image_size": [self.image_size, self.image_size]})
        return self.preprocess.to_pixels(image), record

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        rng = random.Random(f"{self.seed}/{self.rank}/{worker}/{self.epoch}")
        for _ in range(self.batches_per_worker):
            pixels, records = zip(*(self.sample(rng) for _ in range(self.batch_size)))
            yield {"pixels": torch.stack(pixels), "records": list(records), "skipped": 0,
                   "orig_sizes": [(self.image_size, self.image_size)] * self.batch_size}


class SceneDataModule(L.LightningDataModule):
    """Training on fresh scenes; validation on ``val_scenes`` fixed scenes, or on shards (``val``).

    Args:
        batch_size: scenes per batch.
        epoch_batches: batches per training epoch (the stream never runs out; this sets the epoch length).
        val_scenes: fixed validation scenes drawn from a seed of their own.
        val, test: synthetic shards to evaluate on instead (a pattern or a folder; their records
            must carry ``meta.scene``).
        image_size, min_objects, max_objects, noise_share: what scenes look like (the benchmark's defaults;
            ``noise_share`` of them on a noisy grey background).
    """

    def __init__(self, batch_size: int = 64, eval_batch_size: int = 128, epoch_batches: int = 1000,
                 val_scenes: int = 512, val: str | None = None, test: str | None = None, num_workers: int = 1,
                 image_size: int = 64, min_objects: int = 2, max_objects: int = 7, noise_share: float = 0.5,
                 seed: int = 0):
        super().__init__()
        self.batch_size, self.eval_batch_size, self.epoch_batches = batch_size, eval_batch_size, epoch_batches
        self.val_scenes, self.val, self.test, self.num_workers = val_scenes, val, test, num_workers
        self.scene_options = dict(image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                                  noise_share=noise_share)
        self.seed = seed
        self.preprocess = Preprocess()  # the model's setup() sets size and normalisation

    def train_dataloader(self):
        per_worker = -(-self.epoch_batches // max(1, self.num_workers))
        stream = SceneStream(self.preprocess, self.batch_size, per_worker, self.seed, **self.scene_options)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            stream.rank = trainer.global_rank
        epoch_fn = (lambda: trainer.current_epoch) if trainer is not None else None
        context = "fork" if self.num_workers else None
        return EpochLoader(stream, epoch_fn, num_workers=self.num_workers, multiprocessing_context=context)

    def _eval_loader(self, spec, split):
        if spec is None:
            batches = -(-self.val_scenes // self.eval_batch_size)
            stream = SceneStream(self.preprocess, self.eval_batch_size, batches, self.seed + _VAL_SEED_OFFSET,
                                 **self.scene_options)
            return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)
        stream, _ = eval_stream(resolve_shards(spec, split), self.preprocess, self.eval_batch_size)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=min(self.num_workers, 1),
                                           worker_init_fn=die_with_parent)

    def val_dataloader(self):
        return self._eval_loader(self.val, "val")

    def test_dataloader(self):
        if self.test is None:
            raise ValueError("no test shards configured: set data.test (a synthetic shard folder or pattern)")
        return self._eval_loader(self.test, "test")
