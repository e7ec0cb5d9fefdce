"""The baseline VLM: training tensors, learning, generation, export round trip and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    TINY_TEST_CONFIG,
    make_image,
    make_record,
    model_images,
    train_steps,
    training_tensors,
    valid_records,
)

from mmreason.data.schema import validate_record
from mmreason.export import ExportError, load_export, save_export
from mmreason.layers.projector import build_projector
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.processor import IGNORE_INDEX, PromptTooLong
from mmreason.training.sft import SFTModule
from mmreason.zoo import merge_config


@pytest.fixture
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer)


def test_labels_cover_only_the_target(model):
    records = valid_records(2)
    inputs = model.processor.training_inputs(records)
    tok = model.tokenizer
    for row, labels, mask in zip(inputs["input_ids"], inputs["labels"], inputs["attention_mask"]):
        supervised = labels[labels != IGNORE_INDEX].tolist()
        text = tok.decode(supervised)
        assert text.startswith("<think>") and text.rstrip().endswith("</s>")
        assert "question" not in text
        assert int((row == model.image_token_id).sum()) == model.num_image_tokens == 16
        assert bool((labels[mask == 0] == IGNORE_INDEX).all())


def test_loss_decreases_on_a_fixed_batch(model):
    images, records = model_images(model), valid_records()
    losses, out = train_steps(model, images, records, steps=25)
    assert losses[-1] < 0.3 * losses[0]
    assert float(out["token_accuracy"]) > 0.8


def test_batched_generation_matches_one_at_a_time(model):
    model.eval()
    records = [validate_record({**make_record(0), "question": "is there a red circle at the left?"}),
               validate_record(make_record(1))]  # prompts of different lengths -> left padding
    images = model_images(model, 2)
    together = model.answer_batch(images, records, max_new_tokens=6)
    alone = [model.answer_batch(images[i : i + 1], records[i : i + 1], max_new_tokens=6)[0] for i in range(2)]
    assert together == alone


def test_k_samples_per_prompt(model):
    model.eval()
    torch.manual_seed(0)
    texts = model.generate(model_images(model, 2), valid_records(2), max_new_tokens=5, do_sample=True, temperature=1.5,
                           num_return_sequences=3)
    assert len(texts) == 6
    assert len(set(texts)) > 1


def test_export_round_trip_gives_identical_logits_and_predicts(model, tmp_path):
    images, records = model_images(model, 2), valid_records(2)
    model.eval()
    folder = save_export(model, tmp_path / "export", recipe={"lr": 1}, metrics={"test/accuracy": 0.5})
    loaded = load_export(folder)
    inputs = training_tensors(model, records)
    assert torch.equal(model(images, **inputs).logits, loaded(images, **inputs).logits)
    config = json.loads((folder / "config.json").read_text())
    assert config["family"] == "baseline"
    assert config["special_tokens"]["<image>"] == model.image_token_id
    assert config["config"]["preprocess"]["image_size"] == 32
    assert "test/accuracy" in (folder / "README.md").read_text()
    make_image(0).save(tmp_path / "x.png")
    out = loaded.predict(str(tmp_path / "x.png"), "is there a red circle?", max_new_tokens=4)
    assert set(out) == {"text", "rationale", "answer"} and isinstance(out["text"], str)


def test_exports_store_weights_in_the_asked_precision_readable_like_the_folder(model, tmp_path):
    full = save_export(model, tmp_path / "fp32")
    half = save_export(model, tmp_path / "bf16", dtype="bf16")
    size = {f: (f / "model.safetensors").stat().st_size for f in (full, half)}
    assert 0.45 < size[half] / size[full] < 0.55  # tied tables stored once, every float tensor halved
    assert json.loads((half / "config.json").read_text())["weights_dtype"] == "bfloat16"
    loaded = load_export(half)  # runs in float32 unless asked: the bf16-rounded weights
    weight = model.lm.get_input_embeddings().weight
    assert loaded.lm.get_input_embeddings().weight.dtype == torch.float32
    assert torch.equal(loaded.lm.get_input_embeddings().weight, weight.detach().bfloat16().float())
    for name in ("model.safetensors", "config.json"):
        assert (half / name).stat().st_mode & 0o777 == (half / "config.json").stat().st_mode & 0o777
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_export(model, tmp_path / "x", dtype="int8")


def test_training_exports_default_to_the_trainers_precision():
    from types import SimpleNamespace

    from mmreason.training.callbacks import ExportCallback

    assert ExportCallback()._dtype(SimpleNamespace(precision="bf16-mixed")) == "bfloat16"
    assert ExportCallback()._dtype(SimpleNamespace(precision="16-mixed")) == "float16"
    assert ExportCallback()._dtype(SimpleNamespace(precision="32-true")) == "float32"
    assert ExportCallback(dtype="fp32")._dtype(SimpleNamespace(precision="bf16-mixed")) == "float32"


def test_broken_exports_name_the_problem(model, tmp_path):
    folder = save_export(model, tmp_path / "export")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="model.safetensors is missing"):
        load_export(folder)
    folder = save_export(model, tmp_path / "export")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ExportError, match="not a readable safetensors"):
        load_export(folder)
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ExportError, match="config.json is not valid JSON"):
        load_export(folder)
    with pytest.raises(ExportError, match="does not exist"):
        load_export(tmp_path / "nowhere")


def test_unknown_projector_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown projector 'mlp_relu'.*linear.*mlp\{N\}x_gelu"):
        build_projector("mlp_relu", 4, 4)
    assert isinstance(build_projector("mlp3x_gelu", 4, 8)[4], torch.nn.Linear)


def test_prompt_that_would_cut_image_tokens_fails_early(tiny_tokenizer):
    config = merge_config(TINY_TEST_CONFIG, {"max_length": 20})
    model = VisionLanguageModel(config, tokenizer=tiny_tokenizer)
    with pytest.raises(PromptTooLong, match=r"needs \d+ tokens \(16 image tokens"):
        model.processor.training_inputs(valid_records(1))
    with pytest.raises(PromptTooLong, match=r"needs \d+ tokens \(16 image tokens"):
        model.processor.generation_inputs(valid_records(1))


def test_training_skips_and_counts_samples_whose_prompt_is_too_long(model):
    records = valid_records(3)
    records[1].question = "is there " * 60 + "a red circle?"
    out = model.batch_loss(model_images(model, 3), records)
    assert out["skipped"] == 1 and torch.isfinite(out["loss"])
    assert model.processor.training_inputs(records, skip_too_long=True)["rows"].tolist() == [0, 2]
    nothing = model.batch_loss(model_images(model, 1), records[1:2])  # a whole batch too long: skipped
    assert nothing["skipped"] == 1 and nothing["loss"].item() == 0.0 and nothing["loss"].requires_grad


def test_shared_prefill_for_k_samples_matches_a_plain_prefill(model):
    model.eval()
    records = [validate_record({**make_record(0), "question": "is there a red circle at the left?"}),
               validate_record(make_record(1))]  # different lengths: the shorter row is left-padded
    inputs = model.processor.generation_inputs(records)
    embeds, mask = model.embed(model_images(model, 2), inputs["input_ids"]), inputs["attention_mask"]
    assert int(mask[1].sum()) < int(mask[0].sum())
    settings = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
                    pad_token_id=model.tokenizer.pad_token_id)
    with torch.no_grad():
        plain = model.lm.generate(inputs_embeds=embeds.repeat_interleave(3, 0),
                                  attention_mask=mask.repeat_interleave(3, 0), **settings)
        cache, embeds_k, mask_k = model.shared_prefill(embeds, mask, 3)
        shared = model.lm.generate(inputs_embeds=embeds_k, attention_mask=mask_k, past_key_values=cache, **settings)
    for a, b in zip(plain.logits, shared.logits):
        assert torch.allclose(a, b, atol=1e-5)
    texts = model.generate(model_images(model, 2), records, max_new_tokens=6, num_return_sequences=3)
    assert texts == [t for t in model.generate(model_images(model, 2), records, max_new_tokens=6) for _ in range(3)]


def test_image_position_codes_survive_export(tiny_tokenizer, tmp_path):
    model = VisionLanguageModel(merge_config(TINY_TEST_CONFIG, {"image_position": "sincos2d"}),
                                tokenizer=tiny_tokenizer).eval()
    images, records = model_images(model, 2), valid_records(2)
    loaded = load_export(save_export(model, tmp_path / "export"))
    inputs = training_tensors(model, records)
    assert loaded.image_position_codes is not None
    assert torch.equal(model(images, **inputs).logits, loaded(images, **inputs).logits)
    with pytest.raises(ValueError, match="image_position must be one of"):
        VisionLanguageModel(merge_config(TINY_TEST_CONFIG, {"image_position": "learned"}), tokenizer=tiny_tokenizer)


def test_fine_tuning_starts_from_an_export_and_refuses_architecture_changes(model, tmp_path):
    folder = save_export(model, tmp_path / "export")
    module = SFTModule(init={"from": str(folder)}, model_config={"output_format": "answer"})
    assert module.model.output_format == "answer" and module.model.training
    records = valid_records(1)
    text = module.model.tokenizer.decode(
        [t for t in module.model.processor.training_inputs(records)["labels"][0].tolist() if t != IGNORE_INDEX])
    assert text.startswith("<answer>")
    for name, value in model.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], value)
    with pytest.raises(ValueError, match=r"\['projector'\] cannot change an exported model"):
        SFTModule(init={"from": str(folder)}, model_config={"projector": "linear"})


def test_a_model_read_from_a_gguf_exports_its_weights_not_the_gguf(model, tmp_path):
    """transformers keeps the GGUF it de-quantised in the config; the export stores the weights themselves."""
    model.lm.config.quantization_config = {"quant_method": "gguf", "gguf_file": "model.Q4_1.gguf", "dequantize": False}
    folder = save_export(model, tmp_path / "export")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())["config"]["language"]["config"]
    assert load_export(folder).lm.config.vocab_size == model.lm.config.vocab_size
