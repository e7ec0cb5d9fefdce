"""The model registry: names → family + architecture config, and family classes by name.

Mirrors timm's ``register_model`` / ``list_models``: each family registers
itself and its named configurations in its own file, and importing
``mmreason`` imports them all (``mmreason.models``). This module imports no
family, so it is safe to import from anywhere; models are built by
:func:`mmreason.build.create_model`. An export stores its family explicitly,
so loading never guesses a model type from a path.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable

from torch import nn

_FAMILIES: dict[str, type[nn.Module]] = {}
_MODELS: dict[str, dict] = {}


def register_family(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model class loadable by its family name."""

    def wrap(cls):
        _FAMILIES[name] = cls
        cls.family = name
        return cls

    return wrap


def family_class(name: str) -> type[nn.Module]:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def register_model(name: str, family: str, config: dict, description: str = "", recipe: str | None = None) -> None:
    _MODELS[name] = {"family": family, "config": copy.deepcopy(config), "description": description,
                     "recipe": recipe}


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> dict:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
    return copy.deepcopy(_MODELS[name])


def merge_config(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base`` (dicts merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
