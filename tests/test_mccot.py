"""MC-CoT: gated fusion, self-consistency logit fusion, the two-stage pipeline, voting and export."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TEST_CONFIG, make_image, make_record, model_images, valid_records

from mmreason.data.schema import Record, validate_record
from mmreason.eval.voting import weighted_vote
from mmreason.export import load_export, save_export
from mmreason.layers.gated_fusion import GatedCrossAttentionFusion
from mmreason.layers.logit_voting import fuse_pass_logits
from mmreason.models.mccot import MCCoT
from mmreason.models.processor import IGNORE_INDEX
from mmreason.text.prompts import qcm_input
from mmreason.training.mccot import MCCoTModule

MCCOT_TEST_CONFIG = {
    "vision": TINY_TEST_CONFIG["vision"],
    "language": {"config": {"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1,
                            "num_decoder_layers": 1, "num_heads": 2, "dropout_rate": 0.1,
                            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": True}},
    "preprocess": {"image_size": 32},
    "stages": ["rationale", "answer"],
    "max_length": 96,
    "max_target_length": 48,
}




@pytest.fixture
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return MCCoT(MCCOT_TEST_CONFIG, tokenizer=tiny_tokenizer)


def test_gated_fusion_shapes_gate_range_and_gate_extremes():
    torch.manual_seed(0)
    fusion = GatedCrossAttentionFusion(d_model=16, feature_dim=8)
    text, image = torch.randn(2, 5, 16), torch.randn(2, 7, 8)
    fused, gate = fusion(text, image, return_gate=True)
    assert fused.shape == (2, 5, 16) and gate.shape == (2, 5, 16)
    assert bool(((gate > 0) & (gate < 1)).all())
    attended, _ = fusion.attention(text, fusion.image_proj(image), fusion.image_proj(image))
    torch.testing.assert_close(fused, (1 - gate) * text + gate * attended)
    with torch.no_grad():
        fusion.gate.bias.fill_(-1e4)  # gate shut: the text states pass unchanged
    torch.testing.assert_close(fusion(text, image), text)
    with torch.no_grad():
        fusion.gate.bias.fill_(1e4)  # gate open: only the attended image features remain
    torch.testing.assert_close(fusion(text, image), attended)


def test_soft_fusion_matches_a_hand_computation():
    # K=3 passes, one token, V=2: entry 0 = [1, 2, 6], entry 1 = [0, 0, 3]
    logits = torch.tensor([[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]])
    mean = torch.tensor([3.0, 1.0])
    std = torch.tensor([(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2) ** 0.5, ((1 + 1 + 4) / 2) ** 0.5])
    w = 1 / (1 + std)
    weighted = torch.stack([w * logits[k] for k in range(3)]).sum(0) / (3 * w)
    expected = 0.3 * mean + 0.7 * weighted
    fused = fuse_pass_logits(logits, alpha=0.3)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(fused, mean)  # w does not depend on the pass: the rule reduces to the mean


def test_released_vote_divides_by_a_sum_over_the_batch():
    """MC-CoT's released code: sum_k(w·l_k) / sum_b(w), w = 1/(1+std over passes), by hand."""
    logits = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]],
                           [[[3.0, 3.0]], [[2.0, 4.0]]]])  # (K=2, B=2, T=1, V=2)
    sd = 2 ** 0.5  # std over the passes of (1, 3), (0, 2) and (0, 4)
    w = torch.tensor([[[1 / (1 + sd), 1.0]], [[1 / (1 + sd), 1 / (1 + 2 * sd)]]])
    sums = torch.tensor([[[4.0, 6.0]], [[2.0, 4.0]]])
    expected = 0.5 * sums / 2 + 0.5 * w * sums / w.sum(0)
    torch.testing.assert_close(fuse_pass_logits(logits, alpha=0.5, vote="released"), expected)
    one = logits[:, :1]  # one sample: (α + (1−α)K)·mean, not the mean
    torch.testing.assert_close(fuse_pass_logits(one, alpha=0.5, vote="released"), 1.5 * one.mean(0))
    torch.testing.assert_close(fuse_pass_logits(one, alpha=0.5, vote="soft"), one.mean(0))


def test_hard_vote_averages_the_passes_that_agree_with_the_majority():
    # argmaxes per pass: 0, 0, 1 → majority token 0 → mean of passes 0 and 1
    logits = torch.tensor([[3.0, 1.0], [2.0, 0.0], [0.0, 5.0]])
    torch.testing.assert_close(fuse_pass_logits(logits, vote="hard"), torch.tensor([2.5, 0.5]))
    with pytest.raises(ValueError, match="vote must be one of"):
        fuse_pass_logits(logits, vote="median")


def test_passes_differ_with_dropout_and_equal_one_pass_without(model):
    images, records = model_images(model), valid_records()
    stage = model.stages["rationale"]
    tensors = model.processor.stage_tensors("rationale", records)
    ids, mask, labels = tensors["input_ids"], tensors["attention_mask"], tensors["labels"]
    model.train()
    encoded = stage.encode(stage.image_features(images), ids, mask)
    noisy = stage.pass_logits(encoded, mask, labels, passes=3)
    assert not torch.allclose(noisy[0], noisy[1])
    model.eval()
    with torch.no_grad():
        encoded = stage.encode(stage.image_features(images), ids, mask)
        passes = stage.pass_logits(encoded, mask, labels, passes=5)
        single = stage.pass_logits(encoded, mask, labels, passes=1)[0]
    torch.testing.assert_close(fuse_pass_logits(passes), single, rtol=1e-5, atol=1e-5)


def test_labels_are_padded_with_ignore_index(model):
    labels = model.processor.labels(["solution : a b c", "solution : a"])
    assert labels.shape == (2, 6)
    assert labels[1, 4:].tolist() == [IGNORE_INDEX] * 2
    assert labels[1, 3].item() == labels[0, 5].item() == model.tokenizer.eos_token_id
    assert model.tokenizer.pad_token_id not in labels[1].tolist()


def test_self_consistency_training_learns_a_fixed_batch(model):
    model.passes = 3
    model.set_train_stage("rationale")
    images, records = model_images(model), valid_records()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(40):
        out = model.batch_loss(images, records)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]
    assert out["token_accuracy"] > 0.5
    assert all(p.grad is None for p in model.stages["answer"].parameters())  # the other stage is frozen


def test_answer_stage_reads_generated_not_gold_rationales(model, monkeypatch):
    model.eval()
    images, records = model_images(model), valid_records()
    generated = model.rationales(images, records, "generated", max_new_tokens=6)
    seen = []
    original = model.processor.encoder_inputs
    monkeypatch.setattr(model.processor, "encoder_inputs", lambda texts: seen.append(texts) or original(texts))
    results = model.run(images, records, max_new_tokens=6)
    answer_inputs = seen[-1]
    assert answer_inputs == [qcm_input(r, g) for r, g in zip(records, generated)]
    assert all(r.rationale not in text for r, text in zip(records, answer_inputs))
    assert [r["rationale"] for r in results] == generated
    model.run(images, records, rationale_source="gold")
    assert seen[-1] == [qcm_input(r, r.rationale) for r in records]


def test_teacher_forced_rationales_are_the_argmax_given_the_gold_rationale(model):
    model.eval()
    images, records = model_images(model, 2), valid_records(2)
    tensors = model.processor.stage_tensors("rationale", records)
    logits, labels = model.stage_logits("rationale", images, **tensors), tensors["labels"]
    forced = model.rationales(images, records, "teacher_forced")
    assert len(forced) == 2
    first = logits[0].argmax(-1)[labels[0] != IGNORE_INDEX]
    expected = model._decode(first.unsqueeze(0))[0].removeprefix("solution :").strip()
    assert forced[0] == expected


def test_majority_vote_counts_parsed_answers():
    record = Record(question="how many?", answer="3", task="count")
    winner, share, ballots = weighted_vote(
        ["the answer is 4 .", "the answer is three .", "the answer is 3 .", "garbled"], record)
    assert ballots == ["4", "3", "3", None]
    assert (winner, share) == (1, 0.5)
    assert weighted_vote(["nothing", "here"], record) == (0, 0.0, [None, None])
    mcq = Record(question="which?", answer="B", task="mcq", choices=["red", "blue"])
    assert weighted_vote(["the answer is ( b ) .", "the answer is blue .", "the answer is ( a ) ."], mcq)[:2] == (
        0, pytest.approx(2 / 3))


def test_voting_samples_k_rationales_in_one_batched_call(model, monkeypatch):
    model.eval()
    images, records = model_images(model, 3), valid_records(3)
    calls = []
    stage = model.stages["rationale"]
    original = stage.generate
    monkeypatch.setattr(stage, "generate", lambda *a, **k: calls.append(a[3] if len(a) > 3 else k) or original(*a, **k))
    torch.manual_seed(0)
    results = model.run(images, records, votes=4, max_new_tokens=5)
    assert calls == [4]
    assert len(results) == 3 and all(len(r["votes"]) == 4 for r in results)
    assert all(0.0 <= r["confidence"] <= 1.0 for r in results)


def test_cached_features_give_the_same_loss_as_the_frozen_encoder(tiny_tokenizer):
    torch.manual_seed(0)
    model = MCCoT({**MCCOT_TEST_CONFIG, "vision": {**MCCOT_TEST_CONFIG["vision"], "frozen": True}},
                  tokenizer=tiny_tokenizer).eval()
    images, records = model_images(model), valid_records()
    features = model.stages["answer"].vision(images)
    with torch.no_grad():
        from_images = model.batch_loss(images, records)["loss"]
        from_features = model.batch_loss(features, records)["loss"]
    torch.testing.assert_close(from_images, from_features)
    assert not any(p.requires_grad for p in model.stages["answer"].vision.parameters())


def test_pipeline_export_round_trip_predicts_rationale_then_answer(model, tmp_path):
    model.eval()
    save_export(model, tmp_path / "export")
    loaded = load_export(tmp_path / "export")
    assert list(loaded.stages) == ["rationale", "answer"]
    image = make_image(0)
    before = model.predict(image, "is there a red circle?", max_new_tokens=6)
    after = loaded.predict(image, "is there a red circle?", max_new_tokens=6)
    assert before == after
    assert set(after) == {"rationale", "text", "answer", "confidence", "votes"}
    voted = loaded.predict(image, "is there a red circle?", choices=["yes", "no"], votes=3, max_new_tokens=6)
    assert len(voted["votes"]) == 3
    with pytest.raises(ValueError, match="votes must be at least 1"):
        loaded.predict(image, "is there a red circle?", votes=0)
    with pytest.raises(ValueError, match="needs a gold rationale"):
        loaded.predict(image, "is there a red circle?", rationale_source="gold")


def test_answer_stage_is_added_next_to_a_frozen_rationale_stage(model, tmp_path):
    rationale_only = MCCoT({**MCCOT_TEST_CONFIG, "stages": ["rationale"]}, tokenizer=model.tokenizer)
    save_export(rationale_only, tmp_path / "stage1")
    module = MCCoTModule(stage="answer", init={"from": str(tmp_path / "stage1")}, passes=2)
    assert list(module.model.stages) == ["rationale", "answer"]
    assert not any(p.requires_grad for p in module.model.stages["rationale"].parameters())
    assert all(p.requires_grad for p in module.model.stages["answer"].parameters())
    assert module.model.passes == 2
    torch.testing.assert_close(module.model.stages["rationale"].t5.shared.weight,
                               rationale_only.stages["rationale"].t5.shared.weight)
    torch.testing.assert_close(module.model.stages["answer"].vision.state_dict(),  # starts from stage 1's encoder
                               rationale_only.stages["rationale"].vision.state_dict())
    with pytest.raises(ValueError, match=r"start it from the rationale stage's export, init: \{from: EXPORT\}"):
        MCCoTModule(stage="answer")
    with pytest.raises(ValueError, match=r"holds stages \['rationale'\], not 'direct'"):
        MCCoTModule(stage="direct", init={"from": str(tmp_path / "stage1")})
    with pytest.raises(ValueError, match=r"\[.language.\] cannot change an exported model.s architecture"):
        MCCoTModule(stage="answer", init={"from": str(tmp_path / "stage1")}, model_config={"language": {}})
    with pytest.raises(ValueError, match="voting needs an answer stage"):
        rationale_only.run(model_images(rationale_only, 1), valid_records(1), votes=2)
    with pytest.raises(ValueError, match="stage must be one of"):
        MCCoTModule(stage="both")


def test_records_without_rationale_are_skipped_when_training_stages_that_need_one(model):
    model.set_train_stage("rationale")
    records = valid_records(3) + [validate_record({**make_record(3), "rationale": None})]
    out = model.batch_loss(model_images(model), records)
    assert out["skipped"] == 1
    nothing = model.batch_loss(model_images(model, 1), records[-1:])
    assert nothing["skipped"] == 1 and nothing["loss"].item() == 0.0 and nothing["loss"].requires_grad
