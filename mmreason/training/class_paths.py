"""Which classes a recipe file may name.

LightningCLI imports every ``class_path`` it reads, and importing a module runs
its code, so a recipe from elsewhere could run anything on the machine (even a
module lying beside it). Every class a recipe names — ``class_path`` entries
and the short ``model: pkg.Class`` form — must live under one of
:data:`ALLOWED_PREFIXES`; names without a dot are resolved by LightningCLI
among classes already imported, so they need no check. Strategies are Lightning's registered names
(``ddp``) or :mod:`mmreason.training.sharding`'s, whose arguments name no code; Lightning's own strategy
classes stay out, as their FSDP and DeepSpeed arguments take wrap policies and other callables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

ALLOWED_PREFIXES = (
    "mmreason.", "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.", "lightning.pytorch.plugins.",
    "torch.optim.",
)
CLASS_KEYS = ("model", "data", "optimizer", "lr_scheduler", "callbacks", "logger", "plugins", "strategy")
CONFIG_FLAGS = ("-c", "--config")


class ForbiddenClass(ValueError):
    """A recipe names a class outside the allowed packages."""


def _named_classes(node, where: str) -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "class_path":
                yield here, value
            elif key in CLASS_KEYS and isinstance(value, str):
                yield here, value
            elif key in CLASS_KEYS and isinstance(value, list):
                yield from ((f"{here}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str))
            yield from _named_classes(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _named_classes(value, f"{where}[{i}]")


def check_recipe(tree, source: str) -> None:
    """Raise :class:`ForbiddenClass` if the parsed recipe ``tree`` names a class outside the allowed packages."""
    for where, name in _named_classes(tree, ""):
        if not isinstance(name, str):
            raise ForbiddenClass(f"{source}: {where} must be a class name (a string), got {type(name).__name__}")
        if "." in name and not name.strip().startswith(ALLOWED_PREFIXES):
            raise ForbiddenClass(
                f"{source}: {where} names {name!r}; a recipe may only name classes under "
                f"{', '.join(p.rstrip('.') for p in ALLOWED_PREFIXES)}"
            )


def recipe_files(args: list[str]) -> list[Path]:
    """The config files a LightningCLI command line reads: ``-c FILE``, ``--config FILE``, ``--config=FILE``."""
    files = []
    for i, arg in enumerate(args):
        if arg in CONFIG_FLAGS and i + 1 < len(args):
            files.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def check_command_line(args: list[str]) -> None:
    """Check every recipe file named on a LightningCLI command line before LightningCLI reads it."""
    for path in recipe_files(args):
        if path.is_file():  # a missing file is LightningCLI's error to report
            check_recipe(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
