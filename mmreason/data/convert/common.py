"""What every converter shares: its error types, image reading and the sink that writes shards.

Converters fail loudly on bad source data (the streaming reader is the one that
skips): a broken record found here names its file, id or line, so it is fixed
once instead of being skipped on every epoch. A record whose image (or mask)
file is missing, unreadable or truncated is the exception: large
collections always hold a few, so the record is skipped and named, with its
file and why, in the report and in ``{split}-skipped.jsonl``; ``strict`` makes
it an error instead. A failed conversion leaves no shards behind. Images over
the shard reader's default pixel limit are refused here, before they are
decoded, as the reader would skip them anyway.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path, PurePath

from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..preprocess import DEFAULT_MAX_PIXELS, ImageTooLarge, decode_image, to_rgb
from ..schema import RecordError, validate_record
from ..writer import ShardSetWriter, encode_image

log = logging.getLogger(__name__)

# Files stored byte for byte: 8-bit images every decoder turns into RGB the same way.
PASS_THROUGH_MODES = {"JPEG": {"L", "RGB"}, "PNG": {"1", "L", "LA", "P", "RGB", "RGBA"}}
EXIF_ORIENTATION = 0x0112
KEY_UNSAFE = re.compile(r"[^\w-]+")
SKIPPED_SUFFIX = "skipped.jsonl"


class ConversionError(ValueError):
    """Source data that cannot be converted; the message says where and what was expected."""


class UnusableFile(ConversionError):
    """A record's file that cannot be used; ``reason`` (e.g. ``missing_image``) is what the report counts."""

    def __init__(self, message: str, path: Path, reason: str):
        super().__init__(message)
        self.path, self.reason = path, reason


def decode_utf8(data: bytes, where: str, first_line: int = 1) -> str:
    """``data`` (starting at line ``first_line`` of ``where``) as text, or an error naming the line and byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        raise ConversionError(f"{where} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}: {err.reason}); "
                              f"expected a UTF-8 encoded file: re-save it as UTF-8") from err


def read_json(path: Path, what: str):
    """Parse a whole JSON file, naming it (and the position) when it is missing or malformed."""
    if not path.is_file():
        raise UnusableFile(f"{what} file {path} not found; expected a JSON file at that path", path,
                           "missing_json")
    try:
        return json.loads(decode_utf8(path.read_bytes(), f"{what} file {path}"))
    except json.JSONDecodeError as err:
        raise UnusableFile(f"{what} file {path}: invalid JSON at line {err.lineno} column {err.colno} "
                           f"({err.msg})", path, "unreadable_json") from err
    except ConversionError as err:
        raise UnusableFile(str(err), path, "unreadable_json") from err


def image_path(images: Path, relative: str, where: str) -> Path:
    """``images / relative`` for a path taken from an annotation file, which must not lead out of ``images``.

    Absolute paths and ``..`` are refused; links the user put inside ``images``
    (e.g. to a dataset on shared storage) are followed as usual.
    """
    parts = PurePath(relative).parts
    if PurePath(relative).is_absolute() or ".." in parts:
        raise ConversionError(f"{where}: image path {relative!r} must lie inside the images folder {images}; "
                              f"expected a path relative to it, without '..' or a leading '/'")
    return images.joinpath(*parts)


def read_image(path: Path, where: str, kind: str = "image") -> tuple[bytes, Image.Image]:
    """Read and fully decode an image (or a ``kind="mask"``), so a broken file fails here rather than
    mid-training: a missing, unreadable or truncated one as :class:`UnusableFile`."""
    if not path.is_file():
        raise UnusableFile(f"{where}: {kind} file {path} not found; expected an image at that path", path,
                           f"missing_{kind}")
    try:
        data = path.read_bytes()
        image = decode_image(data, DEFAULT_MAX_PIXELS)
    except ImageTooLarge as err:  # a decompression bomb is suspect, not a stray broken file: always an error
        raise ConversionError(f"{where}: {kind} {path} is too large: {err}; downscale it (the shard reader "
                              f"refuses images over that limit too)") from err
    except (OSError, SyntaxError, ValueError) as err:
        reason = "unknown file type" if isinstance(err, UnidentifiedImageError) else str(err)
        problem = "truncated" if "truncated" in reason else "unreadable"
        raise UnusableFile(f"{where}: cannot read {kind} {path} ({reason}); expected a JPEG, PNG or other file "
                           f"PIL can open", path, f"{problem}_{kind}") from err
    return data, image


def load_image(path: Path, where: str, upright: bool = False) -> tuple[bytes, tuple[int, int]]:
    """Return the bytes a shard stores for ``path`` and the (width, height) boxes and masks refer to.

    8-bit JPEG/PNG files pass through untouched; other modes (CMYK, 16-bit, ...)
    become RGB PNG. ``upright`` applies the EXIF orientation, for annotations
    drawn on the rotated picture (as labelme and OpenCV show it).
    """
    data, image = read_image(path, where)
    if upright and image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)  # re-encoded below: the stored pixels must be upright
    elif image.mode in PASS_THROUGH_MODES.get(image.format, ()):
        return data, image.size
    if image.mode not in ("L", "RGB", "RGBA"):
        image = to_rgb(image)
    return encode_image(image)[1], image.size


@lru_cache(maxsize=4)
def blank_image(size: tuple[int, int]) -> bytes:
    """A white PNG standing in for a missing picture, so image-less samples keep one shape."""
    return encode_image(Image.new("RGB", size, "white"))[1]


def sample_key(name: str) -> str:
    """WebDataset splits a file name at its first dot: keep keys to letters, digits, '_' and '-'."""
    return KEY_UNSAFE.sub("_", name)


def progress(items: Iterable, desc: str, total: int | None = None) -> Iterable:
    """A progress bar on a terminal, nothing in logs; ``total`` defaults to ``len(items)`` if it has one."""
    return tqdm(items, desc=desc, total=total, unit=" records", disable=None, leave=False)


class ShardSink:
    """Validates samples, writes one shard set per split and tallies what was written and skipped.

    Used as a context manager: leaving the block by an exception deletes every
    shard written so far, so a failed conversion leaves no set behind. ``strict``
    makes an unusable file an error rather than a skipped record.
    """

    def __init__(self, out: Path, samples_per_shard: int, strict: bool = False):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
        self.out, self.per_shard, self.strict = Path(out), samples_per_shard, strict
        self._writers: dict[str, ShardSetWriter] = {}
        self._keys: dict[str, set[str]] = {}
        self.skipped: Counter[str] = Counter()
        self.unusable: dict[str, list[dict]] = {}
        self.blank = 0

    def _writer(self, split: str) -> ShardSetWriter:
        if split not in self._writers:
            existing = sorted(self.out.glob(f"{split}-*.tar"))
            if existing:
                raise ConversionError(
                    f"{self.out} already holds {split!r} shards ({existing[0].name}, ...); expected no shards "
                    f"of that split there: remove them or choose another output folder"
                )
            self._writers[split] = ShardSetWriter(self.out, prefix=split, samples_per_shard=self.per_shard)
            self._keys[split] = set()
        return self._writers[split]

    def write(self, split: str, name: str, image: bytes, size: tuple[int, int], record: dict, where: str,
              mask: Image.Image | None = None) -> None:
        """Write one sample; a record with ``meta["no_image"]`` is counted as a blank image."""
        key = sample_key(name)
        try:
            canonical = validate_record(record, key=key, image_size=size).to_json()
        except RecordError as err:
            raise ConversionError(f"{where}: {err}") from err
        writer = self._writer(split)
        if key in self._keys[split]:
            raise ConversionError(f"{where}: sample key {key!r} is already used in split {split!r}; "
                                  f"expected unique ids")
        self._keys[split].add(key)
        writer.write(key, image, canonical, mask)
        self.blank += bool(canonical["meta"].get("no_image"))

    def skip(self, reason: str, where: str, count: int = 1, level: int = logging.DEBUG) -> None:
        self.skipped[reason] += count
        log.log(level, "skipped %s: %s", where, reason)

    def skip_unusable(self, split: str, where: str, err: UnusableFile) -> None:
        """Skip the record at ``where`` and name it with its file in the report; raise ``err`` when strict."""
        if self.strict:
            raise err
        self._writer(split)  # claims the split: refuses to add to an existing set, as a written sample would
        self.unusable.setdefault(split, []).append(
            {"record": where, "file": str(err.path), "reason": err.reason, "message": str(err)})
        self.skip(err.reason, str(err), level=logging.WARNING)

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            for writer in self._writers.values():
                writer.abort()

    def finish(self) -> dict:
        """Close every shard set, list each split's skipped records in ``{split}-skipped.jsonl`` and return
        (and log) the report."""
        splits = {split: writer.close() for split, writer in self._writers.items()}
        for split, entries in self.unusable.items():
            path = self.out / f"{split}-{SKIPPED_SUFFIX}"
            self.out.mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
            path.write_text(lines, encoding="utf-8")
        report = {
            "out": str(self.out),
            "written": sum(splits.values()),
            "skipped": dict(self.skipped),
            "skipped_records": [entry for entries in self.unusable.values() for entry in entries],
            "blank_images": self.blank,
            "splits": splits,
            "shards": [f"{split}-{i:06d}.tar" for split, n in splits.items()
                       for i in range(math.ceil(n / self.per_shard))],
        }
        if not report["written"]:
            log.warning("no samples written to %s (skipped: %s)", self.out, report["skipped"])
        log.info("wrote %d samples in %d shards to %s; per split %s; skipped %s; blank images %d",
                 report["written"], len(report["shards"]), self.out, splits, report["skipped"], self.blank)
        return report

