"""LISA's checkpoints converted into a star export: a tiny, randomly initialised LISA in its released layout
(LLaVA with a linear projector, CLIP in its own folder, SAM's ViT, prompt encoder and mask decoder,
``text_hidden_fcs``) converts into an export whose views, logits and masks equal LISA's computation,
written out below from LISA's and segment-anything's code."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_mask_decoder import SamLayerNorm2d, SamMaskDecoder, SamPromptEncoder
from torch import nn
from torchvision.transforms.functional import resize, to_pil_image
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import mmreason
from mmreason.checkpoints import convert
from mmreason.checkpoints.source import CheckpointError
from mmreason.data.schema import Record
from mmreason.models.policy import Trajectory
from mmreason.text.tokenizer import word_tokenizer

CLIP_SIZE, SAM_SIZE, PATCH, WIDTH, DIM = 32, 64, 8, 32, 32
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")
QUESTION = "segment the red circle ."


def _rel_pos(size: int, rel: torch.Tensor) -> torch.Tensor:  # segment-anything's get_rel_pos, equal sizes
    coords = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return rel[coords.long()]


class SamAttention(nn.Module):
    def __init__(self, dim, heads, size):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * size - 1, dim // heads))
        self.rel_pos_w = nn.Parameter(torch.randn(2 * size - 1, dim // heads))

    def forward(self, x):
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, -1).unbind(0)
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        r_q = q.reshape(b * self.heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, _rel_pos(h, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, _rel_pos(w, self.rel_pos_w))
        attn = (attn.view(-1, h, w, h, w) + rel_h[..., None] + rel_w[:, :, :, None, :]).view(-1, h * w, h * w)
        x = (attn.softmax(-1) @ v).view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(x)


class SamBlock(nn.Module):
    def __init__(self, dim, heads, grid, window):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = SamAttention(dim, heads, window or grid)
        self.mlp = nn.Module()
        self.mlp.lin1, self.mlp.lin2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.window = window

    def forward(self, x):
        shortcut, x = x, self.norm1(x)
        b, h, w, c = x.shape
        if self.window:  # window partition (the sizes divide: no padding)
            s = self.window
            x = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s, s, c)
        x = self.attn(x)
        if self.window:
            x = x.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        x = shortcut + x
        return x + self.mlp.lin2(F.gelu(self.mlp.lin1(self.norm2(x))))


class SamImageEncoder(nn.Module):
    """segment-anything's ImageEncoderViT: block 0 windowed (4 × 4), block 1 global."""

    def __init__(self):
        super().__init__()
        grid = SAM_SIZE // PATCH
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.pos_embed = nn.Parameter(torch.randn(1, grid, grid, WIDTH))
        self.blocks = nn.ModuleList([SamBlock(WIDTH, 2, grid, 4), SamBlock(WIDTH, 2, grid, 0)])
        self.neck = nn.Sequential(nn.Conv2d(WIDTH, DIM, 1, bias=False), SamLayerNorm2d(DIM),
                                  nn.Conv2d(DIM, DIM, 3, padding=1, bias=False), SamLayerNorm2d(DIM))

    def forward(self, x):
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class Lisa(nn.Module):
    """LISAForCausalLM's parts, named as its state dict names them (the CLIP tower saved apart)."""

    def __init__(self, vocab: int):
        super().__init__()
        text = LlamaConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256)
        self.llama = LlamaForCausalLM(text)
        self.clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                                                     num_attention_heads=2, image_size=CLIP_SIZE, patch_size=PATCH))
        self.mm_projector = nn.Linear(24, WIDTH)
        self.visual_model = nn.Module()
        self.visual_model.image_encoder = SamImageEncoder()
        self.visual_model.prompt_encoder = SamPromptEncoder(DIM, SAM_SIZE // PATCH, (SAM_SIZE, SAM_SIZE), 16)
        self.visual_model.mask_decoder = SamMaskDecoder(DIM, 8, 2, 8 * DIM, DIM)
        self.text_hidden_fcs = nn.ModuleList([nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, DIM),
                                                            nn.Dropout(0.0))])
        for p in [*self.visual_model.parameters(), *self.text_hidden_fcs.parameters(), *self.mm_projector.parameters()]:
            p.data.normal_(0, 0.3)  # no default init: every weight must land in the right place

    def released_state(self) -> dict[str, torch.Tensor]:
        state = dict(self.llama.state_dict())  # model.layers.*, lm_head.*: LLaVA's names already
        for part in ("mm_projector", "visual_model", "text_hidden_fcs"):
            state.update({f"model.{part}.{k}": v for k, v in getattr(self, part).state_dict().items()})
        return state

    def forward(self, clip_pixels, sam_pixels, ids, image_token, seg_token, resize, original):
        """LISA's model_forward at inference: logits, and the masks of the ``[SEG]`` tokens in ``ids``."""
        features = self.mm_projector(self.clip(clip_pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
        embeds = self.llama.get_input_embeddings()(ids)
        embeds[ids == image_token] = features.reshape(-1, WIDTH)
        out = self.llama(inputs_embeds=embeds, output_hidden_states=True)
        seg = F.pad(ids[:, 1:] == seg_token, (0, 1))  # the state before each [SEG]
        prompts = self.text_hidden_fcs[0](out.hidden_states[-1])[seg]
        sam = self.visual_model
        sparse, dense = sam.prompt_encoder(None, None, None, None, text_embeds=prompts[:, None])
        low, _ = sam.mask_decoder(sam.image_encoder(sam_pixels), sam.prompt_encoder.dense_pe(), sparse, dense, False)
        masks = F.interpolate(low, (SAM_SIZE, SAM_SIZE), mode="bilinear", align_corners=False)
        masks = masks[..., : resize[0], : resize[1]]
        return out.logits, F.interpolate(masks, original, mode="bilinear", align_corners=False)[:, 0]


def _sam_view(image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
    """LISA's chat.py: ResizeLongestSide (torchvision's resize of a PIL image), normalise, pad with zeros."""
    array = np.asarray(image)
    scale = SAM_SIZE / max(array.shape[:2])
    size = (int(array.shape[0] * scale + 0.5), int(array.shape[1] * scale + 0.5))
    resized = torch.from_numpy(np.array(resize(to_pil_image(array), size))).permute(2, 0, 1).float()
    mean, std = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    x = (resized - mean) / std
    return F.pad(x, (0, SAM_SIZE - size[1], 0, SAM_SIZE - size[0]))[None], size


@pytest.fixture(scope="module")
def lisa(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = word_tokenizer(["user", "assistant", ":", "sure", *re.findall(r"\w+|[^\w\s]", SYSTEM + QUESTION)])
    tokenizer.add_tokens(["[SEG]"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<im_start>", "<im_end>"]})
    model = Lisa(len(tokenizer) + 3).eval()
    folder, clip = tmp_path_factory.mktemp("lisa"), tmp_path_factory.mktemp("clip")
    model.clip.save_pretrained(clip)
    tokenizer.save_pretrained(folder)
    config = {**model.llama.config.to_dict(), "architectures": ["LISAForCausalLM"], "vision_tower": "openai/clip-vit-large-patch14",
              "mm_vision_select_layer": -2, "mm_use_im_start_end": True, "out_dim": DIM, "train_mask_decoder": True,
              "image_aspect_ratio": "square", "mm_hidden_size": 24}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(model.released_state(), folder / "pytorch_model.bin")
    return folder, clip, model


def test_lisa_converts_into_a_star_export_with_lisas_views_logits_and_masks(lisa, tmp_path):
    folder, clip, reference = lisa
    export = convert("lisa", str(folder), tmp_path / "export", vision=str(clip))
    config = json.loads((export / "config.json").read_text())
    assert config["family"] == "star" and config["source"]["format"] == "lisa"
    assert config["config"]["segmentation"]["image_encoder"]["vision"]["hf"]["config"]["global_attn_indexes"] == [1]
    model = mmreason.load(export)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))

    clip_pixels = CLIPImageProcessorPil(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE})(
        image, return_tensors="pt")["pixel_values"]
    sam_pixels, valid = _sam_view(image)
    torch.testing.assert_close(model.preprocess(image)[None], clip_pixels, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.segmentation_preprocess(image)[None], sam_pixels, atol=1e-5, rtol=0)

    tok = model.tokenizer
    prompt = model.processor.prompt_ids([Record(question=QUESTION, answer="")])[0]
    completion = tok.convert_tokens_to_ids(["sure", ",", "[SEG]", "."])
    text = tok.decode(prompt)
    assert "<unk>" not in text and "user : <im_start> <image>" in text and text.endswith("assistant :")
    ids = torch.tensor([prompt + completion])
    image_token, seg_token = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("[SEG]")
    with torch.no_grad():
        logits, masks = reference(clip_pixels, sam_pixels, ids, image_token, seg_token, valid, (40, 48))
        ours = model(clip_pixels, ids, torch.ones_like(ids)).logits
        view = {"images": sam_pixels, "valid": valid, "original": (40, 48)}
        trajectory = Trajectory(0, prompt, completion, [True] * len(completion), done=True)
        our_masks, _ = model.trajectory_masks(clip_pixels, [trajectory], view)
        our_logits, _ = model.decode_masks(model.decoder_features(clip_pixels, None, view),
                                           torch.tensor([0]), states=_seg_state(model, clip_pixels, ids), view=view)
    torch.testing.assert_close(ours[..., : logits.shape[-1]], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_logits, masks, atol=1e-5, rtol=1e-5)
    assert torch.equal(our_masks[0][0], masks[0] > 0) and our_masks[0][0].shape == (40, 48)

    answer = model.predict(image, QUESTION, max_new_tokens=4)  # LISA's path end to end: both views
    assert answer["mask"].shape == (40, 48) and isinstance(answer["text"], str)


def _seg_state(model, pixels, ids):
    """Our model's state before ``[SEG]`` in ``ids`` (one forward over the spliced embeddings)."""
    hidden = model.lm(inputs_embeds=model.embed(pixels, ids), output_hidden_states=True).hidden_states[-1]
    states, _ = model._seg_states(hidden, ids)
    return states


def test_a_lisa_folder_without_sams_encoder_names_what_is_missing(lisa, tmp_path):
    folder, clip, reference = lisa
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((folder / name).read_bytes())
    state = {k: v for k, v in reference.released_state().items() if "image_encoder.pos_embed" not in k}
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="SAM's image encoder is incomplete.*pos_embed"):
        convert("lisa", str(broken), tmp_path / "export", vision=str(clip))


def test_a_converted_lisa_evaluates_and_fine_tunes_in_batches(lisa, tmp_path):
    """Batches carry one image tensor (CLIP's view); SAM reads it resized, and masks stay in that view."""
    from mmreason.build import create_model
    from mmreason.data.preprocess import Preprocess
    from mmreason.data.shards import eval_stream, resolve_shards
    from mmreason.data.synth import SynthConfig
    from mmreason.data.synth_shards import synthesize
    from mmreason.inference import evaluate

    folder, clip, _ = lisa
    export = convert("lisa", str(folder), tmp_path / "export", vision=str(clip))
    synthesize(tmp_path / "data", {"test": 4}, SynthConfig(tasks=("seg",)), progress=False)
    urls = resolve_shards(tmp_path / "data", "test")
    report = evaluate(mmreason.load(export), urls, batch_size=4, max_new_tokens=3)["report"]
    assert report["segmentation"]["n"] == 4 and 0.0 <= report["segmentation"]["giou"] <= 1.0
    model = create_model(init={"from": str(export), "frozen": ["vision"]})
    batch = next(iter(eval_stream(urls, Preprocess.from_dict(model.preprocess.to_dict()), 4)[0]))
    assert batch["masks"].shape[1:] == (CLIP_SIZE, CLIP_SIZE)
    batch["images"] = model.preprocess.normalize(batch["pixels"])
    out = model.loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["mask_bce"] > 0
    assert model.mask_decoder.mask_tokens.weight.grad.abs().sum() > 0
    assert model.segmentation_encoder.model.vision_encoder.pos_embed.grad.abs().sum() > 0
