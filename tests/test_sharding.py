"""Sharded training: FSDP over two CPU processes trains as DDP does, and its checkpoints resume and
export whole; activation checkpointing leaves gradients as they were; recipes name only safe strategies."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY_TEST_CONFIG, fit_args, mmreason, model_images, valid_records, write_shards

from mmreason.export import load_export
from mmreason.models.baseline import VisionLanguageModel
from mmreason.training.class_paths import ForbiddenClass, check_recipe
from mmreason.training.cli import parse_recipe
from mmreason.training.sharding import ActivationCheckpointing, decoder_layer_classes

FSDP = ["--trainer.strategy.class_path", "mmreason.training.sharding.DecoderLayerFSDP",
        "--trainer.callbacks+=mmreason.training.sharding.ActivationCheckpointing"]
REAL_SCALE = ("meteor/clip-qwen2.5-mamba130m-step1", "star/clip-qwen2.5-reasonseg", "virl/clip-qwen2.5-sft")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, "train", [7, 2, 5])
    write_shards(folder, "val", [4, 3])
    return folder


def two_ranks(shards, root, steps: int, *extra: str) -> None:
    mmreason(*fit_args(shards, root, steps), "--data.init_args.val", str(shards / "val{0..1}-000000.tar"),
             "--trainer.accelerator", "cpu", "--trainer.devices", "2", *extra, timeout=300)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_export(folder).state_dict()


@pytest.mark.slow  # two 2-process trainings and a resume: about 90 s on 2 cores
def test_fsdp_trains_as_ddp_does_exports_the_whole_weights_and_resumes(shards, tmp_path):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    two_ranks(shards, fsdp, 4, *FSDP)
    two_ranks(shards, ddp, 4, "--trainer.strategy", "ddp")
    rows = list(csv.DictReader((fsdp / "lightning_logs" / "version_0" / "metrics.csv").open()))
    losses = [float(row["train/loss"]) for row in rows if row["train/loss"]]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    sharded, replicated = weights(fsdp / "export"), weights(ddp / "export")
    assert sharded.keys() == replicated.keys()
    for name, value in sharded.items():  # the same steps; only the order of the sums differs
        torch.testing.assert_close(value, replicated[name], rtol=0, atol=1e-4, msg=name)
    mmreason("export", "--ckpt", str(fsdp / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "again"))
    assert all(torch.equal(value, sharded[name]) for name, value in weights(tmp_path / "again").items())
    assert json.loads((fsdp / "export" / "config.json").read_text())["metrics"]["global_step"] == 4

    two_ranks(shards, fsdp, 6, *FSDP, "--ckpt_path", "last")
    state = torch.load(fsdp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 6
    assert float(state["optimizer_states"][0]["state"][0]["step"]) == 6.0  # AdamW's state came back whole
    assert not list(fsdp.rglob("*.tmp"))


def test_activation_checkpointing_recomputes_the_same_gradients(tiny_tokenizer):
    torch.manual_seed(0)
    model = VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer).train()
    images, records = model_images(model), valid_records()

    def gradients():
        model.zero_grad()
        model.batch_loss(images, records)["loss"].backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    stored = gradients()
    ActivationCheckpointing().setup(None, SimpleNamespace(model=model), "fit")
    assert all(layer.gradient_checkpointing for layer in model.lm.model.layers)
    recomputed = gradients()
    for name, grad in stored.items():
        torch.testing.assert_close(recomputed[name], grad, msg=name)


def test_the_shard_unit_is_the_language_models_decoder_layer(tiny_tokenizer):
    model = VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer)
    assert decoder_layer_classes(model) == {type(model.lm.model.layers[0])}
    with pytest.raises(ValueError, match="no transformers layers"):
        decoder_layer_classes(model.vision)


@pytest.mark.parametrize("recipe", REAL_SCALE)
def test_real_scale_recipes_shard_in_bf16(recipe):
    trainer = parse_recipe(ROOT / "recipes" / f"{recipe}.yaml")["trainer"]
    assert trainer["precision"] == "bf16-mixed"
    assert trainer["strategy"]["class_path"] == "mmreason.training.sharding.DecoderLayerFSDP"


def test_a_recipe_names_no_strategy_whose_arguments_take_code():
    lightning_fsdp = {"trainer": {"strategy": {"class_path": "lightning.pytorch.strategies.FSDPStrategy"}}}
    with pytest.raises(ForbiddenClass, match="trainer.strategy.class_path"):
        check_recipe(lightning_fsdp, "recipe.yaml")
    with pytest.raises(ForbiddenClass, match="trainer.strategy"):
        check_recipe({"trainer": {"strategy": "somewhere.Strategy"}}, "recipe.yaml")
    check_recipe({"trainer": {"strategy": "fsdp"}}, "recipe.yaml")
