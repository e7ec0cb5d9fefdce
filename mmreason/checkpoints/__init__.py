"""Released checkpoints → ordinary export folders (``mmreason convert FORMAT SRC --out EXPORT``).

Each format is one module with a ``convert(folder) -> model`` function that reads the upstream
layout by name (no upstream code runs); the export records where it came from.
"""

from __future__ import annotations

from pathlib import Path

from mmreason.checkpoints import llava_hf
from mmreason.checkpoints.source import CheckpointError, resolve_source
from mmreason.export import save_export

CONVERTERS = {llava_hf.FORMAT: llava_hf}


def convert(fmt: str, src: str, out: str | Path) -> Path:
    """Convert the checkpoint at ``src`` (a folder or a hub id) in format ``fmt`` into the export ``out``."""
    if fmt not in CONVERTERS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; formats: {', '.join(sorted(CONVERTERS))}")
    converter = CONVERTERS[fmt]
    model = converter.convert(resolve_source(src))
    return save_export(model, out, source={"id": src, "format": fmt, "converter_version": converter.CONVERTER_VERSION})
