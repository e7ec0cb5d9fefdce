"""Scorer-weighted voting: the same K samples, each vote weighing its rationale's score."""

import pytest
import torch
from conftest import TINY_TEST_CONFIG

from mmreason.data.schema import validate_record
from mmreason.data.synth import SynthConfig, make_sample
from mmreason.eval.voting import tally
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.mccot import MCCoT
from mmreason.models.scorer import ScorerModel
from mmreason.text.tokenizer import build_tokenizer

SCORER_CONFIG = {"vision": TINY_TEST_CONFIG["vision"], "projector": "linear",
                 "text_encoder": {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "intermediate_size": 64, "max_position_embeddings": 320}},
                 "tokenizer": "synth-word", "preprocess": {"image_size": 32}, "max_length": 320}


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    tokenizer = build_tokenizer("synth-word")
    model = VisionLanguageModel({**TINY_TEST_CONFIG, "max_length": 256}, tokenizer=tokenizer).eval()
    scorer = ScorerModel(SCORER_CONFIG, tokenizer=tokenizer).eval()
    samples = [make_sample(SynthConfig(tasks=("count",)), "train", i) for i in range(3)]
    images = torch.stack([model.preprocess(image) for _, image, _, _ in samples])
    return model, scorer, images, [validate_record(record) for _, _, record, _ in samples]


def test_votes_weigh_the_scorer_scores_of_the_same_samples(parts):
    model, scorer, images, records = parts
    torch.manual_seed(1)
    samples = model.sample_outputs(images, records, 4, 1.0, max_new_tokens=12)
    torch.manual_seed(1)
    voted = model.respond(images, records, max_new_tokens=12, votes=4, temperature=1.0, rerank=scorer)
    scores = scorer.score(images, records, [s["rationale"] for s in samples]).tolist()
    for i, response in enumerate(voted):
        assert response["scores"] == pytest.approx(scores[4 * i : 4 * i + 4], abs=1e-4)
        winner, share = tally(response["votes"], response["scores"])
        assert response["text"] == samples[4 * i + winner]["text"]
        assert response["confidence"] == pytest.approx(share)


def test_a_confident_scorer_overrules_the_majority(parts, monkeypatch):
    model, scorer, images, records = parts
    texts = ["<answer> 2 </answer>", "<answer> 2 </answer>", "<answer> 3 </answer>"] * 3
    monkeypatch.setattr(model, "sample_outputs",
                        lambda *a, **k: [{"text": t, "rationale": f"r{j}"} for j, t in enumerate(texts)])
    monkeypatch.setattr(scorer, "score", lambda images, records, rationales, **_: torch.tensor([0.1, 0.1, 0.9] * 3))
    majority = model.respond(images, records, votes=3)
    weighted = model.respond(images, records, votes=3, rerank=scorer)
    assert [m["votes"] for m in majority] == [["2", "2", "3"]] * 3
    assert [m["text"] for m in majority] == ["<answer> 2 </answer>"] * 3
    assert [w["text"] for w in weighted] == ["<answer> 3 </answer>"] * 3
    assert weighted[0]["rationale"] == "r2" and weighted[0]["confidence"] == pytest.approx(0.9 / 1.1)


def test_rerank_needs_votes_and_a_scorer_reading_the_same_images(parts):
    model, scorer, images, records = parts
    with pytest.raises(ValueError, match="give votes > 1"):
        model.respond(images, records, rerank=scorer)
    other = ScorerModel({**SCORER_CONFIG, "preprocess": {"image_size": 32, "mean": [0.4, 0.4, 0.4]}},
                        tokenizer=scorer.tokenizer)
    with pytest.raises(ValueError, match="preprocessed differently"):
        model.respond(images, records, votes=2, max_new_tokens=4, rerank=other)


def test_mccot_votes_take_a_scorer_too(parts):
    _, scorer, images, records = parts
    torch.manual_seed(0)
    config = {"vision": TINY_TEST_CONFIG["vision"], "preprocess": {"image_size": 32},
              "language": {"config": {"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1,
                                      "num_decoder_layers": 1, "num_heads": 2, "dropout_rate": 0.0}},
              "stages": ["rationale", "answer"], "max_length": 256, "max_target_length": 12}
    mccot = MCCoT(config, tokenizer=scorer.tokenizer).eval()
    out = mccot.respond(images, records, votes=3, rerank=scorer, max_answer_tokens=4)
    assert all(len(r["scores"]) == 3 and len(r["votes"]) == 3 for r in out)
    with pytest.raises(ValueError, match="needs votes > 1"):
        mccot.respond(images, records, rerank=scorer)


def test_a_rationale_too_long_for_the_scorer_weighs_nothing(parts, caplog):
    from mmreason.eval.voting import scored_votes

    model, scorer, images, records = parts
    rambling = " ".join(["the small red circle at the top counts as 1."] * 60)
    scores = scorer.score(images[:1], records[:1], ["it is red.", rambling], skip_too_long=True)
    assert scores[0] == scores[0] and scores[1] != scores[1]  # NaN for the one over max_length
    with pytest.raises(ValueError, match="max_length"):
        scorer.score(images[:1], records[:1], ["it is red.", rambling])
    voted = scored_votes(["<answer> 2 </answer>", "<answer> 3 </answer>"], ["it is red.", rambling], records[:1],
                         images[:1], model.preprocess, scorer)
    assert voted[0]["scores"][1] == 0.0 and voted[0]["text"] == "<answer> 2 </answer>"
    assert "exceed the scorer's max_length" in caplog.text


def test_only_a_scorer_export_reranks(parts, tmp_path):
    from mmreason.diagnostics.scorer_eval import load_scorer
    from mmreason.export import save_export

    model, scorer, _, _ = parts
    with pytest.raises(ValueError, match="a rationale scorer export is expected"):
        load_scorer(str(save_export(model, tmp_path / "vlm")))
    assert load_scorer(str(save_export(scorer, tmp_path / "scorer"))).family == "scorer"


def test_diagnose_refuses_votes_for_a_model_that_does_not_vote(parts):
    from mmreason.diagnostics.diagnose import diagnose
    from mmreason.models.virl import VirlPolicy

    _, scorer, _, _ = parts
    policy = VirlPolicy({**TINY_TEST_CONFIG, "crop": {"max_actions": 2, "min_size": 4, "tokens": 4}},
                        tokenizer=scorer.tokenizer)
    with pytest.raises(ValueError, match="does not vote over samples"):
        diagnose(policy, [], scorer=scorer, votes=3)


def test_unlabelled_candidates_are_not_taught_as_wrong():
    from mmreason.models.scorer_processor import candidates_of

    record = validate_record({"question": "q?", "answer": "a", "task": "vqa", "meta": {"candidates": [
        {"rationale": "r1", "correct": None}, {"rationale": "r2", "correct": True}]}})
    assert candidates_of(record) == [("r2", True)]
