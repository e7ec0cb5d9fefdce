"""Writing canonical samples to WebDataset shards with a ``sizes.json`` beside them.

Each shard is written to a temporary name and renamed when complete, so an
interrupted run never leaves a truncated shard under a final name, and
``sizes.json`` only ever lists finished shards. A :class:`ShardSetWriter`
publishes its whole set at once when closed, so a run that fails half-way
leaves no set that looks complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import webdataset as wds
from PIL import Image

from .preprocess import decode_image

SIZES_FILE = "sizes.json"
SAFE_KEY = "a plain file name: no '/', '\\' or NUL, and not empty, '.' or '..'"


def encode_image(image: Image.Image | bytes, fmt: str = "png") -> tuple[str, bytes]:
    """Return (extension, bytes); raw JPEG/PNG bytes pass through untouched."""
    if isinstance(image, (bytes, bytearray)):
        head = bytes(image[:8])
        if head.startswith(b"\x89PNG"):
            return "png", bytes(image)
        if head.startswith(b"\xff\xd8"):
            return "jpg", bytes(image)
        image = decode_image(image)
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


def unsafe_key(key: str) -> bool:
    """Whether ``key`` would not stay one plain file name in the tar (extracting it could write elsewhere)."""
    return key in ("", ".", "..") or any(ch in key for ch in "/\\\0")


def sample_to_tar_entry(key: str, image, record: dict, mask: Image.Image | None = None) -> dict:
    """The dict a ``wds.TarWriter`` writes for one canonical sample."""
    if unsafe_key(key):
        raise ValueError(f"sample key {key!r} is not a plain file name; expected {SAFE_KEY}")
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


def record_shard_sizes(out_dir: str | Path, counts: dict[str, int]) -> None:
    """Add finished shards to ``sizes.json`` (rewritten atomically)."""
    sizes = {**read_sizes(out_dir), **counts}
    path = Path(out_dir) / SIZES_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(sizes.items())), indent=1))
    os.replace(tmp, path)


def record_shard_size(out_dir: str | Path, shard_name: str, count: int) -> None:
    record_shard_sizes(out_dir, {shard_name: count})


def write_tar(path: str | Path, entries: Iterable[dict]) -> int:
    """Write tar entries to ``path`` atomically; return the count."""
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
    return count


def write_shard(path: str | Path, entries: Iterable[dict]) -> int:
    """Write tar entries to ``path`` atomically and record its size; return the count."""
    count = write_tar(path, entries)
    record_shard_size(Path(path).parent, Path(path).name, count)
    return count


class ShardSetWriter:
    """Streams samples into ``{prefix}-%06d.tar`` shards of ``samples_per_shard`` each.

    Shards are staged in a hidden folder inside ``out_dir``; :meth:`close` moves
    them into place and lists them in ``sizes.json``, :meth:`abort` (or leaving
    a ``with`` block by an exception) deletes them.
    """

    def __init__(self, out_dir: str | Path, prefix: str, samples_per_shard: int = 1000):
        self.out_dir, self.prefix, self.per_shard = Path(out_dir), prefix, samples_per_shard
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._pending: list[dict] = []
        self._staging: Path | None = None
        self._counts: dict[str, int] = {}
        self.total = 0

    def write(self, key: str, image, record: dict, mask: Image.Image | None = None) -> None:
        self._pending.append(sample_to_tar_entry(key, image, record, mask))
        if len(self._pending) >= self.per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.prefix}-partial-", dir=self.out_dir))
        name = f"{self.prefix}-{len(self._counts):06d}.tar"
        self._counts[name] = write_tar(self._staging / name, self._pending)
        self.total += self._counts[name]
        self._pending = []

    def close(self) -> int:
        """Write the last shard, move every shard into ``out_dir`` and list them in ``sizes.json``."""
        self._flush()
        if self._staging is not None:
            for name in self._counts:
                os.replace(self._staging / name, self.out_dir / name)
            record_shard_sizes(self.out_dir, self._counts)
            self._staging.rmdir()
            self._staging = None
        return self.total

    def abort(self) -> None:
        """Delete every shard written so far; nothing of this set is left in ``out_dir``."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        self._pending = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.abort()
