"""Shared fixtures: tiny shards written by the tests themselves, a tiny model config."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmreason.data.schema import validate_record
from mmreason.data.writer import ShardSetWriter
from mmreason.text.prompts import TEMPLATE_WORDS
from mmreason.text.tokenizer import word_tokenizer

WORDS = ("is there a red blue circle square yes no how many shapes the at left right ? . "
         "i see one two it shows").split()


def make_record(i: int) -> dict:
    colour = ("red", "blue")[i % 2]
    return {"question": f"is there a {colour} circle?", "answer": ("yes", "no")[i % 2],
            "rationale": f"it shows a {colour} circle at the left .", "task": ("exist", "count")[i % 2],
            "choices": None, "steps": [{"text": "look", "box": [1, 1, 10, 10]}], "meta": {"i": i}}


def make_image(i: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def valid_records(n: int = 4) -> list:
    """``n`` validated Records (the canonical objects models take)."""
    return [validate_record(make_record(i)) for i in range(n)]


def model_images(model, n: int = 4):
    """``n`` test images preprocessed by ``model``, stacked."""
    return torch.stack([model.preprocess(make_image(i)) for i in range(n)])


def training_tensors(model, records) -> dict:
    """``model.processor.training_inputs`` for records that all fit (their ``rows`` checked and dropped)."""
    inputs = model.processor.training_inputs(records)
    assert inputs.pop("rows").tolist() == list(range(len(records)))
    return inputs


def train_steps(model, images, records, steps: int, lr: float = 3e-3, **loss_kwargs) -> tuple[list[float], dict]:
    """``steps`` AdamW steps of ``model.batch_loss`` on one fixed batch: the losses and the last output."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        out = model.batch_loss(images, records, **loss_kwargs)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out["loss"]))
    return losses, out


def write_shards(folder, prefix: str, counts: list[int]) -> list[str]:
    """Shards of the given sizes (uneven on purpose) with valid samples; returns their paths."""
    paths, index = [], 0
    for shard, count in enumerate(counts):
        writer = ShardSetWriter(folder, f"{prefix}{shard}", samples_per_shard=max(count, 1))
        for _ in range(count):
            writer.write(f"s{index:05d}", make_image(index), make_record(index))
            index += 1
        writer.close()
        paths.append(str(folder / f"{prefix}{shard}-000000.tar"))
    return paths


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tiny_tokenizer():
    return word_tokenizer([*TEMPLATE_WORDS, *WORDS])


TINY_TEST_CONFIG = {
    "vision": {"name": "vit_base_patch16_224",
               "overrides": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                             "class_token": False}},
    "projector": "mlp2x_gelu",
    "language": {"config": {"model_type": "llama", "hidden_size": 48, "intermediate_size": 96,
                            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                            "max_position_embeddings": 256, "tie_word_embeddings": True}},
    "output_format": "cot",
    "preprocess": {"image_size": 32},
    "max_length": 128,
}


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "baseline" / "synth-tiny-cot.yaml"


def mmreason(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mmreason", *args], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fit_args(data: Path, root: Path, steps: int, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(RECIPE),
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
        "--trainer.max_time", "null", "--trainer.val_check_interval", str(steps),
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.model_config", json.dumps(TINY_TEST_CONFIG), "--model.init_args.init", "null",
        "--model.init_args.max_new_tokens", "4", "--model.init_args.warmup_steps", "2",
        "--data.init_args.synth", "null", "--data.init_args.train", str(data / "train{0..2}-000000.tar"),
        "--data.init_args.val", str(data / "val0-000000.tar"), "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0", *extra,
    ]


@pytest.fixture(autouse=True)
def fresh_skip_log(monkeypatch):
    """Each test starts with the skip log's in-full budget unspent (the tally is per process)."""
    from mmreason.data.shards import SKIPPED

    monkeypatch.setattr(SKIPPED, "total", 0)
