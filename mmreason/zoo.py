"""The model registry: names → family + architecture config, and family classes by name.

Mirrors timm's ``register_model`` / ``list_models``: each family registers
itself and its named configurations in its own file. The built-in families
(``mmreason.models``) are imported the first time a lookup needs them, so this
module imports no family and no torch, and is safe to import from anywhere;
:func:`catalogue` names the built-in models without importing them at all (what
``mmreason list`` shows in a fraction of a second). Models are built by
:func:`mmreason.build.create_model`. An export stores its family explicitly,
so loading never guesses a model type from a path.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

BUILTIN_PACKAGE = "mmreason.models"  # importing it registers every built-in family and model
BUILTIN_FOLDER = Path(__file__).parent / "models"
_FAMILIES: dict[str, type[nn.Module]] = {}
_MODELS: dict[str, dict] = {}


def _load_builtins() -> None:
    """Import the built-in families (once: later calls find them in ``sys.modules``); by name, as they
    import this module to register themselves."""
    importlib.import_module(BUILTIN_PACKAGE)


def register_family(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model class loadable by its family name."""

    def wrap(cls):
        _FAMILIES[name] = cls
        cls.family = name
        return cls

    return wrap


def family_class(name: str) -> type[nn.Module]:
    _load_builtins()
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def register_model(name: str, family: str, config: dict, description: str = "", recipe: str | None = None) -> None:
    _MODELS[name] = {"family": family, "config": copy.deepcopy(config), "description": description,
                     "recipe": recipe}


def list_models(pattern: str = "*") -> list[str]:
    _load_builtins()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> dict:
    _load_builtins()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
    return copy.deepcopy(_MODELS[name])


def _registered_in(path: Path) -> dict[str, str]:
    """``{name: description}`` of a file's top-level ``register_model(name, family, config, description)`` calls."""
    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "register_model":
            arguments = dict(zip(("name", "family", "config", "description"), call.args))
            arguments |= {keyword.arg: keyword.value for keyword in call.keywords}
            found[ast.literal_eval(arguments["name"])] = ast.literal_eval(arguments.get("description", ast.Constant("")))
    return found


def catalogue(pattern: str = "*") -> dict[str, str]:
    """``{name: description}`` of the models matching ``pattern``, built-in and registered so far, without
    importing the built-in families (their files are read instead)."""
    found = {name: text for path in sorted(BUILTIN_FOLDER.glob("*.py")) for name, text in _registered_in(path).items()}
    found |= {name: info["description"] for name, info in _MODELS.items()}
    return {name: found[name] for name in sorted(found) if fnmatch.fnmatch(name, pattern)}


def merge_config(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base`` (dicts merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
