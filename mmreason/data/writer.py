"""Writing canonical samples to WebDataset shards with a ``sizes.json`` beside them.

Each shard is written to a temporary name and renamed when complete, so an
interrupted run never leaves a truncated shard under a final name, and
``sizes.json`` only ever lists finished shards.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import webdataset as wds
from PIL import Image

SIZES_FILE = "sizes.json"


def encode_image(image: Image.Image | bytes, fmt: str = "png") -> tuple[str, bytes]:
    """Return (extension, bytes); raw JPEG/PNG bytes pass through untouched."""
    if isinstance(image, (bytes, bytearray)):
        head = bytes(image[:8])
        if head.startswith(b"\x89PNG"):
            return "png", bytes(image)
        if head.startswith(b"\xff\xd8"):
            return "jpg", bytes(image)
        image = Image.open(io.BytesIO(image))
    buf = io.BytesIO()
    if fmt == "jpg":
        image.convert("RGB").save(buf, format="JPEG", quality=95)
    else:
        if image.mode not in ("RGB", "L", "RGBA"):
            image = image.convert("RGB")
        image.save(buf, format="PNG")
    return fmt, buf.getvalue()


def encode_mask(mask: Image.Image) -> bytes:
    buf = io.BytesIO()
    mask.convert("L").save(buf, format="PNG")
    return buf.getvalue()


def sample_to_tar_entry(key: str, image, record: dict, mask: Image.Image | None = None) -> dict:
    """The dict a ``wds.TarWriter`` writes for one canonical sample."""
    ext, data = encode_image(image)
    entry = {"__key__": key, ext: data, "json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
    if mask is not None:
        entry["mask.png"] = encode_mask(mask)
    return entry


def read_sizes(out_dir: str | Path) -> dict[str, int]:
    path = Path(out_dir) / SIZES_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def record_shard_size(out_dir: str | Path, shard_name: str, count: int) -> None:
    """Add one finished shard to ``sizes.json`` (rewritten atomically)."""
    sizes = read_sizes(out_dir)
    sizes[shard_name] = count
    path = Path(out_dir) / SIZES_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(sizes.items())), indent=1))
    os.replace(tmp, path)


def write_shard(path: str | Path, entries: Iterable[dict]) -> int:
    """Write tar entries to ``path`` atomically and record its size; return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "wb") as stream:
        writer = wds.TarWriter(stream)
        for entry in entries:
            writer.write(entry)
            count += 1
        writer.close()
    os.replace(tmp, path)
    record_shard_size(path.parent, path.name, count)
    return count


class ShardSetWriter:
    """Streams samples into ``{prefix}-%06d.tar`` shards of ``samples_per_shard`` each."""

    def __init__(self, out_dir: str | Path, prefix: str, samples_per_shard: int = 1000):
        self.out_dir, self.prefix, self.per_shard = Path(out_dir), prefix, samples_per_shard
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._pending: list[dict] = []
        self._index = 0
        self.total = 0

    def write(self, key: str, image, record: dict, mask: Image.Image | None = None) -> None:
        self._pending.append(sample_to_tar_entry(key, image, record, mask))
        if len(self._pending) >= self.per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"{self.prefix}-{self._index:06d}.tar"
        self.total += write_shard(self.out_dir / name, self._pending)
        self._pending, self._index = [], self._index + 1

    def close(self) -> int:
        self._flush()
        return self.total

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
