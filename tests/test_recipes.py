"""Every recipe parses against the classes it names (unknown keys and wrong types fail here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmreason.training.cli import parse_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(path):
    config = parse_recipe(str(path))
    raw = yaml.safe_load(path.read_text())
    assert config["model"]["class_path"] == raw["model"]["class_path"]
    assert config["trainer"]["default_root_dir"].startswith("runs/")


def test_a_misspelt_key_is_rejected(tmp_path, capsys):
    path = RECIPES[0]
    raw = yaml.safe_load(path.read_text())
    raw["model"]["init_args"]["learning_rate"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit):  # jsonargparse reports the error and exits, as LightningCLI does
        parse_recipe(str(bad))
    assert "learning_rate" in capsys.readouterr().err
