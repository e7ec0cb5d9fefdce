"""A lightweight SAM-style promptable mask decoder over a ViT's patch tokens.

LISA and Seg-Zero/StAR both end in a promptable segmenter: LISA feeds the
language model's ``<seg>`` hidden state in as a sparse prompt token, Seg-Zero
feeds the box and point the policy wrote. :class:`PromptEncoder` turns boxes
and points into tokens and gives the positional encoding of the image grid;
:class:`MaskDecoder` runs SAM's two-way transformer between the prompt tokens
and the image tokens and predicts one mask (LISA's single-mask output) plus a
predicted IoU (which test-time scaling uses to rank masks).

What follows SAM (Kirillov et al. 2023, ``segment_anything/modeling``): random
Fourier positional encoding of pixel-centre coordinates, type embeddings per
point / box corner, the two-way block (token self-attention, token→image and
image→token cross-attention at half width, positional encodings re-added to
queries and keys at every attention, first block without them), the final
token→image attention, the transposed-convolution upscaling with LayerNorm2d
and GELU, the hypernetwork dot-product mask head and the IoU token. What
follows LISA: one mask token, the learned no-mask dense embedding added to
every image token, logits resized bilinearly to the image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

UPSCALES = (1, 2, 4)


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """SAM's plain ReLU MLP (``layers`` linear layers)."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        modules += [nn.Linear(a, b)] + ([nn.ReLU()] if i < layers - 1 else [])
    return nn.Sequential(*modules)


class _Attention(nn.Module):
    """Multi-head attention whose q/k/v live at ``dim // downsample`` (SAM halves the
    cross-attentions' width: with thousands of image tokens that is where the cost is)."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.q(q)), heads(self.k(k)), heads(self.v(v)))
        return self.out(attended.transpose(1, 2).flatten(2))


class _TwoWayBlock(nn.Module):
    """SAM's TwoWayAttentionBlock: tokens attend to themselves and the image, then the image
    attends back to the tokens, so both sides are refined. The first block skips the positional
    encoding (and the residual) in the self-attention, as SAM does."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, first: bool):
        super().__init__()
        self.first = first
        self.self_attn = _Attention(dim, num_heads)
        self.token_to_image = _Attention(dim, num_heads, downsample=2)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.image_to_token = _Attention(dim, num_heads, downsample=2)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, tokens, image, token_pe, image_pe):
        if self.first:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norms[0](tokens)
        tokens = self.norms[1](tokens + self.token_to_image(tokens + token_pe, image + image_pe, image))
        tokens = self.norms[2](tokens + self.mlp(tokens))
        image = self.norms[3](image + self.image_to_token(image + image_pe, tokens + token_pe, tokens))
        return tokens, image


class PromptEncoder(nn.Module):
    """Sparse prompt tokens from boxes and points, and the positional encoding of the image grid.

    Coordinates are input pixels ``(x, y)``; like SAM they are shifted to the pixel centre,
    normalised by the image size and encoded with random Fourier features (a fixed Gaussian
    matrix, saved with the weights), then a learned type embedding says point / box corner 1 /
    box corner 2. The image grid gets the same encoding at its cell centres, so prompts and image
    tokens share one coordinate system.

    Args:
        embed_dim: token width (even).
        image_size: input image side in pixels, or ``(height, width)``.
        grid_size: side of the square grid of image tokens.
    """

    def __init__(self, embed_dim: int, image_size: int | tuple[int, int], grid_size: int):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"PromptEncoder needs an even embed_dim (sin and cos halves), got {embed_dim}")
        self.embed_dim, self.grid_size = embed_dim, grid_size
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.register_buffer("image_wh", torch.tensor([float(width), float(height)]))
        self.register_buffer("fourier", torch.randn(2, embed_dim // 2))
        self.type_embed = nn.Embedding(3, embed_dim)  # point, box corner 1, box corner 2

    def encode(self, xy: torch.Tensor) -> torch.Tensor:
        """Normalised coordinates in [0, 1], (..., 2) → (..., embed_dim) Fourier features."""
        angles = 2 * math.pi * ((2 * xy - 1) @ self.fourier.to(xy.dtype))
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def image_pe(self) -> torch.Tensor:
        """(1, grid_size², embed_dim): the encoding of each grid cell's centre, row-major."""
        centres = (torch.arange(self.grid_size, device=self.fourier.device) + 0.5) / self.grid_size
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        return self.encode(torch.stack([xs, ys], dim=-1).flatten(0, 1))[None]

    def _pixels(self, coords: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        xy = (coords.to(self.fourier.dtype) + 0.5) / self.image_wh  # SAM: shift to the pixel centre
        return self.encode(xy) + self.type_embed(kind)

    def forward(self, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                sparse: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt tokens (B, T, embed_dim): ``sparse`` (B, T0, C) or (B, C) — e.g. a projected
        ``<seg>`` state — then one token per point (B, 2) or (B, K, 2), then two per box (B, 4) or
        (B, K, 4) as ``x0, y0, x1, y1``. Any subset may be given, but at least one."""
        given = [t for t in (sparse, points, boxes) if t is not None]
        if not given:
            raise ValueError("PromptEncoder needs at least one of boxes, points or sparse embeddings")
        batch = given[0].shape[0]
        if any(t.shape[0] != batch for t in given):
            raise ValueError("boxes, points and sparse must share the batch size, got "
                             f"{[tuple(t.shape) for t in given]}")
        tokens = []
        if sparse is not None:
            tokens.append(sparse[:, None] if sparse.dim() == 2 else sparse)
        if points is not None:
            if points.shape[-1] != 2:
                raise ValueError(f"points must be (B, 2) or (B, K, 2) pixel (x, y), got {tuple(points.shape)}")
            points = points.reshape(batch, -1, 2)
            tokens.append(self._pixels(points, torch.zeros_like(points[..., 0], dtype=torch.long)))
        if boxes is not None:
            if boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B, 4) or (B, K, 4) pixel x0, y0, x1, y1, got {tuple(boxes.shape)}")
            corners = boxes.reshape(batch, -1, 2, 2)
            kind = torch.tensor([1, 2], device=corners.device).expand(corners.shape[:-1])
            tokens.append(self._pixels(corners, kind).flatten(1, 2))
        dtype = self.type_embed.weight.dtype
        return torch.cat([t.to(dtype) for t in tokens], dim=1)


class MaskDecoder(nn.Module):
    """SAM's mask decoder with LISA's single mask output, over a square grid of patch tokens.

    Args:
        embed_dim: width of image and prompt tokens (divisible by ``2 * num_heads``, and by 8 when
            ``upscale`` is 4).
        num_heads: attention heads.
        depth: two-way blocks.
        mlp_dim: token MLP width (default ``8 * embed_dim``, SAM's 256 → 2048 ratio).
        upscale: 1, 2 or 4 — transposed-convolution ×2 steps before the mask head; logits come
            out at ``grid · upscale`` and are then resized to ``output_size``.

    The learned ``no_mask`` embedding lives here (not in :class:`PromptEncoder`) because it is
    what ``dense=None`` means: keeping a single owner avoids a tied parameter across modules.
    """

    def __init__(self, embed_dim: int, num_heads: int = 4, depth: int = 2, mlp_dim: int | None = None,
                 upscale: int = 4):
        super().__init__()
        if upscale not in UPSCALES:
            raise ValueError(f"MaskDecoder upscale must be one of {UPSCALES}, got {upscale}")
        if embed_dim % (2 * num_heads):
            raise ValueError(f"MaskDecoder embed_dim must be divisible by 2 * num_heads (cross-attention runs "
                             f"at half width), got embed_dim={embed_dim}, num_heads={num_heads}")
        if upscale == 4 and embed_dim % 8:
            raise ValueError(f"MaskDecoder with upscale=4 needs embed_dim divisible by 8, got {embed_dim}")
        self.embed_dim = embed_dim
        self.output_tokens = nn.Embedding(2, embed_dim)  # IoU token, mask token
        self.no_mask = nn.Parameter(torch.zeros(embed_dim))
        self.blocks = nn.ModuleList(_TwoWayBlock(embed_dim, num_heads, mlp_dim or 8 * embed_dim, first=i == 0)
                                    for i in range(depth))
        self.final_attn = _Attention(embed_dim, num_heads, downsample=2)
        self.final_norm = nn.LayerNorm(embed_dim)
        # SAM: ConvT(C→C/4), LayerNorm2d, GELU, ConvT(C/4→C/8), GELU; fewer steps for smaller upscale.
        steps = int(math.log2(upscale))
        widths = [embed_dim, embed_dim // 4, embed_dim // 8][: steps + 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.ConvTranspose2d(a, b, kernel_size=2, stride=2)] + ([LayerNorm2d(b)] if i == 0 else [])
            layers.append(nn.GELU())
        self.upscaling = nn.Sequential(*layers)
        self.hypernet = _mlp(embed_dim, embed_dim, widths[-1], 3)
        self.iou_head = _mlp(embed_dim, embed_dim, 1, 3)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor | None = None, output_size: int | tuple[int, int] | None = None,
                image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for prompts.

        Args:
            image_embeddings: (B_img, N, C) patch tokens already projected to ``embed_dim``, N = g².
            image_pe: (1 or B_img, N, C), usually :meth:`PromptEncoder.image_pe`.
            sparse: (B, T, C) prompt tokens, T ≥ 1 (``<seg>`` embeddings and/or box/point tokens).
            dense: (B, N, C) or broadcastable dense prompt; ``None`` adds the learned ``no_mask``.
            output_size: side or ``(H, W)`` to resize logits to; ``None`` keeps ``g · upscale``.
            image_index: (B,) which image each prompt reads, for several prompts per image;
                ``None`` means prompt ``i`` reads image ``i`` (then B must equal B_img).

        Returns:
            ``mask_logits`` (B, H, W) — one mask per prompt, no channel axis; ``> 0`` is the
            mask — and ``iou_pred`` (B,), the predicted IoU (a raw regression, as in SAM).
        """
        dtype = self.output_tokens.weight.dtype
        if sparse.dim() != 3 or sparse.shape[1] < 1 or sparse.shape[2] != self.embed_dim:
            raise ValueError(f"sparse prompts must be (B, T >= 1, {self.embed_dim}), got {tuple(sparse.shape)}")
        batch, num_images, num_tokens = sparse.shape[0], image_embeddings.shape[0], image_embeddings.shape[1]
        grid = math.isqrt(num_tokens)
        if grid * grid != num_tokens or image_embeddings.shape[2] != self.embed_dim:
            raise ValueError(f"image_embeddings must be (B_img, g*g, {self.embed_dim}) for a square grid, "
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
        image = image_embeddings.to(dtype) + (self.no_mask if dense is None else dense.to(dtype))
        image_pe = image_pe.to(dtype).expand_as(image)
        # SAM: the output tokens and prompts are both the queries and their own positional encoding.
        prompt = torch.cat([self.output_tokens.weight.expand(batch, -1, -1), sparse.to(dtype)], dim=1)
        tokens = prompt
        for block in self.blocks:
            tokens, image = block(tokens, image, prompt, image_pe)
        tokens = self.final_norm(tokens + self.final_attn(tokens + prompt, image + image_pe, image))

        features = self.upscaling(image.transpose(1, 2).reshape(batch, self.embed_dim, grid, grid))
        masks = torch.einsum("bc,bchw->bhw", self.hypernet(tokens[:, 1]), features)
        if output_size is not None:
            size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
            masks = F.interpolate(masks[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return masks, self.iou_head(tokens[:, 0]).squeeze(-1)
