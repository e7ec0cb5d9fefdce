"""Crop actions: text form round trip, lenient parsing, clamping and batched crop-and-resize."""

from __future__ import annotations

import pytest
import torch

from mmreason.rl.crop import (
    CROP_CLOSE,
    CROP_OPEN,
    clamp_box,
    crop_and_resize,
    crop_text,
    format_box,
    parse_box,
    parse_crops,
)


def test_format_box_writes_one_token_per_digit():
    assert format_box([25, 16, 34, 5]) == "2 5 , 1 6 , 3 4 , 5"
    assert format_box([0, 9.6, 100, 7]) == "0 , 1 0 , 1 0 0 , 7"
    assert crop_text([25, 16, 34, 25]) == f"{CROP_OPEN} 2 5 , 1 6 , 3 4 , 2 5 {CROP_CLOSE}"
    with pytest.raises(ValueError, match="negative"):
        format_box([-1, 0, 5, 5])
    with pytest.raises(ValueError, match="4 coordinates"):
        format_box([1, 2, 3])


@pytest.mark.parametrize("text", ["2 5 , 1 6 , 3 4 , 2 5", "[25,16,34,25]", " [ 25 , 16 ,34, 25 ] ",
                                  "[2 5, 1 6 ,3 4,2 5]", "25,16,34,25"])
def test_parse_box_reads_both_text_forms(text):
    assert parse_box(text) == [25.0, 16.0, 34.0, 25.0]


def test_parse_box_round_trips_format_box_and_reads_decimals():
    assert parse_box(format_box([3, 0, 120, 64])) == [3.0, 0.0, 120.0, 64.0]
    assert parse_box("[1.5, 2, 3.25, 4]") == [1.5, 2.0, 3.25, 4.0]
    assert parse_box("1 . 5 , 2 , 3 . 2 5 , 4") == [1.5, 2.0, 3.25, 4.0]


@pytest.mark.parametrize("text", ["", "1,2,3", "1,2,3,4,5", "[1,2,3,4", "1,2,3,4]", "[[1,2,3,4]]",
                                  "a,b,c,d", "1 2 3 4", "1.,2,3,4", "1,,2,3", "3,2,1,4", "1,2,3,2"])
def test_parse_box_returns_none_on_malformed_bodies(text):
    assert parse_box(text) is None


def test_parse_crops_keeps_malformed_actions_in_order():
    text = (f"<think>look {crop_text([1, 2, 10, 20])} then <crop>[5,5,1]</crop> and "
            "<crop>[0, 0, 64.5, 32]</crop></think><answer>2</answer>")
    assert parse_crops(text) == [[1.0, 2.0, 10.0, 20.0], None, [0.0, 0.0, 64.5, 32.0]]


def test_an_unclosed_opener_is_text():
    text = "<crop> 1 , 2 <crop>[1,2,3,4]</crop> x </crop>"
    assert parse_crops(text) == [[1.0, 2.0, 3.0, 4.0]]
    assert parse_crops("no action <crop> 1 , 2") == []


@pytest.mark.parametrize("box, min_size, expected", [
    ([2, 3, 10, 12], 1, [2, 3, 10, 12]),          # inside: unchanged
    ([1.4, 2.6, 9.4, 12.6], 1, [1, 3, 9, 13]),     # rounded
    ([-5, -2, 50, 31], 1, [0, 0, 40, 30]),         # overflows every edge
    ([10, 10, 12, 12], 5, [8, 8, 13, 13]),         # grows about its centre, odd pixel to the far side
    ([1, 1, 2, 2], 8, [0, 0, 8, 8]),               # too small at the near edges: shifted inside
    ([38, 29, 39, 30], 8, [32, 22, 40, 30]),       # too small at the far edges
    ([50, 50, 60, 60], 4, [36, 26, 40, 30]),       # off the image: onto the nearest edge
    ([3, 3, 4, 4], 35, [0, 0, 35, 30]),            # min_size beyond the height only
    ([3, 3, 4, 4], 99, [0, 0, 40, 30]),            # beyond the image: the whole image
])
def test_clamp_box(box, min_size, expected):
    assert clamp_box(box, width=40, height=30, min_size=min_size) == expected


def test_clamp_box_refuses_an_empty_minimum():
    with pytest.raises(ValueError, match="at least 1"):
        clamp_box([0, 0, 1, 1], 4, 4, min_size=0)


def test_crop_and_resize_at_the_box_size_is_the_exact_slice():
    images = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    crops = crop_and_resize(images, [[1, 2, 4, 5], [5, 0, 8, 3]], size=3)
    assert torch.equal(crops[0], images[0, :, 2:5, 1:4])
    assert torch.equal(crops[1], images[1, :, 0:3, 5:8])
    overflowing = crop_and_resize(images[:1], torch.tensor([[-3.0, -3.0, 2.0, 2.0]]), size=2)
    assert torch.equal(overflowing[0], images[0, :, 0:2, 0:2])


def test_crop_and_resize_upsamples_bilinearly():
    images = torch.zeros(1, 3, 5, 7)
    images[0, :, 2:4, 3:5] = torch.tensor([[0.0, 4.0], [8.0, 12.0]])
    expected = torch.tensor([[0.0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]])
    crops = crop_and_resize(images, [[3, 2, 5, 4]], size=4)
    assert torch.allclose(crops[0], expected.expand(3, 4, 4))


def test_crop_and_resize_batches_crops_of_different_sizes_and_keeps_the_dtype():
    images = torch.ones(3, 3, 10, 12, dtype=torch.bfloat16)
    images[1] = 2.0
    crops = crop_and_resize(images, torch.tensor([[0, 0, 12, 10], [4, 4, 6, 5], [1, 1, 9, 9]]), size=4)
    assert crops.shape == (3, 3, 4, 4) and crops.dtype == torch.bfloat16
    assert torch.equal(crops[1], torch.full((3, 4, 4), 2.0, dtype=torch.bfloat16))
    assert torch.equal(crops[0], torch.ones(3, 4, 4, dtype=torch.bfloat16))
    assert crop_and_resize(images[:0], [], size=4).shape == (0, 3, 4, 4)
    with pytest.raises(ValueError, match="one box per image"):
        crop_and_resize(images, [[0, 0, 2, 2]], size=4)
