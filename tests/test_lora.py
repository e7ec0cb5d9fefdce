"""LoRA fine-tuning from an export: only the adapters (and unfrozen parts) train, the export merges them
into ordinary weights with the same outputs, or keeps them apart to be put back onto their export."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TEST_CONFIG, model_images, train_steps, training_tensors, valid_records

from mmreason.build import create_model
from mmreason.export import ExportError, checkpoint_payload, load_export, model_from_checkpoint, save_export
from mmreason.layers.lora import merged_state_dict
from mmreason.models.baseline import VisionLanguageModel

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture
def base(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    return save_export(VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer), tmp_path / "base")


def _trained(base, steps: int = 20, **lora):
    torch.manual_seed(1)
    model = create_model(init={"from": str(base), "frozen": ["vision"]}, lora={**LORA, **lora})
    images, records = model_images(model, 4), valid_records(4)
    losses, _ = train_steps(model, images, records, steps, lr=1e-2)
    return model.eval(), images, records, losses


def _logits(model, images, records):
    with torch.no_grad():
        return model(images, **training_tensors(model, records)).logits


def test_only_the_adapters_and_unfrozen_parts_train_and_the_loss_falls(base):
    model, _, _, losses = _trained(base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert any(n.startswith("lm.") and ".q_proj.lora_A." in n for n in trainable)  # all-linear: attention too
    assert not model.lm.get_input_embeddings().weight.requires_grad
    assert losses[-1] < 0.9 * losses[0]  # embeddings and head stay the (random) base's


def test_the_export_merges_the_adapters_into_ordinary_weights_with_the_same_outputs(base, tmp_path):
    model, images, records, _ = _trained(base)
    folder = save_export(model, tmp_path / "merged")
    loaded = load_export(folder)
    assert not any("lora_" in k or "base_layer" in k for k in loaded.state_dict())
    torch.testing.assert_close(_logits(loaded, images, records), _logits(model, images, records), atol=1e-5, rtol=1e-5)
    frozen = load_export(base).lm.get_input_embeddings().weight
    assert torch.equal(loaded.lm.get_input_embeddings().weight, frozen)  # what LoRA froze is the base's


def test_a_checkpoint_of_a_lora_run_exports_merged(base):
    model, images, records, _ = _trained(base, steps=3)
    payload = checkpoint_payload(model)
    rebuilt = model_from_checkpoint(payload, model.state_dict(), "run.ckpt").eval()
    torch.testing.assert_close(_logits(rebuilt, images, records), _logits(model, images, records), atol=1e-5, rtol=1e-5)


def test_adapters_alone_go_back_onto_their_export_only(base, tmp_path, tiny_tokenizer):
    model, images, records, _ = _trained(base, save="adapters")
    folder = save_export(model, tmp_path / "adapters")
    assert (folder / "adapters.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert (folder / "adapters.safetensors").stat().st_size < (base / "model.safetensors").stat().st_size / 4
    with pytest.raises(ExportError, match="holds LoRA adapters only.*adapters="):
        load_export(folder)
    restored = load_export(base, adapters=folder)
    torch.testing.assert_close(_logits(restored, images, records), _logits(model, images, records), atol=1e-6, rtol=0)
    torch.manual_seed(5)
    other = save_export(VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer), tmp_path / "other")
    with pytest.raises(ExportError, match="trained on another export"):
        load_export(other, adapters=folder)


def test_vision_lora_and_bad_settings(base):
    model = create_model(init={"from": str(base)}, lora={**LORA, "language": None, "vision": ["qkv"]})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert trainable and all(n.startswith("vision.") for n in trainable)
    with pytest.raises(ValueError, match="rank >= 1"):
        create_model(init={"from": str(base)}, lora={"rank": 0})
    with pytest.raises(ValueError, match="lora.language .'nothing_here'. matches no layer"):
        create_model(init={"from": str(base)}, lora={"language": ["nothing_here"]})
    with pytest.raises(ValueError, match="lora takes"):
        create_model(init={"from": str(base)}, lora={"ranks": 4})


def test_merging_is_w_plus_b_a_times_alpha_over_rank():
    a, b, w = torch.randn(2, 3), torch.randn(4, 2), torch.randn(4, 3)
    state = {"x.base_layer.weight": w, "x.lora_A.default.weight": a, "x.lora_B.default.weight": b,
             "y.weight": torch.ones(1)}
    merged = merged_state_dict(state, {"rank": 2, "alpha": 6})
    assert set(merged) == {"x.weight", "y.weight"}
    torch.testing.assert_close(merged["x.weight"], w + 3 * b @ a)


def test_a_recipe_fits_with_lora_and_exports_an_ordinary_model(tmp_path):
    from conftest import fit_args, mmreason, write_shards

    data = tmp_path / "data"
    data.mkdir()
    write_shards(data, "train", [4, 4, 4])
    write_shards(data, "val", [4])
    root = tmp_path / "run"
    mmreason(*fit_args(data, root, 2, "--model.init_args.lora", '{"rank": 4, "language": ["q_proj", "v_proj"]}'))
    model = load_export(root / "export")
    assert not any("lora_" in k for k in model.state_dict())
    config = (root / "export" / "config.json").read_text()
    assert '"lora"' in config  # the recipe it came from says how it was trained
