"""SAM's prompt encoder and mask decoder: shapes, prompt routing, gradients, a tiny overfit, and
SAM's own layout — a SAM state dict loads by name and gives SAM's outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmreason.layers.mask_decoder import MaskDecoder, PromptEncoder

DIM, GRID, IMAGE = 16, 4, 32


@pytest.fixture
def parts():
    torch.manual_seed(0)
    return PromptEncoder(DIM, IMAGE, GRID), MaskDecoder(DIM, num_heads=2, depth=1, upscale=4)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, GRID * GRID, DIM)


@pytest.mark.parametrize("prompt, tokens", [("box", 2), ("point", 2), ("both", 3), ("sparse", 1), ("all", 4)])
def test_prompt_combinations_give_tokens_and_masks(parts, prompt, tokens):
    encoder, decoder = parts
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [0.0, 0.0, 31.0, 31.0]]) if prompt in ("box", "both", "all") else None
    points = torch.tensor([[5.0, 6.0], [30.0, 1.0]]) if prompt in ("point", "both", "all") else None
    seg = torch.randn(2, DIM) if prompt in ("sparse", "all") else None
    sparse, dense = encoder(boxes=boxes, points=points, sparse=seg)
    assert sparse.shape == (2, tokens, DIM) and dense.shape == (2, GRID * GRID, DIM)  # points alone: + padding
    masks, iou = decoder(images(), encoder.image_pe(), sparse, dense, output_size=IMAGE)
    assert masks.shape == (2, IMAGE, IMAGE) and iou.shape == (2,)
    masks, iou = decoder(images(), encoder.image_pe(), sparse, dense, output_size=IMAGE, multimask_output=True)
    assert masks.shape == (2, 3, IMAGE, IMAGE) and iou.shape == (2, 3)


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
    encoder = PromptEncoder(DIM, IMAGE, GRID)
    sparse, dense = encoder(sparse=torch.randn(2, DIM))
    assert decoder(images(), encoder.image_pe(), sparse, dense)[0].shape == (2, GRID * upscale, GRID * upscale)
    assert decoder(images(), encoder.image_pe(), sparse, dense, output_size=(24, 20))[0].shape == (2, 24, 20)


def test_image_index_routes_prompts_to_images(parts):
    encoder, decoder = parts
    sparse, dense = encoder(sparse=torch.randn(1, DIM).expand(3, DIM))
    masks, iou = decoder(images(2), encoder.image_pe(), sparse, dense, output_size=IMAGE,
                         image_index=torch.tensor([0, 0, 1]))
    assert masks.shape == (3, IMAGE, IMAGE) and iou.shape == (3,)
    torch.testing.assert_close(masks[0], masks[1])
    assert not torch.allclose(masks[0], masks[2], atol=1e-4)


def test_more_prompts_than_images_needs_image_index(parts):
    encoder, decoder = parts
    sparse, dense = encoder(sparse=torch.randn(3, DIM))
    with pytest.raises(ValueError, match="image_index"):
        decoder(images(2), encoder.image_pe(), sparse, dense)
    with pytest.raises(ValueError, match="image_index values"):
        decoder(images(2), encoder.image_pe(), sparse, dense, image_index=torch.tensor([0, 1, 2]))


def test_different_boxes_on_one_image_give_different_masks(parts):
    encoder, decoder = parts
    sparse, dense = encoder(boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [16.0, 16.0, 31.0, 31.0]]))
    masks, _ = decoder(images(1), encoder.image_pe(), sparse, dense, output_size=IMAGE,
                       image_index=torch.tensor([0, 0]))
    assert not torch.allclose(masks[0], masks[1], atol=1e-4)


def test_negative_points_and_mask_prompts_change_the_mask(parts):
    encoder, decoder = parts
    point = torch.tensor([[[5.0, 6.0]]])
    positive = encoder(points=point, point_labels=torch.tensor([[1]]))
    negative = encoder(points=point, point_labels=torch.tensor([[0]]))
    assert not torch.allclose(positive[0], negative[0])
    with_mask = encoder(points=point, masks=torch.randn(1, 1, 4 * GRID, 4 * GRID))
    assert with_mask[1].shape == (1, GRID * GRID, DIM) and not torch.allclose(with_mask[1], positive[1])
    with pytest.raises(ValueError, match=r"mask prompts must be \(B, 1, 16, 16\)"):
        encoder(points=point, masks=torch.randn(1, 1, 8, 8))


def test_gradients_reach_the_sparse_prompt(parts):
    encoder, decoder = parts
    seg = torch.randn(2, DIM, requires_grad=True)  # a projected <seg> state
    sparse, dense = encoder(sparse=seg, points=torch.rand(2, 2) * IMAGE)
    masks, iou = decoder(images(), encoder.image_pe(), sparse, dense)
    (masks.square().mean() + iou.sum()).backward()
    assert seg.grad is not None and seg.grad.abs().sum() > 0
    assert encoder.no_mask_embed.weight.grad.abs().sum() > 0


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
    seg = torch.nn.Parameter(torch.randn(1, DIM))
    optimizer = torch.optim.Adam([seg, *decoder.parameters(), *encoder.parameters()], lr=1e-2)
    for _ in range(100):
        masks, _ = decoder(image, pe, *encoder(sparse=seg), output_size=16)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(masks, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predicted = decoder(image, pe, *encoder(sparse=seg), output_size=16)[0] > 0
    iou = (predicted & target.bool()).sum() / (predicted | target.bool()).sum()
    assert iou > 0.9


# ---- SAM, written out as its modeling code computes it (segment_anything/modeling) ------------------
class SamLayerNorm2d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]


class SamMLP(nn.Module):
    def __init__(self, i, h, o, n):
        super().__init__()
        hs = [h] * (n - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([i] + hs, hs + [o]))

    def forward(self, x):
        for k, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if k < len(self.layers) - 1 else layer(x)
        return x


class SamAttention(nn.Module):
    def __init__(self, dim, heads, downsample_rate=1):
        super().__init__()
        inner = dim // downsample_rate
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _separate(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v):
        q, k, v = self._separate(self.q_proj(q)), self._separate(self.k_proj(k)), self._separate(self.v_proj(v))
        attn = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1)
        out = (attn @ v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class SamMLPBlock(nn.Module):
    def __init__(self, dim, mlp_dim):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

    def forward(self, x):
        return self.lin2(F.relu(self.lin1(x)))


class SamBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim, skip_first_layer_pe):
        super().__init__()
        self.self_attn, self.norm1 = SamAttention(dim, heads), nn.LayerNorm(dim)
        self.cross_attn_token_to_image, self.norm2 = SamAttention(dim, heads, 2), nn.LayerNorm(dim)
        self.mlp, self.norm3 = SamMLPBlock(dim, mlp_dim), nn.LayerNorm(dim)
        self.norm4, self.cross_attn_image_to_token = nn.LayerNorm(dim), SamAttention(dim, heads, 2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class SamTransformer(nn.Module):
    def __init__(self, depth, dim, heads, mlp_dim):
        super().__init__()
        self.layers = nn.ModuleList(SamBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image, self.norm_final_attn = SamAttention(dim, heads, 2), nn.LayerNorm(dim)

    def forward(self, image_embedding, image_pe, point_embedding):
        image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
        image_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        out = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + image_pe, v=keys)
        return self.norm_final_attn(queries + out), keys


class SamPromptEncoder(nn.Module):
    def __init__(self, dim, grid, image_size, mask_in_chans):
        super().__init__()
        self.pe_layer = nn.Module()
        self.pe_layer.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, dim // 2))
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, 2, 2), SamLayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, 2), SamLayerNorm2d(mask_in_chans), nn.GELU(),
            nn.Conv2d(mask_in_chans, dim, 1))
        self.no_mask_embed = nn.Embedding(1, dim)
        self.grid, self.image_size = grid, image_size

    def _pe(self, coords):
        coords = (2 * coords - 1) @ self.pe_layer.positional_encoding_gaussian_matrix
        return torch.cat([torch.sin(2 * math.pi * coords), torch.cos(2 * math.pi * coords)], dim=-1)

    def dense_pe(self):
        grid = torch.ones(self.grid, self.grid)
        y = (grid.cumsum(0) - 0.5) / self.grid
        x = (grid.cumsum(1) - 0.5) / self.grid
        return self._pe(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    def _with_coords(self, coords):
        height, width = self.image_size
        coords = coords.clone()
        coords[..., 0] /= width
        coords[..., 1] /= height
        return self._pe(coords)

    def forward(self, points, labels, boxes, masks, text_embeds):
        bs = text_embeds.shape[0]
        sparse = torch.empty((bs, 0, self.no_mask_embed.weight.shape[1]))
        if points is not None:
            points = points + 0.5
            if boxes is None:
                points = torch.cat([points, torch.zeros(bs, 1, 2)], dim=1)
                labels = torch.cat([labels, -torch.ones(bs, 1)], dim=1)
            emb = self._with_coords(points)
            emb[labels == -1] = 0.0
            emb[labels == -1] += self.not_a_point_embed.weight
            emb[labels == 0] += self.point_embeddings[0].weight
            emb[labels == 1] += self.point_embeddings[1].weight
            sparse = torch.cat([sparse, emb], dim=1)
        if boxes is not None:
            corners = self._with_coords((boxes + 0.5).reshape(-1, 2, 2))
            corners[:, 0, :] += self.point_embeddings[2].weight
            corners[:, 1, :] += self.point_embeddings[3].weight
            sparse = torch.cat([sparse, corners], dim=1)
        sparse = torch.cat([sparse, text_embeds], dim=1)  # LISA appends the <seg> embedding
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, self.grid, self.grid)
        return sparse, dense


class SamMaskDecoder(nn.Module):
    def __init__(self, dim, heads, depth, mlp_dim, iou_hidden):
        super().__init__()
        self.transformer = SamTransformer(depth, dim, heads, mlp_dim)
        self.iou_token, self.num_mask_tokens = nn.Embedding(1, dim), 4
        self.mask_tokens = nn.Embedding(4, dim)
        self.output_upscaling = nn.Sequential(nn.ConvTranspose2d(dim, dim // 4, 2, 2), SamLayerNorm2d(dim // 4),
                                              nn.GELU(), nn.ConvTranspose2d(dim // 4, dim // 8, 2, 2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(SamMLP(dim, dim, dim // 8, 3) for _ in range(4))
        self.iou_prediction_head = SamMLP(dim, iou_hidden, 4, 3)

    def forward(self, image_embeddings, image_pe, sparse, dense, multimask_output):
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]


SAM_KEYS = {  # a sample of the names in SAM's released vit_b checkpoint (prefixes stripped)
    "prompt": ["pe_layer.positional_encoding_gaussian_matrix", "point_embeddings.3.weight", "not_a_point_embed.weight",
               "mask_downscaling.0.weight", "mask_downscaling.4.bias", "mask_downscaling.6.weight",
               "no_mask_embed.weight"],
    "decoder": ["transformer.layers.0.self_attn.q_proj.weight", "transformer.layers.1.cross_attn_image_to_token.out_proj.bias",
                "transformer.layers.0.mlp.lin2.weight", "transformer.layers.1.norm4.weight",
                "transformer.final_attn_token_to_image.v_proj.weight", "transformer.norm_final_attn.bias",
                "iou_token.weight", "mask_tokens.weight", "output_upscaling.0.weight", "output_upscaling.1.bias",
                "output_upscaling.3.weight", "output_hypernetworks_mlps.3.layers.2.bias",
                "iou_prediction_head.layers.2.weight"],
}


@pytest.mark.parametrize("prompt", ["seg", "points", "box_point", "mask"])
def test_a_sam_state_dict_loads_by_name_and_gives_sams_outputs(prompt):
    dim, heads, grid, image_size, chans = 32, 4, 4, (64, 48), 16  # (height, width): x and y scale apart
    torch.manual_seed(0)
    sam_prompt, sam_decoder = SamPromptEncoder(dim, grid, image_size, chans), SamMaskDecoder(dim, heads, 2, 64, 48)
    for p in [*sam_prompt.parameters(), *sam_decoder.parameters()]:
        p.data.normal_(0, 0.5)  # no default init: every weight must land in the right place
    encoder = PromptEncoder(dim, image_size, grid, mask_in_chans=chans)
    decoder = MaskDecoder(dim, heads, depth=2, mlp_dim=64, upscale=4, iou_head_hidden_dim=48)
    encoder.load_state_dict(sam_prompt.state_dict(), strict=True)  # raises on a missing or unexpected key
    decoder.load_state_dict(sam_decoder.state_dict(), strict=True)
    assert set(SAM_KEYS["prompt"]) <= encoder.state_dict().keys()
    assert set(SAM_KEYS["decoder"]) <= decoder.state_dict().keys()

    image = torch.randn(1, dim, grid, grid)
    seg = torch.randn(2, 1, dim)
    points = torch.tensor([[[3.0, 40.0], [50.0, 9.0]], [[20.0, 20.0], [0.0, 63.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    inputs = {"seg": (None, None, None, None), "points": (points, labels, None, None),
              "box_point": (points[:, :1], labels[:, :1], torch.tensor([[2.0, 5.0, 40.0, 33.0], [0, 0, 63, 63]]), None),
              "mask": (points, labels, None, torch.randn(2, 1, 4 * grid, 4 * grid))}[prompt]
    with torch.no_grad():
        sam_sparse, sam_dense = sam_prompt(*inputs, text_embeds=seg)
        sparse, dense = encoder(points=inputs[0], point_labels=inputs[1], boxes=inputs[2], masks=inputs[3], sparse=seg)
        torch.testing.assert_close(sparse, sam_sparse)
        torch.testing.assert_close(dense, sam_dense.flatten(2).transpose(1, 2))
        torch.testing.assert_close(encoder.image_pe(), sam_prompt.dense_pe().flatten(2).transpose(1, 2))
        tokens = image.flatten(2).transpose(1, 2)
        for multimask in (False, True):
            sam_masks, sam_iou = sam_decoder(image, sam_prompt.dense_pe(), sam_sparse, sam_dense, multimask)
            masks, iou = decoder(tokens, encoder.image_pe(), sparse, dense, image_index=torch.tensor([0, 0]),
                                 multimask_output=multimask)
            if not multimask:  # LISA reads mask token 0 alone
                masks, iou = masks[:, None], iou[:, None]
            torch.testing.assert_close(masks, sam_masks, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(iou, sam_iou, rtol=1e-4, atol=1e-4)
