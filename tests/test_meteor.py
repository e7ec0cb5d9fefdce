"""Meteor: `<tor>` prompts and splicing, the two training steps, generation, ablations, export."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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
    write_shards,
)
from transformers import MambaConfig, MambaModel

from mmreason.build import build_model
from mmreason.data.schema import validate_record
from mmreason.export import load_export, save_export
from mmreason.layers.mamba import MambaStack
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.meteor import CausalTransformerEmbedder, Meteor
from mmreason.models.processor import IGNORE_INDEX
from mmreason.text.tor import RationaleTooShort
from mmreason.zoo import merge_config

ROOT = Path(__file__).resolve().parents[1]
N = 3
WIDTH = TINY_TEST_CONFIG["language"]["config"]["hidden_size"]
TINY_METEOR = merge_config(TINY_TEST_CONFIG, {
    "traversal": {"embedder": "mamba", "num_tor": N, "placement": "even",
                  "mamba": {"hidden_size": 16, "state_size": 4, "num_hidden_layers": 2, "expand": 2}},
    "step": 1,
})
DISTINCT_RATIONALES = ("i see a red circle at the left .", "i see a blue square at the right .",
                       "i see two red shapes at the left .", "i see one blue circle at the right .")


def _meteor(tokenizer, **overrides):
    torch.manual_seed(0)
    return Meteor(merge_config(TINY_METEOR, overrides), tokenizer=tokenizer)


@pytest.fixture
def model(tiny_tokenizer):
    return _meteor(tiny_tokenizer)


def test_both_prompts_hold_n_tor_and_labels_skip_them(model):
    tok, records = model.tokenizer, valid_records(2)
    for step in (1, 2):
        model.step = step
        inputs = model.processor.training_inputs(records)
        for ids, labels, traversal in zip(inputs["input_ids"], inputs["labels"], inputs["traversal_ids"]):
            assert int((ids == model.tor_token_id).sum()) == int((traversal == model.tor_token_id).sum()) == N
            assert int((ids == model.image_token_id).sum()) == int((traversal == model.image_token_id).sum()) == 16
            assert ids[1 : 1 + N].tolist() == [model.tor_token_id] * N  # right after BOS
            placeholders = (ids == model.tor_token_id) | (ids == model.image_token_id)
            assert bool((labels[placeholders] == IGNORE_INDEX).all())
            target = tok.decode([t for t in labels.tolist() if t != IGNORE_INDEX])
            text = tok.decode(traversal[traversal != tok.pad_token_id])
            if step == 1:  # the rationale, with <tor> spread through it, and the rationale as target
                assert "<tor> it shows a" in text and text.endswith("left. <tor>")
                assert target.startswith("<think> it shows")
            else:  # bare <tor> and the answer as target
                assert text.endswith("solution : <tor> <tor> <tor>") and "it shows" not in text
                assert target.startswith("<answer>")
    generation = model.processor.generation_inputs(records)["input_ids"]
    assert ((generation == model.tor_token_id).sum(1) == N).all()


def test_embeddings_replaced_exactly_at_tor_and_image_positions(model):
    images, records = model_images(model, 2), valid_records(2)
    inputs = training_tensors(model, records)
    ids = inputs["input_ids"]
    with torch.no_grad():
        embeds = model.embed(images, ids, inputs["traversal_ids"], inputs["traversal_mask"])
        plain = model.lm.get_input_embeddings()(ids)
        patches = model.projector(model.vision(images)).reshape(-1, WIDTH)
        tor = model.tor_features(images, records, with_rationale=True).reshape(-1, WIDTH)
    image_at, tor_at = ids == model.image_token_id, ids == model.tor_token_id
    elsewhere = ~(image_at | tor_at)
    assert torch.equal(embeds[elsewhere], plain[elsewhere])
    assert torch.allclose(embeds[image_at], patches, atol=1e-6)
    assert torch.allclose(embeds[tor_at], tor, atol=1e-6)
    assert not torch.isclose(embeds[~elsewhere], plain[~elsewhere]).all(-1).any()
    broken = ids.clone()
    broken[0, 1] = model.tokenizer.convert_tokens_to_ids("red")
    with pytest.raises(ValueError, match=r"exactly 3 <tor> tokens, found \[2, 3\]"):
        model.embed(images, broken, inputs["traversal_ids"], inputs["traversal_mask"])


def test_tor_features_with_and_without_the_rationale(model):
    images, records = model_images(model, 2), valid_records(2)
    with torch.no_grad():
        read = model.tor_features(images, records, with_rationale=True)
        bare = model.tor_features(images, records, with_rationale=False)
    assert read.shape == bare.shape == (2, N, WIDTH)
    assert not torch.allclose(read, bare)


def test_step_one_trains_the_traversal_into_a_frozen_backbone(tiny_tokenizer):
    # One image, one question, four rationales: only the <tor> features tell the targets apart. A random
    # frozen backbone cannot use them, so it comes from a joint run; the traversal parts start fresh.
    records = [validate_record({**make_record(0), "rationale": r}) for r in DISTINCT_RATIONALES]
    joint = _meteor(tiny_tokenizer)
    joint.requires_grad_(True)
    images = model_images(joint, 1).expand(len(records), -1, -1, -1)
    train_steps(joint, images, records, steps=80)
    model = _meteor(tiny_tokenizer)
    backbone_parts = ("vision", "projector", "lm")
    for part in backbone_parts:
        getattr(model, part).load_state_dict(getattr(joint, part).state_dict())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert not any(p.requires_grad for part in backbone_parts for p in getattr(model, part).parameters())
    losses, _ = train_steps(model, images, records, steps=30)
    assert losses[-1] < 0.75 * losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not {n for n in changed if n.split(".")[0] in backbone_parts}  # the backbone VLM is untouched
    for prefix in ("traversal.", "traversal_projector.", "tor_projector."):
        assert any(n.startswith(prefix) for n in changed), prefix


BACKBONE = ["vision", "projector", "language"]


def test_the_backbone_starts_from_a_baseline_export_and_its_export_stands_alone(tiny_tokenizer, tmp_path):
    torch.manual_seed(3)
    baseline = VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer)
    source = save_export(baseline, tmp_path / "baseline")
    model = build_model("meteor", merge_config(TINY_METEOR, {"max_length": 300}),
                        init={"from": str(source), "parts": BACKBONE})
    assert model.max_length == 300 and model.preprocess.to_dict() == baseline.preprocess.to_dict()
    assert model.tokenizer.get_vocab() == baseline.tokenizer.get_vocab()
    for part in ("vision", "projector", "lm"):
        theirs = getattr(baseline, part).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in getattr(model, part).state_dict().items()), part
    assert "init" not in model.config
    folder = save_export(model, tmp_path / "meteor")
    for path in source.iterdir():
        path.unlink()
    assert torch.equal(load_export(folder).lm.get_input_embeddings().weight, model.lm.get_input_embeddings().weight)
    again = build_model("meteor", TINY_METEOR, init={"from": str(folder), "parts": BACKBONE})
    assert torch.equal(again.lm.get_input_embeddings().weight, model.lm.get_input_embeddings().weight)


def test_step_two_fine_tunes_a_step_one_export(model, tmp_path):
    from mmreason.training.sft import SFTModule

    folder = save_export(model, tmp_path / "step1")
    module = SFTModule(init={"from": str(folder)}, model_config={"step": 2})
    assert module.model.step == 2 and module.model.output_format == "answer"
    assert load_export(save_export(module.model, tmp_path / "step2")).step == 2
    assert all(p.requires_grad for p in module.model.parameters())
    with pytest.raises(ValueError, match=r"cannot change an exported model's architecture.*'step'"):
        SFTModule(init={"from": str(folder)}, model_config={"traversal": {"num_tor": 2}})


def test_step_two_trains_everything_on_the_answer(model):
    model.step = 2
    assert all(p.requires_grad for p in model.parameters())
    assert model.output_format == model.config["output_format"] == "answer" and model.config["step"] == 2
    losses, _ = train_steps(model, model_images(model), valid_records(), steps=20)
    assert losses[-1] < 0.4 * losses[0]
    with pytest.raises(ValueError, match=r"step must be one of \(1, 2\)"):
        model.step = 3


def test_too_short_rationales_are_skipped_and_counted_in_step_one(model):
    records = valid_records(3)
    records[1].rationale = "i see a circle"  # 4 words: 3 <tor> evenly need at least 6
    out = model.batch_loss(model_images(model, 3), records)
    assert out["skipped"] == 1 and torch.isfinite(out["loss"])
    inputs = model.processor.training_inputs(records, skip_too_long=True)
    assert inputs["rows"].tolist() == [0, 2] and len(inputs["traversal_ids"]) == 2
    nothing = model.batch_loss(model_images(model, 1), records[1:2])  # a whole batch too short: skipped
    assert nothing["skipped"] == 1 and nothing["loss"].item() == 0.0 and nothing["loss"].requires_grad
    with pytest.raises(RationaleTooShort, match="4 words"):
        model.tor_features(model_images(model, 3), records, with_rationale=True)
    model.step = 2  # bare <tor>: nothing to skip
    assert model.batch_loss(model_images(model, 3), records)["skipped"] == 0


def test_generation_never_emits_image_or_tor(model):
    model.eval()
    images, records = model_images(model, 2), valid_records(2)
    with torch.no_grad():  # make <image> and <tor> the backbone's favourite outputs (tied embeddings)
        model.lm.get_output_embeddings().weight[[model.image_token_id, model.tor_token_id]] *= 1000
    inputs = model.processor.generation_inputs(records)
    with torch.no_grad():
        embeds = model.embed(images, inputs["input_ids"], **model.processor.traversal_inputs(records, with_rationale=False))
        raw = model.lm.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=8,
                                do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    assert bool(((raw == model.tor_token_id) | (raw == model.image_token_id)).any())  # unsuppressed: they come
    texts = model.generate(images, records, max_new_tokens=8) + [model.predict(make_image(0), "is there a red circle?",
                                                                               max_new_tokens=8)["text"]]
    assert len(texts) == 3 and not any("<image>" in t or "<tor>" in t for t in texts)


def test_transformer_embedder_builds_trains_and_generates(tiny_tokenizer):
    model = _meteor(tiny_tokenizer, traversal={"embedder": "transformer", "transformer": {"num_heads": 2}})
    assert isinstance(model.traversal, CausalTransformerEmbedder)
    images, records = model_images(model, 2), valid_records(2)
    out = model.batch_loss(images, records)
    out["loss"].backward()
    assert model.traversal.embeddings.weight.grad is not None
    model.eval()
    assert len(model.answer_batch(images, records, max_new_tokens=3)) == 2
    assert model.tor_features(images, records, with_rationale=False).shape == (2, N, WIDTH)


def test_no_embedder_is_the_baseline(tiny_tokenizer):
    meteor = _meteor(tiny_tokenizer, traversal={"embedder": "none"})
    baseline = VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer)
    baseline.load_state_dict(meteor.state_dict())  # strict: exactly the baseline's parts
    images, records = model_images(meteor, 2), valid_records(2)
    inputs = training_tensors(meteor, records)
    assert all(torch.equal(v, baseline.processor.training_inputs(records)[k]) for k, v in inputs.items())
    assert torch.equal(meteor(images, **inputs).logits, baseline(images, **inputs).logits)
    with pytest.raises(ValueError, match="traversal.embedder 'none'"):
        meteor.tor_features(images, records, with_rationale=False)


def test_a_mamba_checkpoint_folder_loads_by_name_and_exports_without_it(tiny_tokenizer, tmp_path):
    torch.manual_seed(1)
    checkpoint = MambaModel(MambaConfig(vocab_size=30, hidden_size=16, state_size=4, num_hidden_layers=1))
    checkpoint.save_pretrained(tmp_path / "mamba")
    model = _meteor(tiny_tokenizer, traversal={"path": str(tmp_path / "mamba")})
    assert isinstance(model.traversal, MambaStack)
    assert model.traversal.embeddings.num_embeddings == len(tiny_tokenizer)
    assert torch.equal(model.traversal.layers[0].mixer.in_proj.weight, checkpoint.layers[0].mixer.in_proj.weight)
    assert torch.equal(model.traversal.embeddings.weight[:30], checkpoint.embeddings.weight[:30])
    assert model.config["traversal"]["path"] is None
    assert model.config["traversal"]["mamba"]["num_hidden_layers"] == 1
    folder = save_export(model, tmp_path / "export")
    (tmp_path / "mamba" / "model.safetensors").unlink()
    loaded = load_export(folder)
    assert torch.equal(loaded.traversal.layers[0].mixer.A_log, model.traversal.layers[0].mixer.A_log)


def test_bad_traversal_config_names_the_choices(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"embedder must be one of \('mamba', 'transformer', 'none'\)"):
        _meteor(tiny_tokenizer, traversal={"embedder": "bert"})
    with pytest.raises(ValueError, match="placement must be one of"):
        _meteor(tiny_tokenizer, traversal={"placement": "middle"})
    with pytest.raises(ValueError, match="num_tor must be >= 1"):
        _meteor(tiny_tokenizer, traversal={"num_tor": 1})


def _similarity_tool():
    spec = importlib.util.spec_from_file_location("meteor_tor_similarity", ROOT / "tools" / "meteor_tor_similarity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagonal_dominance_by_hand():
    tool = _similarity_tool()
    similarity = torch.tensor([[0.9, 0.1, -0.5], [0.3, 0.6, 0.0], [0.2, 0.7, 0.4]])
    stats = tool.diagonal_dominance(similarity)
    assert stats["diagonal"] == pytest.approx((0.9 + 0.6 + 0.4) / 3)
    assert stats["off_diagonal"] == pytest.approx((0.1 - 0.5 + 0.3 + 0.0 + 0.2 + 0.7) / 6)
    assert stats["dominance"] == pytest.approx(stats["diagonal"] - stats["off_diagonal"])
    assert stats["rows_peaking_on_diagonal"] == pytest.approx(2 / 3)  # row 3 peaks at column 2


def test_similarity_tool_runs_on_an_export(model, tmp_path, monkeypatch, capsys):
    write_shards(tmp_path / "data", "test-", [3])
    folder = save_export(model, tmp_path / "export")
    monkeypatch.setattr(sys, "argv", ["tool", "--model", str(folder), "--data", str(tmp_path / "data")])
    _similarity_tool().main()
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples"] == 3 and -1 <= stats["diagonal"] <= 1
    assert stats["heatmap"] is None  # drawn only with --out (tests/test_overlay.py draws one)
    images, records = model_images(model, 3), valid_records(3)
    expected = _similarity_tool().tor_similarity(model.eval(), images, records) / 3
    assert stats["diagonal"] == pytest.approx(float(expected.diagonal().mean()), abs=1e-5)


def test_random_placements_differ_between_loader_streams_and_repeat_within_one(tiny_tokenizer):
    from mmreason.models.meteor_processor import MeteorProcessor

    processor = MeteorProcessor(tiny_tokenizer, 4, 512, "cot", True, num_tor=3, placement="random", seed=0)
    record = validate_record({**make_record(0), "rationale": " ".join(f"w{i}" for i in range(40))})

    def placements(stream: str) -> list[list[int]]:
        processor.reseed(stream)
        return [processor.traversal_inputs([record], with_rationale=True)["traversal_ids"][0].tolist()
                for _ in range(3)]

    assert placements("0-0-0") == placements("0-0-0")  # one worker's epoch is reproducible
    assert placements("0-0-0") != placements("0-1-0")  # another worker draws its own
    assert placements("0-0-0") != placements("0-0-1")  # and so does the next epoch
