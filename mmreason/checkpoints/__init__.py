"""Released checkpoints → ordinary export folders (``mmreason convert FORMAT SRC --out EXPORT``).

Each format is one module with a ``convert(folder) -> model`` function that reads the upstream
layout by name (no upstream code runs); the export records where it came from.
"""

from __future__ import annotations

from pathlib import Path

from mmreason.checkpoints import lisa, llava, llava_hf, meteor, mmcot, sam
from mmreason.checkpoints.source import CheckpointError, resolve_source
from mmreason.export import save_export

CONVERTERS = {module.FORMAT: module for module in (llava_hf, llava, lisa, meteor, mmcot, sam)}


def convert(fmt: str, src: str, out: str | Path, dtype: str | None = None, **options) -> Path:
    """Convert the checkpoint at ``src`` (a folder or a hub id) in format ``fmt`` into the export ``out``,
    weights stored in ``dtype`` (default float32); ``options`` are the format's own (e.g. ``vision`` for
    ``llava``, ``answer`` for ``mmcot``)."""
    if fmt not in CONVERTERS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; formats: {', '.join(sorted(CONVERTERS))}")
    converter = CONVERTERS[fmt]
    unknown = sorted(set(options) - set(converter.OPTIONS))
    if unknown:
        raise CheckpointError(f"format {fmt!r} takes no option {unknown[0]!r}; its options: {converter.OPTIONS or 'none'}")
    model = converter.convert(resolve_source(src), **options)
    return save_export(model, out, source={"id": src, "format": fmt, "converter_version": converter.CONVERTER_VERSION},
                       dtype=dtype)
