"""JSON Lines of canonical records, plus an image path (and optional mask path), to shards.

The simplest way to bring one's own data: write the record the shards hold,
name its picture, and every problem is reported with its line number.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .common import (
    ConversionError,
    ShardSink,
    UnusableFile,
    decode_utf8,
    image_path,
    load_image,
    progress,
    read_image,
)

RECORD_FIELDS = ("question", "answer", "choices", "rationale", "steps", "task", "meta", "turns")
SOURCE_FIELDS = ("id", "image", "mask")


def load_mask(path: Path, size: tuple[int, int], where: str) -> Image.Image:
    """The mask as 0/255: any non-zero pixel is foreground (so 0/1 and 0/255 masks both work)."""
    _, mask = read_image(path, where, kind="mask")
    if mask.size != size:
        raise ConversionError(f"{where}: mask {path} is {mask.size[0]}x{mask.size[1]}; expected the image's "
                              f"size {size[0]}x{size[1]}")
    return mask.convert("L").point(lambda v: 255 if v else 0)


def parse_line(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConversionError(f"{where}: invalid JSON ({err.msg} at column {err.colno}); expected one JSON "
                              f"object per line") from err
    if not isinstance(obj, dict):
        raise ConversionError(f"{where}: expected a JSON object with fields {RECORD_FIELDS + SOURCE_FIELDS}, "
                              f"got {line.strip()[:80]!r}")
    unknown = sorted(set(obj) - set(RECORD_FIELDS) - set(SOURCE_FIELDS))
    if unknown:
        raise ConversionError(f"{where}: unknown field(s) {unknown}; expected only {RECORD_FIELDS + SOURCE_FIELDS}")
    for name in ("image", "mask"):
        value = obj.get(name)
        if (name == "image" or value is not None) and (not isinstance(value, str) or not value):
            raise ConversionError(f"{where}: field {name!r} must be a file path relative to the images folder, "
                                  f"got {value!r}")
    return obj


def count_lines(path: Path) -> int:
    """Lines in ``path`` (a last line without a newline counts), read in blocks: the progress bar's total."""
    lines, last = 0, b"\n"
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            lines, last = lines + block.count(b"\n"), block[-1:]
    return lines + (last != b"\n")


def convert_jsonl(src: Path, out: Path, images: Path, split: str, samples_per_shard: int,
                  strict: bool = False) -> dict:
    """Convert ``src``; ``image`` and ``mask`` paths are relative to ``images``; key = ``id`` or the line."""
    if not src.is_file():
        raise ConversionError(f"JSON Lines file {src} not found; expected one record per line")
    with ShardSink(out, samples_per_shard, strict) as sink, open(src, "rb") as lines:
        for number, raw in enumerate(progress(lines, "jsonl", total=count_lines(src)), start=1):
            line = decode_utf8(raw, str(src), first_line=number)
            if not line.strip():
                continue
            obj = parse_line(line, f"{src} line {number}")
            key = str(obj.get("id") or f"line{number:07d}")
            where = f"{src} line {number} (id {key!r})"
            try:
                image, size = load_image(image_path(images, obj["image"], where), where)
                mask = None
                if obj.get("mask"):
                    mask = load_mask(image_path(images, obj["mask"], where), size, where)
            except UnusableFile as err:
                sink.skip_unusable(split, where, err)
                continue
            record = {name: obj[name] for name in RECORD_FIELDS if name in obj}
            sink.write(split, key, image, size, record, where, mask)
        return sink.finish()
