"""Pictures explain themselves: overlays carry a caption band with the question and answer, a note when
nothing was found and numbered crops; the card figures show ground truth beside prediction, and axes,
labels and a colour bar."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import ROOT, make_image
from PIL import Image

from mmreason.overlay import (
    COLOURS,
    NO_CROPS,
    NO_OBJECT,
    caption_lines,
    draw_crops,
    draw_mask,
    draw_prediction,
    font,
    upscaled,
    with_caption,
    wrap,
)

QUESTION = "is there a red circle to the left of the blue square?"


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def band(image: Image.Image, height: int = 256) -> np.ndarray:
    """The caption band: what lies below the (upscaled) picture."""
    return pixels(image)[height:]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_mask_overlay_carries_a_caption_band_below_the_picture(tmp_path):
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:12, 4:12] = True
    overlay = draw_mask(make_image(0), mask, str(tmp_path / "o.png"), QUESTION, "yes")
    assert overlay.width == 256 and overlay.height > 256  # upscaled from 32, then the band
    assert (band(overlay) < 128).any() and (band(overlay) == 255).any()  # dark text on white
    assert Image.open(tmp_path / "o.png").size == overlay.size
    assert Image.open(tmp_path / "o-mask.png").size == (256, 256)  # the mask alone stays the picture's size
    assert caption_lines(QUESTION, "yes") == [(f"Q: {QUESTION}", "black"), ("A: yes", "black")]


def test_an_empty_mask_or_no_object_says_so():
    empty = torch.zeros(32, 32, dtype=torch.bool)
    found = torch.zeros(32, 32, dtype=torch.bool)
    found[0, 0] = True
    said = draw_mask(make_image(0), empty, question=QUESTION, answer="the red circle")
    plain = with_caption(upscaled(make_image(0)), caption_lines(QUESTION, "the red circle"))
    assert said.height > plain.height  # one more line: the note
    assert (band(said)[: band(plain).shape[0]] == band(plain)).all()  # the same question and answer above it
    note_rows = band(said)[band(plain).shape[0] - 8:]
    assert ((note_rows[..., 0] > 150) & (note_rows[..., 1] < 100)).any()  # the note, in red
    not_found = draw_mask(make_image(0), found, question=QUESTION, answer="x", found=False)
    assert not_found.size == draw_mask(make_image(0), empty, question=QUESTION, answer="x").size
    assert draw_mask(make_image(0), found, question=QUESTION, answer="x").height < not_found.height
    assert caption_lines(note=NO_OBJECT)[0][0] == "no object found"


def test_crops_are_numbered_in_order_and_no_crops_is_said():
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    boxes = [[2, 2, 14, 14], [16, 16, 30, 30]]
    overlay = draw_crops(grey, boxes, 32, question=QUESTION, answer="yes")
    assert overlay.width == 256 and overlay.height > 256
    labels = []
    for (x0, y0, _, _), colour in zip(boxes, COLOURS):
        label = pixels(overlay)[y0 * 8: y0 * 8 + 24, x0 * 8: x0 * 8 + 20]
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert (label == rgb).all(-1).sum() > 100 and (label.min(-1) > 220).sum() > 5  # a light digit on colour
        labels.append(label.min(-1) > 220)
    assert (labels[0] != labels[1]).any()  # "1" and "2" are different glyphs
    none = draw_crops(grey, [], 32, question=QUESTION, answer="yes")
    assert (pixels(none)[:256] == 128).all()  # nothing drawn on the picture
    assert none.height == overlay.height and (band(none) != band(overlay)).any()  # "no crops" vs "2 crops"
    assert caption_lines(note=NO_CROPS)[0][0] == "no crops"


def test_long_captions_wrap_to_the_picture_and_families_without_a_region_still_get_one():
    face = font(14)
    lines = wrap("word " * 40 + "x" * 80, face, 200)
    assert len(lines) > 3 and all(face.getlength(line) <= 200 for line in lines)
    assert "".join(lines).replace(" ", "") == ("word" * 40 + "x" * 80)
    picture = draw_prediction(make_image(2), QUESTION, {"answer": "yes", "rationale": None})
    assert picture.width == 256 and picture.height > 256 and (band(picture) < 128).any()
    mask = torch.ones(8, 8, dtype=torch.bool)
    drawn = draw_prediction(make_image(2), QUESTION, {"answer": "the square", "mask": mask, "found": True})
    assert pixels(drawn)[128, 128].tolist() != pixels(picture)[128, 128].tolist()  # tinted


def test_the_gallery_shows_image_truth_and_prediction_with_the_iou():
    tool = load_tool("seg_gallery")
    truth = torch.zeros(32, 32, dtype=torch.bool)
    truth[4:12, 4:12] = True
    half = truth.clone()
    half[8:12] = False
    tile, iou = tool.tile(make_image(3), truth, {"mask": half, "answer": "the square", "found": True}, QUESTION)
    assert iou == pytest.approx(0.5, abs=1e-4)
    assert tile.width == 3 * tool.PANEL + 2 * tool.GAP and tile.height > tool.PANEL
    empty, score = tool.tile(make_image(3), truth, {"mask": torch.zeros(32, 32, dtype=torch.bool),
                                                    "answer": "", "found": False}, QUESTION)
    assert score == 0.0 and empty.height > tile.height  # the "no object found" line
    sheet = tool.gallery([tile, empty, tile], columns=2)
    assert sheet.width > 2 * tile.width and sheet.height > tile.height + empty.height


def test_the_similarity_heatmap_has_a_colour_bar_and_both_ends_of_its_scale(tmp_path):
    pytest.importorskip("matplotlib")
    load_tool("meteor_tor_similarity").heatmap(torch.tensor([[1.0, -1.0], [0.0, 0.5]]), tmp_path / "h.png", "t")
    image = pixels(Image.open(tmp_path / "h.png"))
    assert image.shape[1] > image.shape[0]  # the matrix, and the colour bar beside it
    for end in ((103, 0, 31), (5, 48, 97)):  # RdBu_r at 1 and at -1
        assert (np.abs(image - end).max(-1) <= 2).sum() > 400  # a cell's worth, not just the bar's end
