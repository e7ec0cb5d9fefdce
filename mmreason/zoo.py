"""The model registry: names → family + architecture config, and family classes by name.

Mirrors timm's ``register_model`` / ``list_models`` / ``create_model``. An
export stores its family explicitly, so loading never guesses a model type
from a path.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable

from torch import nn

from mmreason.models.config_schema import check_config

_FAMILIES: dict[str, type[nn.Module]] = {}
_MODELS: dict[str, dict] = {}
_BUILTINS_LOADED = False


def register_family(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model class loadable by its family name."""

    def wrap(cls):
        _FAMILIES[name] = cls
        cls.family = name
        return cls

    return wrap


def family_class(name: str) -> type[nn.Module]:
    _register_builtin()
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def register_model(name: str, family: str, config: dict, description: str = "", recipe: str | None = None) -> None:
    _MODELS[name] = {"family": family, "config": copy.deepcopy(config), "description": description,
                     "recipe": recipe}


def list_models(pattern: str = "*") -> list[str]:
    _register_builtin()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> dict:
    _register_builtin()
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


def create_model(name: str, **overrides) -> nn.Module:
    """A freshly initialised model of a registered name, with config keys overridden; a key the
    family does not read (at any depth) is refused."""
    info = model_info(name)
    cls = family_class(info["family"])
    config = merge_config(info["config"], overrides)
    check_config(config, cls.config_schema, info["family"], "model_config")
    return cls(config)


def _register_builtin() -> None:
    """Load the built-in families once, whatever a user registered before."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from mmreason.models import registry  # noqa: F401  (registers the built-in families and models)
