"""Shards with precomputed vision features, for training behind a frozen vision encoder.

A model whose vision encoder is frozen computes the same features for an image
every epoch; computing them once (as MM-CoT upstream does) saves that forward
pass on every step. Each output shard keeps every member of its source shard
unchanged and adds ``{key}.features.npy``: the float16 (tokens, dim) output of
``encoder.vision`` on the image decoded exactly as training decodes it. The
reader (:func:`mmreason.data.shards.decode_sample`) returns it as
``sample["features"]``; ``features.json`` records which encoder wrote them.
A sample whose key is not a plain file name (``../x``, ``/abs/x``) is skipped
and counted, never copied: extracting the output could write outside its folder.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from mmreason.data.shards import (
    FEATURES_MEMBER,
    SKIPPED,
    BadSample,
    _tar_error_handler,
    decode_sample,
    resolve_shards,
    shard_sizes,
)
from mmreason.data.synth import SPLITS
from mmreason.data.writer import SAFE_KEY, unsafe_key, write_shard
from mmreason.export import load_export

FEATURES_FILE = "features.json"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@torch.no_grad()
def _with_features(pending: list[tuple[dict, torch.Tensor]], model, device: str) -> Iterator[dict]:
    """The raw samples with their encoder features added as a ``features.npy`` member."""
    if not pending:
        return
    pixels = torch.stack([p for _, p in pending]).to(device)
    features = model.vision(model.preprocess.normalize(pixels)).float().cpu().numpy().astype(np.float16)
    for (raw, _), array in zip(pending, features):
        yield {**raw, FEATURES_MEMBER: _npy_bytes(array)}


def _shard_entries(url: str, model, batch_size: int, device: str, bar: tqdm) -> Iterator[dict]:
    """Every decodable sample of one shard, in order, with features; bad samples skipped and counted."""
    pending: list[tuple[dict, torch.Tensor]] = []
    for raw in wds.tarfile_samples([{"url": url}], handler=_tar_error_handler):
        if unsafe_key(raw["__key__"]):
            SKIPPED.skip(repr(raw["__key__"]), f"sample key is not a plain file name; expected {SAFE_KEY}")
            continue
        try:
            pending.append((raw, decode_sample(raw, model.preprocess)["pixels"]))
        except BadSample as exn:
            SKIPPED.skip(raw.get("__key__", "?"), str(exn))
        if len(pending) == batch_size:
            yield from _with_features(pending, model, device)
            bar.update(len(pending))
            pending = []
    yield from _with_features(pending, model, device)
    bar.update(len(pending))


def write_feature_shards(encoder: str, src: str, out: str, splits=SPLITS, batch_size: int = 64,
                         progress: bool = True, device: str | None = None) -> dict:
    """Copy the ``{split}-*.tar`` shards of ``src`` to ``out`` with the encoder's vision features added.

    ``encoder`` is an export folder; ``device`` defaults to CUDA when available. Splits without
    shards are skipped. Returns the ``features.json`` content plus samples written and skipped per split.
    """
    src_dir, out_dir = Path(src), Path(out)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"shard folder {src!r} does not exist (write one with `mmreason data synth`)")
    if out_dir.resolve() == src_dir.resolve():
        raise ValueError(f"--out {out!r} is the source folder; write feature shards to another folder")
    urls = {}
    for split in splits:
        try:
            urls[split] = resolve_shards(str(src_dir), split)
        except FileNotFoundError:
            continue
    if not urls:
        raise FileNotFoundError(f"no shards of splits {list(splits)} in {src!r}: expected files like "
                                f"{splits[0]}-000000.tar")
    model = load_export(encoder)
    image_size = model.preprocess.image_size
    info = {"encoder": os.path.abspath(encoder), "family": model.family,
            "tokens": model.vision.num_tokens(image_size), "dim": model.vision.width, "dtype": "float16",
            "preprocess": model.preprocess.to_dict()}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    sizes = shard_sizes([u for split_urls in urls.values() for u in split_urls])
    counts, skipped = {}, {}
    with tqdm(total=sum(sizes.values()) if sizes else None, desc=f"features {out_dir.name}", unit="sample",
              disable=not progress) as bar:
        for split, split_urls in urls.items():
            before = SKIPPED.pending
            counts[split] = sum(write_shard(out_dir / os.path.basename(url),
                                            _shard_entries(url, model, batch_size, device, bar))
                                for url in split_urls)
            skipped[split] = SKIPPED.pending - before
    (out_dir / FEATURES_FILE).write_text(json.dumps(info, indent=1))
    return {**info, "counts": counts, "skipped": skipped}
