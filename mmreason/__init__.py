"""mmreason: a model zoo of multimodal reasoning models.

``mmreason.load(folder)`` rebuilds an exported model offline; the registry
(``list_models``, ``create_model``) names the built-in configurations.
The names below are imported when first used, so ``import mmreason`` (and the
``mmreason`` command's help) starts without torch; the registry imports the
built-in families the first time it is asked about them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load": ("mmreason.export", "load_export"),
    "create_model": ("mmreason.build", "create_model"),
    "list_models": ("mmreason.zoo", "list_models"),
    "register_model": ("mmreason.zoo", "register_model"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmreason' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
