"""Reasoning segmentation: `<seg>` targets, masks from `<seg>` states, the loss, test-time scaling, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEST_CONFIG, make_image, make_record, model_images, train_steps
from PIL import Image

from mmreason.data.schema import validate_record
from mmreason.models.star import StarSegmenter, dice_loss
from mmreason.zoo import merge_config

ROOT = Path(__file__).resolve().parents[1]
STAR_TEST_CONFIG = merge_config(TINY_TEST_CONFIG, {
    "output_format": "answer",
    "segmentation": {"embed_dim": 16, "num_heads": 2, "depth": 1, "upscale": 4},
})


@pytest.fixture
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return StarSegmenter(STAR_TEST_CONFIG, tokenizer=tiny_tokenizer)


def _seg_record(i: int):
    return validate_record({**make_record(i), "task": "seg", "answer": ("the red circle", "the blue square")[i % 2]})


def square_masks(n: int) -> torch.Tensor:
    """0/255 masks as the shards hold them: a different square per sample."""
    masks = torch.zeros(n, 32, 32, dtype=torch.uint8)
    for i in range(n):
        masks[i, 4 + 8 * (i % 2): 16 + 8 * (i % 2), 6:20] = 255
    return masks


def test_segmentation_answers_end_with_seg_and_others_do_not(model):
    assert model.processor.target_text(_seg_record(0)) == "<answer> the red circle <seg> </answer>"
    assert model.processor.target_text(validate_record(make_record(0))) == "<answer> yes </answer>"
    empty = validate_record({**make_record(0), "task": "seg", "answer": ""})  # ReasonSeg: the mask is the answer
    assert model.processor.target_text(empty) == "<answer> <seg> </answer>"


def test_the_state_before_seg_prompts_the_decoder(model):
    ids = torch.tensor([[5, 6, model.seg_token_id, 7], [model.seg_token_id, 8, model.seg_token_id, 9]])
    hidden = torch.arange(8, dtype=torch.float32).view(2, 4, 1)
    states, rows = model._seg_states(hidden, ids)
    assert states.flatten().tolist() == [1.0, 5.0] and rows.tolist() == [0, 1]  # LISA: one position earlier


def test_dice_by_hand():
    logits = torch.tensor([[[0.0, 100.0], [-100.0, 0.0]]])  # σ = 0.5, 1, 0, 0.5
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    expected = 1 - (2 * 1.5 + 1) / (2.0 + 2.0 + 1)
    assert float(dice_loss(logits, target)) == pytest.approx(expected)


def test_loss_has_text_and_mask_terms_and_the_mask_is_learned(model):
    images, records, masks = model_images(model, 2), [_seg_record(0), _seg_record(1)], square_masks(2)
    first = model.batch_loss(images, records, masks)
    assert float(first["mask_bce"]) > 0 and float(first["mask_dice"]) > 0
    expected = (model.loss_weights["text"] * 0 + 2.0 * first["mask_bce"] + 0.5 * first["mask_dice"])
    assert float(first["loss"]) > float(expected)  # plus the text CE
    _, out = train_steps(model, images, records, steps=60, lr=5e-3, masks=masks)
    assert float(out["mask_dice"]) < 0.5 * float(first["mask_dice"])
    no_masks = model.batch_loss(images, records, None)  # e.g. a batch of ordinary questions
    assert float(no_masks["mask_bce"]) == 0.0
    model.eval()
    results = model.segment(images, records, max_new_tokens=8)
    assert all(r["found"] and r["answer"] == rec.answer for r, rec in zip(results, records))
    target = masks == 255
    for r, t in zip(results, target):
        assert (r["mask"] & t).sum() / (r["mask"] | t).sum() > 0.7


def test_test_time_scaling_and_no_object(model, monkeypatch):
    model.eval()
    images, records = model_images(model, 2), [_seg_record(0), _seg_record(1)]
    results = model.segment(images, records, samples=3, temperature=1.0, max_new_tokens=6)
    assert len(results) == 2 and all(r["mask"].shape == (32, 32) and r["votes"] == 3 for r in results)
    tok = model.tokenizer
    plain = tok("<answer> the red circle </answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def answers_without_seg(images, records, max_new_tokens, num_return_sequences=1, **kwargs):
        return torch.tensor([plain] * (len(records) * num_return_sequences))

    monkeypatch.setattr(model, "generate_ids", answers_without_seg)  # no <seg>: every vote is "no object"
    for r in model.segment(images, records, samples=3) + model.segment(images, records):
        assert not r["found"] and not bool(r["mask"].any()) and r["answer"] == "the red circle"


def test_reasonseg_shards_train_with_the_recipe_then_predict_and_eval(tmp_path):
    from test_convert import convert, gradient, save, write_json

    src = tmp_path / "reason"
    for i, name in enumerate(("room", "desk", "lamp")):
        save(src / f"{name}.jpg", gradient("RGB", (48, 40)))
        square = [[4 + 8 * i, 4], [20 + 8 * i, 4], [20 + 8 * i, 24], [4 + 8 * i, 24]]
        write_json(src / f"{name}.json", {"text": ["what lights the room?"], "is_sentence": True,
                                          "shapes": [{"label": "target", "points": square},
                                                     {"label": "ignore", "points": [[0, 30], [6, 30], [6, 36]]}]})
    for split in ("train", "val"):
        convert("reasonseg", src, tmp_path / "data", split=split)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}

    def mmreason(*args):
        result = subprocess.run([sys.executable, "-m", "mmreason", *args], capture_output=True, text=True,
                                timeout=300, env=env, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    root = tmp_path / "run"
    mmreason("fit", "-c", "recipes/star/synth-tiny.yaml", "--trainer.default_root_dir", str(root),
             "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
             "--trainer.max_time", "null", "--trainer.enable_progress_bar", "false",
             "--model.init_args.model_config", json.dumps({**STAR_TEST_CONFIG, "tokenizer": "synth-bpe"}),
             "--model.init_args.init", "null",
             "--data.init_args.synth", "null", "--data.init_args.train", str(tmp_path / "data"),
             "--data.init_args.val", str(tmp_path / "data"), "--data.init_args.batch_size", "2",
             "--data.init_args.num_workers", "0")
    export = root / "export"
    assert json.loads((export / "config.json").read_text())["family"] == "star"
    metrics = json.loads((export / "config.json").read_text())["metrics"]
    assert 0.0 <= metrics["val/giou"] <= 1.0 and "val/giou_sentence" in metrics
    make_image(0).save(tmp_path / "x.png")
    out = mmreason("predict", "--model", str(export), "--image", str(tmp_path / "x.png"), "--question",
                   "what lights the room?", "--samples", "2", "--out", str(tmp_path / "overlay.png"), "--json")
    assert {"text", "answer", "found"} <= set(json.loads(out.splitlines()[-1]))
    assert Image.open(tmp_path / "overlay.png").width == 256  # and a caption band below the picture
    assert Image.open(tmp_path / "overlay-mask.png").size == (256, 256)
    report = tmp_path / "report.json"
    mmreason("eval", "--model", str(export), "--data", str(tmp_path / "data"), "--split", "val", "--samples", "2",
             "--out", str(report))
    segmentation = json.loads(report.read_text())["segmentation"]
    assert segmentation["n"] == 3 and set(segmentation["per_group"]) == {"sentence"}
