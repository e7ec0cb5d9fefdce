"""Step time of the Lightning training module vs a bare PyTorch loop, same model and batches.

    python tools/bench_train.py [--steps 30] [--warmup 5] [--repeats 3] [--batch-size 32]

Both sides run AdamW with the same schedule and gradient clipping on the same
pre-decoded batches; the first ``warmup`` steps of each run are not timed.
Prints the median per-step time of each and the ratio (goal: lightning/bare <= 1.10).
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import statistics
import time

import lightning as L
import torch

from mmreason.data.preprocess import Preprocess
from mmreason.data.schema import validate_record
from mmreason.data.synth import SynthConfig, make_sample
from mmreason.training.schedule import warmup_cosine
from mmreason.training.sft import SFTModule


def make_batches(n: int, batch_size: int, image_size: int) -> list[dict]:
    config = SynthConfig(image_size=image_size, tasks=("exist", "count", "attribute", "relation"))
    pre = Preprocess(image_size=image_size)
    batches = []
    for b in range(n):
        samples = [make_sample(config, "train", b * batch_size + i) for i in range(batch_size)]
        batches.append({"images": torch.stack([pre(s[1]) for s in samples]),
                        "records": [validate_record(s[2], s[0]) for s in samples], "skipped": 0})
    return batches


def bare_loop(module: SFTModule, batches: list[dict], warmup: int) -> float:
    model = module.model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, warmup_steps=100, total_steps=len(batches)))
    for step, batch in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        loss = model.batch_loss(batch["images"], batch["records"])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (len(batches) - warmup)


class _StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def lightning_loop(module: SFTModule, batches: list[dict], warmup: int) -> float:
    timer = _StepTimer(warmup)
    trainer = L.Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        callbacks=[timer], accelerator="cpu", devices=1, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return (timer.end - timer.start) / (len(batches) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="baseline-tiny-cot")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    torch.manual_seed(0)
    template = SFTModule(model=args.model)
    batches = make_batches(args.steps, args.batch_size, template.model.preprocess.image_size)
    timings: dict[str, list[float]] = {"bare": [], "lightning": []}
    for _ in range(args.repeats):
        timings["bare"].append(bare_loop(copy.deepcopy(template), batches, args.warmup))
        timings["lightning"].append(lightning_loop(copy.deepcopy(template), batches, args.warmup))
    bare, lit = statistics.median(timings["bare"]), statistics.median(timings["lightning"])
    print(f"{args.steps - args.warmup} timed steps x {args.repeats} repeats, batch {args.batch_size}")
    print(f"bare PyTorch loop  median {bare * 1000:.1f} ms/step")
    print(f"Lightning module   median {lit * 1000:.1f} ms/step")
    print(f"ratio lightning/bare = {lit / bare:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
