"""The rationale scorer: its layer, its training pairs, scoring, training, export, evaluation and refusals."""

from __future__ import annotations

import json
import pickle
import random

import pytest
import torch
from conftest import TINY_TEST_CONFIG, mmreason, train_steps

import mmreason as package
from mmreason.build import build_model, create_model
from mmreason.cli import main
from mmreason.data.rationale_edits import split_steps
from mmreason.data.schema import Record, validate_record
from mmreason.data.shards import resolve_shards
from mmreason.data.synth import SynthConfig, make_sample
from mmreason.data.writer import ShardSetWriter
from mmreason.diagnostics.scorer_eval import evaluate_scorer, format_report
from mmreason.eval.evaluators import evaluators_for
from mmreason.export import save_export
from mmreason.inference import evaluate
from mmreason.layers.rationale_scorer import RationaleScorer
from mmreason.models.base import ANSWERS
from mmreason.models.scorer import AnswersNothing
from mmreason.models.scorer_processor import (
    ANSWER_SWAP,
    ScorerProcessor,
    answer_swaps,
    candidates_of,
    corrupt,
    corruption_kinds,
    swap_answer,
)

TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
             "max_position_embeddings": 192, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
SCORER_CONFIG = {"vision": TINY_TEST_CONFIG["vision"], "projector": "linear", "text_encoder": {"config": TINY_BERT},
                 "tokenizer": "synth-word", "preprocess": {"image_size": 32}, "max_length": 192}
SYNTH = SynthConfig(image_size=32, max_objects=4, tasks=("count", "exist", "attribute", "relation"))
CANDIDATES = [{"rationale": "there is no red circle, so the answer is no.", "correct": False},
              {"rationale": "the small red circle is at the top, so the answer is 1.", "correct": True},
              {"rationale": "the answer is 3.", "correct": False}]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("scorer", SCORER_CONFIG).eval()


def synth(n: int, start: int = 0) -> list[tuple]:
    return [make_sample(SYNTH, "train", i) for i in range(start, start + n)]


def batch(model, n: int, start: int = 0) -> tuple[torch.Tensor, list[Record]]:
    samples = synth(n, start)
    return (torch.stack([model.preprocess(image) for _, image, _, _ in samples]),
            [validate_record(record) for _, _, record, _ in samples])


def test_the_layer_gives_one_logit_per_row_that_reads_image_and_rationale():
    torch.manual_seed(0)
    layer = RationaleScorer(16, TINY_BERT, vocab_size=50, projector="linear").eval()
    features, ids = torch.randn(2, 4, 16), torch.randint(5, 50, (3, 7))
    mask, types, rows = torch.ones_like(ids), torch.tensor([[0] * 3 + [1] * 4] * 3), torch.tensor([0, 0, 1])
    logits = layer(features, ids, mask, types, rows)
    assert logits.shape == (3,)
    other_image = features.clone()
    other_image[0] += 1.0
    assert not torch.allclose(layer(other_image, ids, mask, types, rows)[0], logits[0])
    other_text = ids.clone()
    other_text[0, 5] = 4  # a rationale token
    assert not torch.allclose(layer(features, other_text, mask, types, rows)[0], logits[0])
    padded = torch.cat([ids, torch.zeros(3, 2, dtype=torch.long)], 1)
    padded_mask, padded_types = torch.cat([mask, torch.zeros(3, 2, dtype=torch.long)], 1), torch.cat(
        [types, torch.zeros(3, 2, dtype=torch.long)], 1)
    assert torch.allclose(layer(features, padded, padded_mask, padded_types, rows), logits, atol=1e-5)
    with pytest.raises(ValueError, match="got 2 images for 3 text rows"):
        layer(features, ids, mask, types)


def test_answer_swaps_stay_within_the_answers_kind():
    def swaps(answer, choices=None):
        return answer_swaps(Record(question="q?", answer=answer, choices=choices))

    assert swaps("yes") == ["no"] and swaps("left") == ["right"] and swaps("below") == ["above"]
    assert swaps("2") == ["0", "1", "3", "4", "5"]
    assert set(swaps("red")) == {"green", "blue", "yellow", "purple", "orange"}
    assert swaps("B", ["red", "blue", "green"]) == ["A", "C"]
    assert "the large blue circle" in swaps("the small blue circle") and "the small blue square" in swaps(
        "the small blue circle")


def test_the_answer_swap_changes_the_conclusions_answer_and_nothing_else():
    evidence = "The small blue circle at the left is a circle but not red."
    record = Record(question="is there a red circle?", answer="no", task="exist",
                    rationale=f"{evidence} There is no red circle, so the answer is no.")
    assert swap_answer(record, random.Random(0)) == f"{evidence} There is no red circle, so the answer is yes."
    record = Record(question="how many red shapes are there?", answer="1", task="count",
                    rationale="The small red circle at the top counts as 1. The number of red shapes is 1, so the answer "
                              "is 1.")
    swapped = swap_answer(record, random.Random(0))
    k = swapped.split()[-1].rstrip(".")
    assert k != "1" and swapped.endswith(f"The number of red shapes is {k}, so the answer is {k}.")
    assert swapped.startswith("The small red circle at the top counts as 1.")
    assert swap_answer(Record(question="q?", answer="2", rationale="it has two things."), random.Random(0)) is None


def test_the_processor_pairs_gold_corruptions_and_candidates(model, caplog):
    _, _, raw, _ = synth(1)[0]
    record = validate_record({**raw, "meta": {**raw["meta"], "candidates": CANDIDATES}})
    processor = ScorerProcessor(model.tokenizer, 16, 192, corruptions=10, candidates=3)
    pairs = processor.training_pairs(record)
    assert pairs[0] == (record.rationale, 1.0)
    candidates = {c["rationale"]: float(c["correct"]) for c in CANDIDATES}
    assert {text: label for text, label in pairs if text in candidates} == candidates
    corrupted = [(text, label) for text, label in pairs[1:] if text not in candidates]
    assert 2 <= len(corrupted) <= len(corruption_kinds(record))  # one per kind that changes what it implies
    evidence, conclusion = split_steps(record.rationale)
    assert all(label == 0.0 and text != record.rationale for text, label in corrupted)
    swapped = [text for text, _ in corrupted if not text.endswith(conclusion)]
    assert len(swapped) == 1 and swapped[0].startswith(" ".join(evidence))  # gold evidence, another answer
    assert processor.training_pairs(record) == pairs  # a record's draws: a function of record and stream
    malformed = validate_record({**raw, "meta": {**raw["meta"], "candidates": [*CANDIDATES, {"rationale": 3}]}})
    with caplog.at_level("WARNING"):
        assert candidates_of(malformed) == [(c["rationale"], c["correct"]) for c in CANDIDATES]
    assert "1 meta.candidates entries are not {'rationale': text, 'correct': true/false}" in caplog.text
    assert pickle.loads(pickle.dumps(processor)).training_pairs(record) == pairs

    inputs = processor.training_inputs([record, Record(question="is it?", answer="yes")])
    assert inputs["rows"].tolist() == [0] * len(pairs)  # the record with neither rationale nor candidates: none
    assert inputs["labels"].tolist() == [label for _, label in pairs]
    ids, types = inputs["input_ids"][0], inputs["token_type_ids"][0]
    first_sep = ids.tolist().index(model.tokenizer.eos_token_id)
    assert ids[0] == model.tokenizer.bos_token_id and types[: first_sep + 1].eq(0).all()
    assert types[first_sep + 1 : int(inputs["attention_mask"][0].sum())].eq(1).all()


def test_each_record_gets_one_corruption_and_balanced_candidates_by_default(model):
    _, _, raw, _ = synth(1)[0]
    record = validate_record({**raw, "meta": {**raw["meta"], "candidates": CANDIDATES}})
    labels = [label for _, label in model.processor.training_pairs(record)]
    assert labels[:2] == [1.0, 0.0] and sorted(labels[2:]) == [0.0, 1.0]
    records = [validate_record(r) for _, _, r, _ in synth(12)]
    before = [model.processor.training_pairs(r) for r in records]
    model.processor.reseed("0-1-3")  # another worker or epoch draws other corruptions
    try:
        assert [model.processor.training_pairs(r) for r in records] != before
    finally:
        model.processor.reseed("")


def test_scoring_k_rationales_per_record_equals_scoring_them_one_by_one(model):
    images, records = batch(model, 2)
    rng = random.Random(0)
    rationales = [text for r in records for text in (r.rationale, corrupt(r, ANSWER_SWAP, rng), "the answer is 2.")]
    scores = model.score(images, records, rationales)
    assert scores.shape == (6,) and scores.dtype == torch.float32 and ((scores > 0) & (scores < 1)).all()
    alone = torch.cat([model.score(images[i // 3 : i // 3 + 1], [records[i // 3]], [text])
                       for i, text in enumerate(rationales)])
    assert torch.allclose(scores, alone, atol=1e-5)
    assert torch.allclose(model.score(images, records, rationales[3:] + rationales[:3], rows=[1] * 3 + [0] * 3),
                          torch.cat([scores[3:], scores[:3]]), atol=1e-5)
    with pytest.raises(ValueError, match="got 5 rationales for 2 records; pass K per record"):
        model.score(images, records, rationales[:5])
    with pytest.raises(ValueError, match="max_length is 192; shorten the rationale"):
        model.score(images[:1], records[:1], [" ".join(["red"] * 200)])


def test_a_few_dozen_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("scorer", SCORER_CONFIG).train()
    images, records = batch(model, 8)
    losses, out = train_steps(model, images, records, 50, lr=3e-3)
    assert out["target_tokens"] == 16 and out["skipped"] == 0  # a gold and a corrupted rationale each
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
    assert float(out["token_accuracy"]) >= 0.75


def test_export_round_trip_gives_equal_scores(model, tmp_path):
    images, records = batch(model, 2)
    rationales = [r.rationale for r in records]
    loaded = package.load(save_export(model, tmp_path / "export"))
    assert loaded.family == "scorer" and loaded.pairs == model.pairs
    assert torch.allclose(loaded.score(images, records, rationales), model.score(images, records, rationales),
                          atol=1e-6)


def test_the_vision_tower_starts_frozen_from_an_encoder_export_and_pairs_can_be_fine_tuned(model, tmp_path):
    encoder = build_model("encoder", {"vision": TINY_TEST_CONFIG["vision"], "preprocess": {"image_size": 32}})
    export = save_export(encoder, tmp_path / "encoder")
    scorer = build_model("scorer", SCORER_CONFIG, init={"from": str(export), "parts": ["vision"], "frozen": ["vision"]})
    assert all(torch.equal(v, encoder.vision.state_dict()[k]) for k, v in scorer.vision.state_dict().items())
    assert not any(p.requires_grad for p in scorer.vision.parameters())
    assert all(p.requires_grad for p in scorer.scorer.parameters())
    tuned = create_model(init={"from": str(save_export(model, tmp_path / "scorer"))}, pairs={"candidates": 4})
    assert tuned.pairs == {"corruptions": 1, "candidates": 4, "seed": 0} and tuned.batch_processor().candidates == 4
    with pytest.raises(ValueError, match="fit its text encoder's 192 positions, got 400"):
        create_model(init={"from": str(tmp_path / "scorer")}, max_length=400)


def test_max_length_must_fit_the_text_encoder():
    with pytest.raises(ValueError, match="fit its text encoder's 192 positions, got 400"):
        build_model("scorer", {**SCORER_CONFIG, "max_length": 400})
    with pytest.raises(ValueError, match="pairs.corruptions must be a whole number >= 0"):
        build_model("scorer", {**SCORER_CONFIG, "pairs": {"corruptions": -1}})


def _shards(folder, n: int) -> list[str]:
    """Synthetic shards whose odd records carry sampled candidates."""
    writer = ShardSetWriter(folder, "test", samples_per_shard=n)
    for i, (key, image, record, _) in enumerate(synth(n, 100)):
        meta = {**record["meta"], "candidates": CANDIDATES} if i % 2 else record["meta"]
        writer.write(key, image, {**record, "meta": meta})
    writer.close()
    return resolve_shards(folder, "test")


def test_evaluation_reports_auroc_for_corruptions_and_candidates(model, tmp_path):
    report = evaluate_scorer(model, _shards(tmp_path, 6), batch_size=4)
    gold = report["gold_vs_corrupted"]
    assert report["records"] == 6 and report["skipped_pairs"] == 0
    assert gold["positives"] == 6 and gold["negatives"] >= 12 and 0 <= gold["auroc"] <= 1
    assert gold["se"] > 0 and ANSWER_SWAP in gold["per_kind"]
    assert sum(entry["negatives"] for entry in gold["per_kind"].values()) == gold["negatives"]
    assert sum(entry["positives"] for entry in gold["per_task"].values()) == 6 and "count" in gold["per_task"]
    assert (report["candidates"]["positives"], report["candidates"]["negatives"]) == (3, 6)
    assert evaluate_scorer(model, _shards(tmp_path, 6), batch_size=4) == report  # reproducible
    assert "gold vs corrupted: AUROC" in format_report(report)
    assert evaluate_scorer(model, _shards(tmp_path, 6), limit=2)["records"] == 2


def test_a_scorer_answers_no_questions_and_says_what_it_does_instead(model, tmp_path, capsys):
    assert not model.can(ANSWERS) and evaluators_for(model) == []
    images, records = batch(model, 1)
    image = tmp_path / "image.png"
    synth(1)[0][1].save(image)
    with pytest.raises(AnswersNothing, match=r"answers no questions: it scores rationales; call model.score\("):
        model.predict(image, records[0].question)
    with pytest.raises(AnswersNothing, match="model.score"):
        evaluate(model, _shards(tmp_path / "shards", 2), batch_size=2)
    export = save_export(model, tmp_path / "export")
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "--model", str(export), "--image", str(image), "--question", records[0].question])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and "answers no questions" in error and "model.score" in error


def test_the_recipe_trains_and_exports_a_scorer(tmp_path):
    data, root = tmp_path / "data", tmp_path / "run"
    _shards(data, 8)
    mmreason("fit", "-c", "recipes/scorer/synth-tiny.yaml", "--trainer.default_root_dir", str(root),
             "--trainer.max_steps", "3", "--trainer.max_time", "null", "--trainer.enable_progress_bar", "false",
             "--model.init_args.model_config", json.dumps(SCORER_CONFIG), "--model.init_args.init", "null",
             "--model.init_args.warmup_steps", "1", "--data.init_args.synth", "null",
             "--data.init_args.train", str(data / "test-000000.tar"), "--data.init_args.batch_size", "4",
             "--data.init_args.num_workers", "0")
    scorer = package.load(root / "export")
    assert scorer.family == "scorer" and evaluate_scorer(scorer, [str(data / "test-000000.tar")])["records"] == 8


def test_a_decoder_reader_starts_from_a_vlm_and_reads_its_prompt(tmp_path):
    from mmreason.models.baseline import VisionLanguageModel
    from mmreason.text.tokenizer import build_tokenizer

    torch.manual_seed(0)
    vlm = VisionLanguageModel({**TINY_TEST_CONFIG, "max_length": 256}, tokenizer=build_tokenizer("synth-word"))
    export = save_export(vlm, tmp_path / "vlm")
    config = {"vision": TINY_TEST_CONFIG["vision"], "language": TINY_TEST_CONFIG["language"], "tokenizer": "synth-word",
              "preprocess": {"image_size": 32}, "max_length": 256}
    scorer = build_model("scorer", config, init={"from": str(export), "parts": ["vision", "projector", "language"],
                                                 "frozen": ["vision"]})
    for ours, theirs in ((scorer.scorer.lm, vlm.lm), (scorer.scorer.projector, vlm.projector)):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in scorer.vision.parameters())
    images, records = batch(scorer, 2)
    ids, types = scorer.processor.encode(records[:1], ["it is red, so the answer is red."])[0]
    text = scorer.tokenizer.decode(ids)
    assert text.startswith("<s>") and text.endswith("<think> it is red, so the answer is red. </think>")
    assert "<image>" not in text and set(types) == {0}
    scores = scorer.score(images, records, ["a.", "b.", "c.", "d."])
    assert scores.shape == (4,) and ((scores > 0) & (scores < 1)).all()
    losses, _ = train_steps(scorer.train(), images, records, 25, lr=3e-3)
    assert losses[-1] < losses[0]
