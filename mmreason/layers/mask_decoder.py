"""SAM's promptable mask decoder and prompt encoder, in SAM's layout, over a ViT's patch tokens.

LISA and Seg-Zero/StAR both end in a promptable segmenter: LISA feeds the
language model's ``<seg>`` hidden state in as a sparse prompt token (appended
after any point and box tokens) and reads SAM's first mask token; Seg-Zero feeds
the box and point the policy wrote.

Module and parameter names, shapes and computation are SAM's (Kirillov et al.
2023, ``segment_anything/modeling``: ``prompt_encoder.py``, ``mask_decoder.py``,
``transformer.py``), so the released SAM decoder and prompt-encoder weights, and
LISA's or StAR's checkpoints built on them, load by name: random Fourier
positional encoding of pixel-centre coordinates; point embeddings for negative /
positive points and the two box corners, a "not a point" embedding for the
padding point SAM adds to point-only prompts, mask prompts downscaled ×4 by
convolutions, a learned no-mask dense embedding; the two-way transformer; an IoU
token and ``num_multimask_outputs + 1`` mask tokens with one hypernetwork MLP
each; transposed-convolution upscaling with LayerNorm2d and GELU. What we add:
image tokens come as (B, N, C) rows of a square grid, ``image_index`` lets
several prompts read one image, ``upscale`` 1 or 2 (not SAM) shortens the
upscaling for tiny grids, and logits can be resized to the input image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

UPSCALES = (1, 2, 4)
NEGATIVE, POSITIVE, PADDING = 0, 1, -1  # SAM's point labels


class MLP(nn.Module):
    """SAM's plain MLP: ``num_layers`` linear layers (``layers.i``) with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([input_dim, *hidden], [*hidden, output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class Attention(nn.Module):
    """Multi-head attention whose q/k/v live at ``dim // downsample_rate`` (SAM halves the
    cross-attentions' width: with thousands of image tokens that is where the cost is)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"attention width {internal} (embedding_dim {embedding_dim} / downsample_rate "
                             f"{downsample_rate}) must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q_proj, self.k_proj = nn.Linear(embedding_dim, internal), nn.Linear(embedding_dim, internal)
        self.v_proj, self.out_proj = nn.Linear(embedding_dim, internal), nn.Linear(internal, embedding_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v)))
        return self.out_proj(attended.transpose(1, 2).flatten(2))


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(embedding_dim, mlp_dim), nn.Linear(mlp_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Tokens attend to themselves and to the image, then the image attends back to the tokens, so
    both sides are refined; the first block skips the positional encoding (and the residual) in
    the self-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool):
        super().__init__()
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=2)

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0)
                                    for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """image, image_pe (B, N, C); tokens (B, T, C), which are also their own positional encoding."""
        queries, keys = tokens, image
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, image_pe)
        attended = self.final_attn_token_to_image(queries + tokens, keys + image_pe, keys)
        return self.norm_final_attn(queries + attended), keys


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates: a fixed Gaussian matrix, saved with
    the weights, so prompts and image cells share one coordinate system."""

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, xy: torch.Tensor) -> torch.Tensor:
        """Coordinates in [0, 1], (..., 2) → (..., 2 · num_pos_feats): sin then cos."""
        angles = 2 * math.pi * ((2 * xy - 1) @ self.positional_encoding_gaussian_matrix.to(xy.dtype))
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class PromptEncoder(nn.Module):
    """Sparse prompt tokens from points, boxes and extra embeddings, a dense embedding from a mask
    prompt (or the learned no-mask embedding), and the positional encoding of the image grid.

    Args:
        embed_dim: token width (even).
        image_size: input image side in pixels, or ``(height, width)``; prompts are in its pixels.
        grid_size: side of the square grid of image tokens.
        mask_in_chans: hidden channels of the mask-prompt downscaling (SAM: 16).
    """

    def __init__(self, embed_dim: int, image_size: int | tuple[int, int], grid_size: int, mask_in_chans: int = 16):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"PromptEncoder needs an even embed_dim (sin and cos halves), got {embed_dim}")
        self.embed_dim, self.grid_size = embed_dim, grid_size
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.input_image_size = (height, width)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))  # neg, pos, 2 corners
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * grid_size, 4 * grid_size)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans),
            nn.GELU(), nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def image_pe(self) -> torch.Tensor:
        """(1, grid_size², embed_dim): the encoding of each grid cell's centre, row-major."""
        device = self.pe_layer.positional_encoding_gaussian_matrix.device
        centres = (torch.arange(self.grid_size, device=device) + 0.5) / self.grid_size
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        return self.pe_layer.encode(torch.stack([xs, ys], dim=-1).flatten(0, 1))[None]

    def _encode_pixels(self, coords: torch.Tensor) -> torch.Tensor:
        height, width = self.input_image_size
        xy = coords.to(self.no_mask_embed.weight.dtype) + 0.5  # SAM: shift to the pixel centre
        return self.pe_layer.encode(xy / torch.tensor([width, height], dtype=xy.dtype, device=xy.device))

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        if pad:  # SAM's padding point keeps point-only prompts in the token layout it was trained on
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING)], dim=1)
        embedding = self._encode_pixels(points)
        embedding = torch.where((labels == PADDING)[..., None], self.not_a_point_embed.weight, embedding)
        for label in (NEGATIVE, POSITIVE):
            embedding = embedding + (labels == label)[..., None] * self.point_embeddings[label].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = self._encode_pixels(boxes.reshape(boxes.shape[0], -1, 2, 2))
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])  # (2, C)
        return (corners + corner_types).flatten(1, 2)

    def forward(self, points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                sparse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sparse tokens (B, T, C), dense (B, grid², C))``.

        points: (B, 2) or (B, K, 2) pixel (x, y), labelled by ``point_labels`` (B, K) — 1 positive
            (the default), 0 negative, -1 padding; without boxes SAM appends a padding point.
        boxes: (B, 4) or (B, K, 4) pixel x0, y0, x1, y1, two corner tokens each.
        masks: (B, 1, 4·grid, 4·grid) mask-prompt logits; without one every image token gets the
            learned no-mask embedding.
        sparse: (B, C) or (B, T0, C) extra tokens appended last, e.g. LISA's projected ``<seg>`` state.
        At least one of points, boxes and sparse.
        """
        given = [t for t in (points, boxes, sparse) if t is not None]
        if not given:
            raise ValueError("PromptEncoder needs at least one of points, boxes or sparse embeddings")
        batch = given[0].shape[0]
        if any(t.shape[0] != batch for t in given):
            raise ValueError(f"points, boxes and sparse must share the batch size, got {[tuple(t.shape) for t in given]}")
        dtype = self.no_mask_embed.weight.dtype
        tokens = []
        if points is not None:
            if points.shape[-1] != 2:
                raise ValueError(f"points must be (B, 2) or (B, K, 2) pixel (x, y), got {tuple(points.shape)}")
            points = points.reshape(batch, -1, 2)
            labels = (torch.full(points.shape[:2], POSITIVE, device=points.device) if point_labels is None
                      else point_labels.reshape(points.shape[:2]).to(points.device))
            tokens.append(self._embed_points(points, labels, pad=boxes is None))
        if boxes is not None:
            if boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B, 4) or (B, K, 4) pixel x0, y0, x1, y1, got {tuple(boxes.shape)}")
            tokens.append(self._embed_boxes(boxes))
        if sparse is not None:
            tokens.append(sparse[:, None] if sparse.dim() == 2 else sparse)
        cells = self.grid_size * self.grid_size
        if masks is None:
            dense = self.no_mask_embed.weight.expand(batch, cells, -1)
        else:
            if masks.shape[1:] != (1, *self.mask_input_size):
                raise ValueError(f"mask prompts must be (B, 1, {self.mask_input_size[0]}, {self.mask_input_size[1]}), "
                                 f"got {tuple(masks.shape)}")
            dense = self.mask_downscaling(masks.to(dtype)).flatten(2).transpose(1, 2)
        return torch.cat([t.to(dtype) for t in tokens], dim=1), dense


class MaskDecoder(nn.Module):
    """SAM's mask decoder over a square grid of patch tokens.

    Args:
        transformer_dim: width of image and prompt tokens (divisible by ``2 * num_heads``, and by 8
            when ``upscale`` is 4).
        num_heads, depth: of the two-way transformer (SAM: 8, 2).
        mlp_dim: its token MLP width (default ``8 * transformer_dim``, SAM's 256 → 2048).
        upscale: 4 (SAM), 2 or 1 — transposed-convolution ×2 steps before the mask head; logits come
            out at ``grid · upscale`` and are then resized to ``output_size``.
        num_multimask_outputs: SAM's 3 ambiguity-aware masks, read after mask token 0 (the single
            mask LISA reads) when ``multimask_output`` is asked for.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP (SAM: 3, 256).
    """

    def __init__(self, transformer_dim: int, num_heads: int = 8, depth: int = 2, mlp_dim: int | None = None,
                 upscale: int = 4, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256):
        super().__init__()
        if upscale not in UPSCALES:
            raise ValueError(f"MaskDecoder upscale must be one of {UPSCALES}, got {upscale}")
        if transformer_dim % (2 * num_heads):
            raise ValueError(f"MaskDecoder transformer_dim must be divisible by 2 * num_heads (cross-attention "
                             f"runs at half width), got {transformer_dim}, num_heads={num_heads}")
        if upscale == 4 and transformer_dim % 8:
            raise ValueError(f"MaskDecoder with upscale=4 needs transformer_dim divisible by 8, got {transformer_dim}")
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer(depth, transformer_dim, num_heads, mlp_dim or 8 * transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        # SAM: ConvT(C→C/4), LayerNorm2d, GELU, ConvT(C/4→C/8), GELU; fewer steps for a smaller upscale.
        steps = int(math.log2(upscale))
        widths = [transformer_dim, transformer_dim // 4, transformer_dim // 8][: steps + 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.ConvTranspose2d(a, b, kernel_size=2, stride=2)] + ([LayerNorm2d(b)] if i == 0 else [])
            layers.append(nn.GELU())
        self.output_upscaling = nn.Sequential(*layers)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(transformer_dim, transformer_dim, widths[-1], 3)
                                                       for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor, output_size: int | tuple[int, int] | None = None,
                image_index: torch.Tensor | None = None,
                multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for prompts.

        Args:
            image_embeddings: (B_img, N, C) patch tokens already projected to ``transformer_dim``, N = g².
            image_pe: (1 or B_img, N, C), usually :meth:`PromptEncoder.image_pe`.
            sparse, dense: the prompt encoder's outputs, (B, T ≥ 1, C) and (B, N, C).
            output_size: side or ``(H, W)`` to resize logits to; ``None`` keeps ``g · upscale``.
            image_index: (B,) which image each prompt reads, for several prompts per image;
                ``None`` means prompt ``i`` reads image ``i`` (then B must equal B_img).
            multimask_output: SAM's ambiguity-aware masks 1..3 instead of mask 0.

        Returns:
            ``mask_logits`` (B, H, W) — ``> 0`` is the mask — and ``iou_pred`` (B,), the predicted
            IoU (a raw regression, as in SAM); with ``multimask_output`` (B, M, H, W) and (B, M).
        """
        dtype = self.iou_token.weight.dtype
        if sparse.dim() != 3 or sparse.shape[1] < 1 or sparse.shape[2] != self.transformer_dim:
            raise ValueError(f"sparse prompts must be (B, T >= 1, {self.transformer_dim}), got {tuple(sparse.shape)}")
        batch, num_images, num_tokens = sparse.shape[0], image_embeddings.shape[0], image_embeddings.shape[1]
        grid = math.isqrt(num_tokens)
        if grid * grid != num_tokens or image_embeddings.shape[2] != self.transformer_dim:
            raise ValueError(f"image_embeddings must be (B_img, g*g, {self.transformer_dim}) for a square grid, "
                             f"got {tuple(image_embeddings.shape)}")
        if image_index is None:
            if batch != num_images:
                raise ValueError(f"{batch} prompts for {num_images} images: pass image_index (B,) to say "
                                 "which image each prompt reads")
        else:
            if image_index.shape != (batch,):
                raise ValueError(f"image_index must be ({batch},), one per prompt, got {tuple(image_index.shape)}")
            if batch and (int(image_index.min()) < 0 or int(image_index.max()) >= num_images):
                raise ValueError(f"image_index values must lie in [0, {num_images}), got {image_index.tolist()}")
            image_embeddings = image_embeddings[image_index]
            if image_pe.shape[0] > 1:
                image_pe = image_pe[image_index]
        image = image_embeddings.to(dtype) + dense.to(dtype)
        image_pe = image_pe.to(dtype).expand_as(image)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).expand(batch, -1, -1)
        tokens, image = self.transformer(image, image_pe, torch.cat([output_tokens, sparse.to(dtype)], dim=1))
        mask_tokens = tokens[:, 1 : 1 + self.num_mask_tokens]
        features = self.output_upscaling(image.transpose(1, 2).reshape(batch, self.transformer_dim, grid, grid))
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = torch.einsum("bmc,bchw->bmhw", hyper, features)
        iou = self.iou_prediction_head(tokens[:, 0])
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou = masks[:, chosen], iou[:, chosen]
        if output_size is not None:
            size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        return (masks, iou) if multimask_output else (masks[:, 0], iou[:, 0])


def sam_postprocess_masks(logits: torch.Tensor, input_size: int, valid: tuple[int, int],
                          original: tuple[int, int]) -> torch.Tensor:
    """SAM's ``postprocess_masks`` for (M, h, w) low-resolution logits: up to the encoder's square input
    (``input_size``), the padding cropped off (``valid``: the resized image's (height, width)), then
    resized to the ``original`` (height, width); bilinear throughout, as SAM and LISA."""
    logits = F.interpolate(logits[:, None], (input_size, input_size), mode="bilinear", align_corners=False)
    logits = logits[..., : valid[0], : valid[1]]
    return F.interpolate(logits, tuple(original), mode="bilinear", align_corners=False)[:, 0]
