"""Batch ``predict`` over a folder or a JSONL file, and ``eval --predictions``' per-sample lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_TEST_CONFIG, WORDS, make_image, make_record, model_images, train_steps, write_shards
from PIL import Image

from mmreason import cli
from mmreason.batch_inference import batch_predict_command
from mmreason.build import build_model
from mmreason.data.schema import validate_record
from mmreason.data.writer import ShardSetWriter
from mmreason.export import load_export, save_export
from mmreason.inference import eval_command, evaluate
from mmreason.rl.crop import crop_text
from mmreason.text.prompts import TEMPLATE_WORDS
from mmreason.text.tokenizer import word_tokenizer
from mmreason.zoo import merge_config

STAR_TEST_CONFIG = merge_config(TINY_TEST_CONFIG, {
    "output_format": "answer", "segmentation": {"embed_dim": 16, "num_heads": 2, "depth": 1, "upscale": 4}})
TOKENS = "4"


def _export(family: str, config: dict, folder):
    """An untrained model whose weights are drawn wide enough that its answers differ from input to input."""
    torch.manual_seed(0)
    model = build_model(family, config, tokenizer=word_tokenizer([*TEMPLATE_WORDS, *WORDS]))
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.2)
    return save_export(model, folder)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _export("baseline", TINY_TEST_CONFIG, tmp_path_factory.mktemp("baseline") / "export")


def _seg_record(i: int) -> dict:
    return {**make_record(i), "task": "seg", "answer": ("the red circle", "the blue square")[i % 2]}


def _square(i: int) -> Image.Image:
    """A different 0/255 square mask per sample, as the shards hold masks."""
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (6, 4 + 8 * (i % 2), 20, 16 + 8 * (i % 2)))
    return mask


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    """A segmentation model taught two images' masks, so it finds objects and its masks are not empty."""
    torch.manual_seed(0)
    model = build_model("star", STAR_TEST_CONFIG, tokenizer=word_tokenizer([*TEMPLATE_WORDS, *WORDS]))
    records = [validate_record(_seg_record(i)) for i in range(2)]
    masks = torch.stack([torch.from_numpy(np.asarray(_square(i))) for i in range(2)])
    train_steps(model, model_images(model, 2), records, steps=60, lr=5e-3, masks=masks)
    return save_export(model.eval(), tmp_path_factory.mktemp("star") / "export")


def _predict(argv: list[str]) -> None:
    """``mmreason predict`` as the CLI parses it."""
    batch_predict_command(cli._parser().parse_args(["predict", *argv]))


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _image_folder(folder):
    folder.mkdir()
    for i, name in enumerate(["e.png", "b.jpg", "d.webp", "a.png", "c.PNG"]):
        make_image(i, size=24 + 4 * i).save(folder / name)
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("not an input")
    return folder


def test_a_folder_is_answered_in_sorted_order_and_a_corrupt_image_is_named(baseline, tmp_path, capsys):
    folder = _image_folder(tmp_path / "images")
    out = tmp_path / "out" / "results.jsonl"
    _predict(["--model", str(baseline), "--inputs", str(folder), "--question", "is there a red circle?",
              "--out", str(out), "--batch-size", "2", "--max-new-tokens", TOKENS])
    lines = _lines(out)
    assert [line["id"] for line in lines] == ["a.png", "b.jpg", "c.PNG", "d.webp", "e.png"]
    assert all(line.keys() >= {"id", "image", "question", "text", "answer", "rationale"} for line in lines)
    summary = capsys.readouterr().out
    assert "answered 5 input(s)" in summary and "skipped 1" in summary
    assert "broken.png: unreadable image" in summary
    assert not list(out.parent.glob(".*tmp"))


def test_a_jsonl_file_keeps_ids_choices_and_order_and_names_its_bad_lines(baseline, tmp_path, capsys):
    make_image(0).save(tmp_path / "x.png")
    (tmp_path / "sub").mkdir()
    make_image(1).save(tmp_path / "sub" / "y.png")
    lines = [{"image": "x.png", "question": "how many shapes?", "id": "first"},
             {"image": "sub/y.png", "question": "is it red or blue?", "choices": ["red", "blue"], "id": 7},
             "not json {",
             {"image": "missing.png", "question": "is there a circle?"},
             {"image": "x.png", "question": "which?", "choices": ["only one"]},
             {"image": "x.png", "question": "is there a square?"}]
    inputs = tmp_path / "queries.jsonl"
    inputs.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "results.jsonl"
    _predict(["--model", str(baseline), "--inputs", str(inputs), "--out", str(out), "--batch-size", "2",
              "--max-new-tokens", TOKENS, "--json"])
    results = _lines(out)
    assert [r["id"] for r in results] == ["first", 7, 6]  # a line without an id is known by its line number
    assert results[1]["choices"] == ["red", "blue"] and results[0]["choices"] is None
    assert [r["image"] for r in results] == ["x.png", "sub/y.png", "x.png"]
    summary = json.loads(capsys.readouterr().out)
    assert summary["answered"] == 3
    assert [s["input"] for s in summary["skipped"]] == ["queries.jsonl:3", "missing.png", "x.png"]
    assert "choices" in summary["skipped"][2]["reason"]


def test_batched_answers_equal_single_image_predict(baseline, tmp_path):
    questions = ["is there a red circle?", "how many shapes?", "is there a blue square at the left?",
                 "is it red or blue?", "how many circles?"]
    queries = []
    for i, question in enumerate(questions):
        make_image(i, size=20 + 6 * i).save(tmp_path / f"{i}.png")
        queries.append({"image": f"{i}.png", "question": question,
                        **({"choices": ["red", "blue"]} if "or" in question else {})})
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    out = tmp_path / "results.jsonl"
    _predict(["--model", str(baseline), "--inputs", str(tmp_path / "q.jsonl"), "--out", str(out),
              "--batch-size", "3", "--max-new-tokens", "6"])
    model, lines = load_export(baseline), _lines(out)
    assert len({line["text"] for line in lines}) > 1  # the answers depend on the inputs
    for query, line in zip(queries, lines, strict=True):
        single = model.predict(tmp_path / query["image"], query["question"], query.get("choices"), max_new_tokens=6)
        assert (line["text"], line["answer"], line["rationale"]) == (single["text"], single["answer"],
                                                                     single["rationale"])


def test_a_segmentation_model_writes_its_masks_beside_the_results(star, tmp_path):
    queries = [{"image": f"{i}.png", "question": make_record(i)["question"]} for i in range(3)]
    for i in range(3):
        make_image(i).save(tmp_path / f"{i}.png")
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    out = tmp_path / "out" / "results.jsonl"
    _predict(["--model", str(star), "--inputs", str(tmp_path / "q.jsonl"), "--out", str(out), "--batch-size", "2",
              "--max-new-tokens", "8"])
    model, lines = load_export(star), _lines(out)
    assert [line["found"] for line in lines[:2]] == [True, True]
    for i, (query, line) in enumerate(zip(queries, lines, strict=True)):
        assert line["mask"] == f"results-masks/{i:06d}.png"
        mask = np.asarray(Image.open(out.parent / line["mask"]))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
        single = model.predict(tmp_path / query["image"], query["question"], max_new_tokens=8)
        assert torch.equal(torch.from_numpy(mask > 0), single["mask"]) and line["answer"] == single["answer"]
    assert (np.asarray(Image.open(out.parent / lines[0]["mask"])) > 0).sum() > 50


def test_a_failed_run_keeps_the_previous_results(baseline, tmp_path, monkeypatch):
    folder = _image_folder(tmp_path / "images")
    out = tmp_path / "results.jsonl"
    out.write_text("previous\n")

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("mmreason.models.baseline.VisionLanguageModel.respond", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        _predict(["--model", str(baseline), "--inputs", str(folder), "--question", "how many shapes?",
                  "--out", str(out), "--max-new-tokens", TOKENS])
    assert out.read_text() == "previous\n" and not list(tmp_path.glob(".*tmp"))


def test_eval_predictions_list_every_sample_and_agree_with_the_report(baseline, tmp_path):
    urls = write_shards(tmp_path, "test", [4, 3])
    path = tmp_path / "predictions.jsonl"
    model = load_export(baseline)
    replies = iter(["the answer is yes", "<answer> yes </answer>", "maybe no", "no"] * 2)
    model.answer_batch = lambda images, records, **budget: [next(replies) for _ in records]
    report = evaluate(model, urls, batch_size=3, max_new_tokens=int(TOKENS), predictions=path)["report"]
    lines = _lines(path)
    assert [line["key"] for line in lines] == [f"s{i:05d}" for i in range(7)]
    assert len(lines) == report["n"] == 7
    assert [line["correct"] for line in lines] == [True, False, False, True, True, False, False]
    assert sum(line["correct"] for line in lines) == round(report["accuracy"] * report["n"]) == 3
    assert [line["parsed_answer"] for line in lines][:4] == ["yes", "yes", None, "no"]
    assert sum(line["parsed_answer"] is None for line in lines) == round(report["parse_failure_rate"] * 7)
    for i, line in enumerate(lines):
        record = make_record(i)
        assert (line["question"], line["gold"]) == (record["question"], record["answer"])
        assert line.keys() >= {"text", "answer", "rationale", "parsed_answer", "correct"}
    parsed = cli._parser().parse_args(["eval", "--model", "m", "--data", "d", "--predictions", "p.jsonl"])
    assert parsed.predictions == "p.jsonl"


def test_eval_predictions_carry_each_mask_iou(star, tmp_path, capsys):
    writer = ShardSetWriter(tmp_path, "test", samples_per_shard=8)
    for i in range(3):
        writer.write(f"s{i:05d}", make_image(i), _seg_record(i), _square(i))
    writer.close()
    path, report = tmp_path / "predictions.jsonl", tmp_path / "report.json"
    eval_command(cli._parser().parse_args([
        "eval", "--model", str(star), "--data", str(tmp_path / "test-000000.tar"), "--out", str(report),
        "--batch-size", "2", "--max-new-tokens", "8", "--predictions", str(path)]))
    lines, scores = _lines(path), json.loads(report.read_text())["segmentation"]
    assert len(lines) == scores["n"] == 3
    assert sum(line["iou"] for line in lines) / 3 == pytest.approx(scores["giou"]) and scores["giou"] > 0.5
    assert all("mask" not in line for line in lines)


def test_eval_predictions_carry_each_crop_iou(tmp_path):
    config = merge_config(TINY_TEST_CONFIG, {"crop": {"max_actions": 2, "min_size": 8, "tokens": 4}})
    model = load_export(_export("virl", config, tmp_path / "export"))
    boxes = iter([[[1, 1, 10, 10]], [[1, 1, 10, 4]], [], [[20, 20, 30, 30]]])  # the records' box: 1 1 10 10

    def respond(images, records, max_new_tokens=None):
        return [{"text": " ".join(crop_text(box) for box in crops) + " yes", "crops": crops}
                for crops in (next(boxes) for _ in records)]

    model.respond = respond
    path = tmp_path / "predictions.jsonl"
    report = evaluate(model, write_shards(tmp_path, "test", [4]), batch_size=3, max_new_tokens=4,
                      predictions=path)["report"]
    ious = [line["crop_iou"] for line in _lines(path)]
    assert ious[0] == pytest.approx(1.0) and ious[1] == pytest.approx(1 / 3) and ious[2:] == [None, 0.0]
    assert report["crops"]["mean_crop_iou"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_an_overlong_jsonl_line_is_named_without_being_read_whole(tmp_path):
    from mmreason.batch_inference import MAX_LINE_CHARS, read_inputs

    make_image(0).save(tmp_path / "a.png")
    source = tmp_path / "q.jsonl"
    source.write_text('{"image": "' + "x" * (3 * MAX_LINE_CHARS) + '"}\n{"image": "a.png", "question": "is it red?"}\n')
    queries, bad = read_inputs(source)
    assert [q["image"] for q in queries] == ["a.png"] and queries[0]["id"] == 2  # numbering survives
    assert bad == [("q.jsonl:1", f"line longer than {MAX_LINE_CHARS:,} characters")]
