"""Multi-turn conversations: one record with ``turns``, one token sequence with a target on every reply."""

from __future__ import annotations

import json
import math
import tarfile

import pytest
import torch
from conftest import TINY_TEST_CONFIG, make_image

from mmreason.data.convert import convert
from mmreason.data.schema import RecordError, Turn, validate_record
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.mccot_processor import MCCoTProcessor
from mmreason.models.meteor_processor import MeteorProcessor
from mmreason.models.processor import IGNORE_INDEX, PromptProcessor, PromptTooLong
from mmreason.models.star import StarProcessor
from mmreason.text.prompts import TEMPLATE_WORDS
from mmreason.text.tokenizer import word_tokenizer

WORDS = "is there a red blue circle yes no how many shapes the at left ? . i see one two".split()
SINGLE_TURN = [  # the records the single-turn tensors below were computed from
    {"question": "is there a red circle?", "answer": "yes", "rationale": "i see a red circle at the left .",
     "task": "exist"},
    {"question": "is there a blue circle?", "answer": "B", "rationale": "i see a blue circle at the left .",
     "task": "count", "choices": ["yes", "no"]},
]
CONVERSATION = {
    "question": "how many shapes", "answer": "two", "task": "vqa",
    "turns": [{"question": "is there a red circle", "answer": "yes", "rationale": None}],
    "meta": {"id": "chat"},
}


@pytest.fixture
def tokenizer():
    return word_tokenizer([*TEMPLATE_WORDS, *WORDS])


@pytest.fixture
def processor(tokenizer):
    return PromptProcessor(tokenizer, 3, 64, "answer")


def spans(labels: list[int]) -> list[list[int]]:
    """The runs of supervised (not -100) positions."""
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs, current = [*runs, current], []
    return runs


# --- the record ----------------------------------------------------------------------------------------


def test_record_round_trip_with_turns():
    record = validate_record(CONVERSATION)
    assert record.turns == [Turn("is there a red circle", "yes")]
    stored = record.to_json()
    assert stored["turns"] == CONVERSATION["turns"]
    assert validate_record(json.loads(json.dumps(stored))) == record


def test_single_turn_record_is_stored_as_before():
    stored = validate_record(SINGLE_TURN[0]).to_json()
    assert "turns" not in stored
    assert set(stored) == {"question", "answer", "task", "choices", "rationale", "steps", "meta"}


@pytest.mark.parametrize("turns, field", [
    ("hi", "'turns'"),
    ([{"question": "", "answer": "a"}], r"'turns\[0\]'"),
    ([{"question": "q", "answer": 3}], r"'turns\[0\]'"),
    ([{"question": "q", "answer": "a", "image": "x.png"}], r"'turns\[0\]'"),
])
def test_bad_turns_name_the_field(turns, field):
    with pytest.raises(RecordError, match=f"'k'.*{field}"):
        validate_record({**CONVERSATION, "turns": turns}, key="k")


# --- the LLaVA converter -------------------------------------------------------------------------------


def test_llava_conversation_is_one_record(tmp_path):
    make_image(0).save(tmp_path / "pic.png")
    chat = ["<image>\nIs there a red circle?", "Yes.", "How many circles?", "Two."]
    item = {"id": "c1", "image": "pic.png",
            "conversations": [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(chat)]}
    (tmp_path / "llava.json").write_text(json.dumps([item]))
    report = convert("llava", tmp_path / "llava.json", tmp_path / "out")
    assert report["written"] == 1
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        record = json.loads(tar.extractfile("c1.json").read())
    assert record["question"] == "How many circles?" and record["answer"] == "Two."
    assert record["turns"] == [{"question": "Is there a red circle?", "answer": "Yes.", "rationale": None}]
    assert record["meta"] == {"source": "llava", "id": "c1"}


def test_jsonl_records_carry_turns(tmp_path):
    make_image(0).save(tmp_path / "pic.png")
    (tmp_path / "data.jsonl").write_text(json.dumps({**CONVERSATION, "image": "pic.png"}) + "\n")
    convert("jsonl", tmp_path / "data.jsonl", tmp_path / "out")
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        record = json.loads(tar.extractfile("line0000001.json").read())
    assert validate_record(record) == validate_record(CONVERSATION)


# --- the prompt processor ------------------------------------------------------------------------------


def test_labels_cover_exactly_every_reply(processor, tokenizer):
    inputs = processor.training_inputs([validate_record(CONVERSATION)])
    labels = inputs["labels"][0].tolist()
    supervised = [tokenizer.decode(run) for run in spans(labels)]
    assert supervised == ["<answer> yes </answer> </s>", "<answer> two </answer> </s>"]
    ids = inputs["input_ids"][0].tolist()
    assert all(label == IGNORE_INDEX or label == token for label, token in zip(labels, ids))
    assert tokenizer.decode([t for t in ids if t != processor.image_token_id]) == (
        "<s> question : is there a red circle answer : <answer> yes </answer> </s> "
        "question : how many shapes answer : <answer> two </answer> </s>")


def test_generation_inputs_hold_the_earlier_turns(processor, tokenizer):
    ids = processor.generation_inputs([validate_record(CONVERSATION)])["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == 3
    assert tokenizer.decode([t for t in ids if t != processor.image_token_id]) == (
        "<s> question : is there a red circle answer : <answer> yes </answer> </s> "
        "question : how many shapes answer :")


def test_too_long_conversation_is_skipped_or_refused(tokenizer):
    processor = PromptProcessor(tokenizer, 3, 20, "answer")
    records = [validate_record(SINGLE_TURN[0]), validate_record(CONVERSATION)]
    inputs = processor.training_inputs(records, skip_too_long=True)
    assert inputs["rows"].tolist() == [0]
    with pytest.raises(PromptTooLong, match="over 2 turns"):
        processor.training_inputs(records)


# Computed by PromptProcessor(word tokenizer, 3 image tokens, max_length 64, "cot") before conversations
# existed, kept as tokens (ids move when the test vocabulary grows): single-turn records must keep them.
SINGLE_TURN_ROWS = [
    "<s> <image> <image> <image> question : is there a red circle ? answer : <think> i see a red circle at the "
    "left . </think> <answer> yes </answer> </s>" + " <pad>" * 10,
    "<s> <image> <image> <image> question : is there a blue circle ? choices : ( a ) yes ( b ) no answer : "
    "<think> i see a blue circle at the left . </think> <answer> b </answer> </s>",
]
SINGLE_TURN_TARGET_SPANS = [(14, 29), (24, 39)]  # [start, end) of the supervised positions of each row
SINGLE_TURN_GENERATION_ROWS = [
    "<pad> " * 10 + "<s> <image> <image> <image> question : is there a red circle ? answer :",
    "<s> <image> <image> <image> question : is there a blue circle ? choices : ( a ) yes ( b ) no answer :",
]


def test_single_turn_tensors_are_unchanged(tokenizer):
    processor = PromptProcessor(tokenizer, 3, 64, "cot")
    records = [validate_record(r) for r in SINGLE_TURN]
    inputs = processor.training_inputs(records)
    rows = [tokenizer.convert_tokens_to_ids(row.split()) for row in SINGLE_TURN_ROWS]
    assert inputs["input_ids"].tolist() == rows
    assert inputs["labels"].tolist() == [
        [token if start <= i < end else IGNORE_INDEX for i, token in enumerate(row)]
        for row, (start, end) in zip(rows, SINGLE_TURN_TARGET_SPANS)]
    assert inputs["attention_mask"].sum(1).tolist() == [end for _, end in SINGLE_TURN_TARGET_SPANS]
    generation = processor.generation_inputs(records)["input_ids"].tolist()
    assert generation == [tokenizer.convert_tokens_to_ids(row.split()) for row in SINGLE_TURN_GENERATION_ROWS]


# --- families ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["star", "meteor", "mccot"])
def test_single_turn_families_refuse_conversations(tokenizer, family):
    family_processor = {
        "star": lambda: StarProcessor(tokenizer, 3, 64, "answer", "seg"),
        "meteor": lambda: MeteorProcessor(tokenizer, 3, 64, "cot", traversal=True, num_tor=2, placement="even"),
        "mccot": lambda: MCCoTProcessor(tokenizer, 64, 32, "direct"),
    }[family]()
    with pytest.raises(ValueError, match=f"the {family} family .* 'chat' is a conversation of 2 turns"):
        family_processor.training_inputs([validate_record(CONVERSATION)])


def test_baseline_loss_on_a_multi_turn_batch(tiny_tokenizer):
    torch.manual_seed(0)
    model = VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer)
    records = [validate_record(CONVERSATION), validate_record({**SINGLE_TURN[1], "rationale": None})]
    images = torch.stack([model.preprocess(make_image(i)) for i in range(2)])
    out = model.batch_loss(images, records)
    assert math.isfinite(float(out["loss"])) and out["skipped"] == 0
    single = model.processor.training_inputs(records[1:])["labels"]
    assert int(out["target_tokens"]) > int((single[:, 1:] != IGNORE_INDEX).sum())
    out["loss"].backward()


def test_the_crop_policy_refuses_conversations(tiny_tokenizer):
    from mmreason.models.virl import DEFAULT_CROP, VirlPolicy

    model = VirlPolicy({**TINY_TEST_CONFIG, "crop": DEFAULT_CROP}, tokenizer=tiny_tokenizer)
    images = torch.stack([model.preprocess(make_image(0))])
    with pytest.raises(ValueError, match="the virl family .* 'chat' is a conversation of 2 turns"):
        model.batch_loss(images, [validate_record(CONVERSATION)])
