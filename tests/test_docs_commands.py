"""Every ``mmreason …`` command written in the README, a model card or a recipe's header parses: a
renamed flag, a positional argument given as an option or a recipe that moved fails here, not in a
user's terminal. Lightning verbs are parsed and type-checked against the classes they name without
building anything; the others by the command's own parser."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import ROOT

from mmreason.cli import LIGHTNING_VERBS, _parser
from mmreason.training.cli import RecipeParser, run_lightning_cli

FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
RECIPE_COMMAND = re.compile(r"#.*?(?<!`)\b(mmreason (?:fit|validate|test|data|eval|predict|export|convert|vocab|list)\b[^`#]*)")
LOOP = re.compile(r"\bfor (\w+) in (\S+)")  # a shell loop's variable stands for its first value


def _fenced_commands(text: str) -> list[str]:
    commands = []
    for block in FENCE.findall(text):
        values = dict(LOOP.findall(block))
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split(" # ")[0].split(" && "):
                command = re.sub(r"\$\{?(\w+)\}?", lambda m, v=values: v.get(m[1], m[0]), command.strip())
                if command.startswith("mmreason ") and not command.split()[1].endswith(":"):  # not its output
                    commands.append(command)
    return commands


def documented_commands() -> list[tuple[str, str]]:
    found = [("README.md", c) for c in _fenced_commands((ROOT / "README.md").read_text())]
    for card in sorted((ROOT / "model_cards").glob("*.md")):
        found += [(card.name, c) for c in _fenced_commands(card.read_text())]
    for recipe in sorted((ROOT / "recipes").rglob("*.yaml")):
        for line in recipe.read_text().splitlines():
            match = RECIPE_COMMAND.search(line) if line.lstrip().startswith("#") else None
            if match:
                found.append((str(recipe.relative_to(ROOT)), match.group(1).strip()))
    # placeholders (…), and recipes a run writes (runs/…/config.yaml) that exist only after that run
    return [(where, c) for where, c in found if "…" not in c and "..." not in c and "-c runs/" not in c]


COMMANDS = documented_commands()


def test_the_documentation_has_commands_to_check():
    assert len(COMMANDS) > 40 and {w for w, _ in COMMANDS} >= {"README.md", "mccot.md"}


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_parses(where, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[1:]
    if argv[0] in LIGHTNING_VERBS:
        config = argv[argv.index("-c") + 1] if "-c" in argv else None
        assert config is None or (ROOT / config).is_file(), f"{where}: {config} does not exist"
        run_lightning_cli(argv[1:], RecipeParser, run=False)
    else:
        try:
            _parser().parse_args(argv)
        except SystemExit as exit:
            pytest.fail(f"{where}: `{command}` does not parse (exit {exit.code})")
