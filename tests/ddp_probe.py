"""A callback used by the distributed test: each rank records its step count and a weight checksum."""

from __future__ import annotations

import json
import os

import lightning as L
import torch


class RankProbe(L.Callback):
    def __init__(self, out: str):
        self.out = out
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_fit_end(self, trainer, pl_module):
        checksum = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        path = os.path.join(self.out, f"rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"batches": self.batches, "global_step": trainer.global_step, "checksum": checksum,
                       "world_size": trainer.world_size, "threads": torch.get_num_threads()}, f)
