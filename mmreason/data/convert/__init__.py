"""Converters from users' dataset layouts to canonical shards: ``convert("llava", src, out)``.

Each converter validates every record, writes ``{split}-%06d.tar`` shards with
a ``sizes.json`` and returns a report of what it wrote and skipped; records
whose image or mask file is unusable are skipped and named (``strict``: an error).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path

from .common import ConversionError, UnusableFile
from .jsonl import convert_jsonl
from .llava import convert_llava
from .reasonseg import convert_reasonseg
from .scienceqa import convert_scienceqa

log = logging.getLogger(__name__)

CONVERTERS: dict[str, Callable[..., dict]] = {
    "llava": convert_llava,
    "jsonl": convert_jsonl,
    "scienceqa": convert_scienceqa,
    "reasonseg": convert_reasonseg,
}


def converter_options(fmt: str) -> dict[str, object]:
    """The format-specific options of a converter and their defaults."""
    params = inspect.signature(CONVERTERS[fmt]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def convert(fmt: str, src: str | Path, out: str | Path, images: str | Path | None = None, split: str = "train",
            samples_per_shard: int = 1000, strict: bool = False, **options) -> dict:
    """Convert ``src`` in format ``fmt`` to shards in ``out`` and return the report.

    ``images`` is the folder image paths are relative to: by default the folder
    holding ``src`` (a file) or ``src`` itself (a folder). ``strict`` stops at the first record whose
    image or mask is missing, unreadable or truncated instead of skipping it.
    """
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {sorted(CONVERTERS)}")
    unknown = sorted(set(options) - set(converter_options(fmt)))
    if unknown:
        raise ValueError(f"format {fmt!r} has no option(s) {unknown}; its options are {converter_options(fmt)}")
    src = Path(src)
    if not src.exists():
        raise ConversionError(f"{fmt} source {src} not found; expected an existing file or folder")
    images = Path(images) if images is not None else (src if src.is_dir() else src.parent)
    log.info("converting %s data %s (images in %s) to %s", fmt, src, images, out)
    report = CONVERTERS[fmt](src, Path(out), images, split, samples_per_shard, strict, **options)
    return {"format": fmt, **report}


__all__ = ["CONVERTERS", "ConversionError", "UnusableFile", "convert", "converter_options"]
