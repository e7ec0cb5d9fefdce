"""The MC-CoT recipes as a user runs them: convert ScienceQA, train both stages, predict, eval."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, mmreason
from test_convert import scienceqa_folder
from test_mccot import MCCOT_TEST_CONFIG

from mmreason.data.convert import convert

RECIPE = ROOT / "recipes" / "mccot" / "scienceqa-base.yaml"


def stage_args(data, root, stage: str, *extra: str) -> list[str]:
    """The real-scale recipe with a tiny model on CPU, 2 steps."""
    tiny = {**{k: v for k, v in MCCOT_TEST_CONFIG.items() if k != "stages"}, "tokenizer": "synth-bpe"}  # open vocabulary
    return [
        "fit", "-c", str(RECIPE), "--trainer.default_root_dir", str(root),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
        "--trainer.max_steps", "2", "--trainer.max_epochs", "null", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--model.init_args.model", "mccot-tiny",
        *(["--model.init_args.model_config", json.dumps(tiny)] if stage != "answer" else []),
        "--model.init_args.stage", stage, "--model.init_args.passes", "2",
        "--model.init_args.max_new_tokens", "6", "--model.init_args.warmup_steps", "1",
        "--data.init_args.train", str(data), "--data.init_args.val", str(data), "--data.init_args.test", str(data),
        "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
        "--data.init_args.num_workers", "0", *extra,
    ]


@pytest.fixture(scope="module")
def scienceqa_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("sqa")
    convert("scienceqa", scienceqa_folder(root / "raw"), root / "shards")
    return root / "shards"


def test_scienceqa_recipe_trains_both_stages_then_the_export_predicts_and_evaluates(scienceqa_shards, tmp_path):
    mmreason(*stage_args(scienceqa_shards, tmp_path / "rationale", "rationale"))
    stage1 = tmp_path / "rationale" / "export"
    config = json.loads((stage1 / "config.json").read_text())
    assert config["config"]["stages"] == ["rationale"]
    assert config["metrics"]["global_step"] == 2 and "val/rationale_rougeL" in config["metrics"]

    mmreason(*stage_args(scienceqa_shards, tmp_path / "answer", "answer",
                         "--model.init_args.init", f"{{from: {stage1}}}"))
    pipeline = tmp_path / "answer" / "export"
    config = json.loads((pipeline / "config.json").read_text())
    assert config["config"]["stages"] == ["rationale", "answer"]
    assert config["config"]["self_consistency"]["passes"] == 2
    assert "val/accuracy" in config["metrics"]

    image = next((scienceqa_shards.parent / "raw").rglob("image.png"))
    out = mmreason("predict", "--model", str(pipeline), "--image", str(image), "--question", "which is grey?",
                   "--choices", "this", "that", "--votes", "3", "--max-new-tokens", "6", "--json")
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(answer) == {"rationale", "text", "answer", "confidence", "votes"} and len(answer["votes"]) == 3
    out = mmreason("predict", "--model", str(pipeline), "--image", str(image), "--question", "which is grey?",
                   "--max-new-tokens", "6")
    assert out.stdout.startswith("rationale: ") and "\nanswer: " in out.stdout

    mmreason("eval", "--model", str(pipeline), "--data", str(scienceqa_shards), "--split", "train",
             "--votes", "2", "--max-new-tokens", "6", "--out", str(tmp_path / "report.json"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 2 and set(report["rationale"]) == {"bleu1", "bleu4", "rougeL", "n", "skipped"}
    assert report["rationale"]["n"] + report["rationale"]["skipped"] == 2
    assert 0.0 <= report["mean_confidence"] <= 1.0
