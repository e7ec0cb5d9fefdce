"""The SAM-style prompt encoder and mask decoder: shapes, prompt routing, gradients, a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from mmreason.layers.mask_decoder import MaskDecoder, PromptEncoder

DIM, GRID, IMAGE = 16, 4, 32


@pytest.fixture
def parts():
    torch.manual_seed(0)
    return PromptEncoder(DIM, IMAGE, GRID), MaskDecoder(DIM, num_heads=2, depth=1, upscale=4)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, GRID * GRID, DIM)


@pytest.mark.parametrize("prompt, tokens", [("box", 2), ("point", 1), ("both", 3), ("sparse", 1), ("all", 4)])
def test_prompt_combinations_give_tokens_and_masks(parts, prompt, tokens):
    encoder, decoder = parts
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [0.0, 0.0, 31.0, 31.0]]) if prompt in ("box", "both", "all") else None
    points = torch.tensor([[5.0, 6.0], [30.0, 1.0]]) if prompt in ("point", "both", "all") else None
    seg = torch.randn(2, DIM) if prompt in ("sparse", "all") else None
    sparse = encoder(boxes=boxes, points=points, sparse=seg)
    assert sparse.shape == (2, tokens, DIM)
    masks, iou = decoder(images(), encoder.image_pe(), sparse, output_size=IMAGE)
    assert masks.shape == (2, IMAGE, IMAGE) and iou.shape == (2,)


def test_prompt_encoder_needs_a_prompt(parts):
    with pytest.raises(ValueError, match="at least one"):
        parts[0]()


def test_image_pe_covers_the_grid(parts):
    pe = parts[0].image_pe()
    assert pe.shape == (1, GRID * GRID, DIM)
    assert torch.unique(pe, dim=1).shape[1] == GRID * GRID


@pytest.mark.parametrize("upscale", [1, 2, 4])
def test_native_resolution_and_output_size(upscale):
    decoder = MaskDecoder(DIM, num_heads=2, depth=1, upscale=upscale)
    pe = PromptEncoder(DIM, IMAGE, GRID).image_pe()
    sparse = torch.randn(2, 1, DIM)
    assert decoder(images(), pe, sparse)[0].shape == (2, GRID * upscale, GRID * upscale)
    assert decoder(images(), pe, sparse, output_size=(24, 20))[0].shape == (2, 24, 20)


def test_image_index_routes_prompts_to_images(parts):
    encoder, decoder = parts
    seg = torch.randn(1, 1, DIM).expand(3, 1, DIM)
    masks, iou = decoder(images(2), encoder.image_pe(), seg, output_size=IMAGE, image_index=torch.tensor([0, 0, 1]))
    assert masks.shape == (3, IMAGE, IMAGE) and iou.shape == (3,)
    torch.testing.assert_close(masks[0], masks[1])
    assert not torch.allclose(masks[0], masks[2], atol=1e-4)


def test_more_prompts_than_images_needs_image_index(parts):
    encoder, decoder = parts
    with pytest.raises(ValueError, match="image_index"):
        decoder(images(2), encoder.image_pe(), torch.randn(3, 1, DIM))
    with pytest.raises(ValueError, match="image_index values"):
        decoder(images(2), encoder.image_pe(), torch.randn(3, 1, DIM), image_index=torch.tensor([0, 1, 2]))


def test_different_boxes_on_one_image_give_different_masks(parts):
    encoder, decoder = parts
    sparse = encoder(boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [16.0, 16.0, 31.0, 31.0]]))
    masks, _ = decoder(images(1), encoder.image_pe(), sparse, output_size=IMAGE, image_index=torch.tensor([0, 0]))
    assert not torch.allclose(masks[0], masks[1], atol=1e-4)


def test_gradients_reach_the_sparse_prompt(parts):
    encoder, decoder = parts
    seg = torch.randn(2, DIM, requires_grad=True)  # a projected <seg> state
    masks, iou = decoder(images(), encoder.image_pe(), encoder(sparse=seg, points=torch.rand(2, 2) * IMAGE))
    (masks.square().mean() + iou.sum()).backward()
    assert seg.grad is not None and seg.grad.abs().sum() > 0
    assert decoder.no_mask.grad.abs().sum() > 0


def test_no_mask_embedding_is_used_when_dense_is_none(parts):
    encoder, decoder = parts
    image, pe, sparse = images(), encoder.image_pe(), torch.randn(2, 1, DIM)
    with torch.no_grad():
        decoder.no_mask.normal_()
    masks, _ = decoder(image, pe, sparse)
    explicit, _ = decoder(image, pe, sparse, dense=decoder.no_mask.expand(2, GRID * GRID, DIM))
    torch.testing.assert_close(masks, explicit)
    zero, _ = decoder(image, pe, sparse, dense=torch.zeros(2, GRID * GRID, DIM))
    assert not torch.allclose(masks, zero, atol=1e-4)


def test_bad_config_is_reported():
    with pytest.raises(ValueError, match="upscale"):
        MaskDecoder(DIM, upscale=3)
    with pytest.raises(ValueError, match="num_heads"):
        MaskDecoder(12, num_heads=4)


def test_learned_prompt_overfits_a_square():
    torch.manual_seed(0)
    encoder, decoder = PromptEncoder(DIM, 16, GRID), MaskDecoder(DIM, num_heads=2, depth=1, upscale=4)
    image, pe = torch.randn(1, GRID * GRID, DIM), encoder.image_pe()
    target = torch.zeros(1, 16, 16)
    target[:, 2:10, 6:14] = 1.0  # edges inside token cells: the upscaling must place them
    seg = torch.nn.Parameter(torch.randn(1, 1, DIM))
    optimizer = torch.optim.Adam([seg, *decoder.parameters()], lr=1e-2)
    for _ in range(100):
        masks, _ = decoder(image, pe, seg, output_size=16)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(masks, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predicted = decoder(image, pe, seg, output_size=16)[0] > 0
    iou = (predicted & target.bool()).sum() / (predicted | target.bool()).sum()
    assert iou > 0.9
