"""Released Meteor (Lee et al., NeurIPS 2024; BK-Lee/Meteor-MLM + BK-Lee/Meteor-Mamba) → a meteor export.

Upstream (github BK-Lee/Meteor, ``meteor/arch``) runs two models. Meteor-Mamba
(``modeling_mmamba.py``: transformers' Mamba, its token table widened to the backbone's
vocabulary, ``vision_proj`` and ``tor_proj`` two-layer GELU MLPs) reads the image and question
with ten `<tor>` and hands ``tor_proj`` of its states there to Meteor-MLM
(``modeling_meteor.py``): InternLM2-7B with partial LoRA, CLIP ViT-L/14 read at its last
layer without CLS at 490 px (position table interpolated to 35 × 35 in ``build_module.py``),
and ``vision_proj``. That is our meteor family; the weights map as follows.

* InternLM2 is Llama with packed weights: ``wqkv`` holds, per key-value head, its query
  heads, then its key, then its value (``(kv_heads, q_per_kv + 2, head_dim)`` along the
  output), split here into ``q_proj``/``k_proj``/``v_proj``; ``wo``, ``w1``/``w3``/``w2`` are
  ``o_proj``, ``gate_proj``/``up_proj``/``down_proj``; RMSNorm, rotary embedding (``rope_theta``,
  ``dynamic`` scaling) and ``bias`` (``attention_bias``) carry over.
* Every one of those projections is upstream's ``LoRA`` module (``ffn`` the base weight,
  ``lora_A``/``lora_B`` rank 256, scale alpha / rank, added only where ``im_mask`` marks image
  tokens): ``partial_lora``. The update of ``wqkv`` is split the same way; its ``lora_A``
  is shared upstream and copied into each of q, k, v here (equal outputs; fine-tuning may then
  let the copies differ).
* The CLIP tower is in Meteor-MLM's weights (``vit.vision_tower.vision_model.*``, 35 × 35 + 1
  positions); its config is read off them (CLIP's 64-wide heads, QuickGELU, eps 1e-5), with no
  download of openai/clip-vit-large-patch14-336.
* The output head has two rows fewer than the token table (no logits for ``<image>``/``<tor>``);
  ours has rows for every token of our tokenizer, the extra ones at the table's mean, and
  generation never emits ``<image>`` or ``<tor>``.

Inputs are upstream's (``utils/utils.py``, ``demo.py``): the backbone reads ``<s>`` + ten
``<tor>`` + the InternLM2 chat turns of ``make_instruction_for_eval_meteor`` (the system line, then
``<image>\\n{question}`` as the user turn, then the assistant cue), the embedder
``make_instruction_for_mmamba``'s turns (``traversal.prompt``), images squashed to 490 px and
normalised with CLIP's mean and std. Answers end at ``[UNUSED_TOKEN_145]`` (InternLM2's end of
turn, where upstream's demo cuts the text), set as the tokenizer's EOS.

What differs from upstream: images are resized by PIL's bicubic (antialiased) rather than
``torch.nn.functional.interpolate`` on the uint8 tensor, so pixels differ slightly unless the
image is already 490 × 490; choices are written in the zoo's ``choices : ( A ) …`` form,
not upstream's per-benchmark wording; dynamic NTK scaling (only past
``max_position_embeddings``) follows transformers, which recomputes the frequencies for each
length where upstream keeps the largest length's; a batch of embedder prompts is right-padded
and masked, where upstream left-pads the Mamba's batch unmasked (one prompt at a time agrees);
during traversal pre-training the zoo's ``insert_tor`` puts spaces around each `<tor>`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from transformers import MambaConfig

from mmreason.checkpoints.source import (
    CLIP_MEAN,
    CLIP_STD,
    EMBEDDINGS,
    FILE_FIELDS,
    CheckpointError,
    architecture,
    fit_vocabulary,
    load_converted,
    read_json,
    read_state_dict,
    rename_by_prefix,
    resolve_source,
)
from mmreason.models.meteor import Meteor
from mmreason.text.tokenizer import build_tokenizer

FORMAT = "meteor"
CONVERTER_VERSION = 1
OPTIONS = ("mamba",)  # Meteor-Mamba's folder or hub id (default: BK-Lee/Meteor-Mamba)
DEFAULT_MAMBA = "BK-Lee/Meteor-Mamba"
NUM_TOR = 10  # upstream's "<tor>"*10 in both prompts (utils/utils.py)
END_OF_TURN = "[UNUSED_TOKEN_145]"
SYSTEM = "You should give helpful answer to user based on the rationale."
BACKBONE_PROMPT = (f"[UNUSED_TOKEN_146]system\n{SYSTEM}{END_OF_TURN}\n[UNUSED_TOKEN_146]user\n<image>\n"
                   f"{{question}}{{choices}}{END_OF_TURN}\n[UNUSED_TOKEN_146]assistant\n")
EMBEDDER_PROMPT = (f"<s>[UNUSED_TOKEN_146]user\n<image>\n{{question}}{{choices}}{END_OF_TURN}\n"
                   f"[UNUSED_TOKEN_146]rationale\n{{tor}}{END_OF_TURN}\n</s>")
# upstream's LoRA modules → ours (Llama's names); wqkv is split below
PROJECTIONS = {"attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
               "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj"}
NORMS = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
MLM_PREFIXES = {"vit.vision_tower.": "vision.model.", "vision_proj.0.": "projector.0.",
                "vision_proj.2.": "projector.2.", "model.tok_embeddings.": "lm.model.embed_tokens.",
                "model.norm.": "lm.model.norm.", "output.": "lm.lm_head.",
                "lm.model.layers.": "lm.model.layers."}  # renamed by _split_layers
MAMBA_PREFIXES = {"backbone.embeddings.": "traversal.embeddings.", "backbone.layers.": "traversal.layers.",
                  "backbone.norm_f.": "traversal.norm_f.", "vision_proj.0.": "traversal_projector.0.",
                  "vision_proj.2.": "traversal_projector.2.", "tor_proj.0.": "tor_projector.0.",
                  "tor_proj.2.": "tor_projector.2."}
CLIP_HEAD_WIDTH = 64  # every CLIP ViT's attention heads are 64 wide (L/14: 1024 = 16 × 64)


def _split_layers(state: dict[str, torch.Tensor], kv_heads: int, groups: int,
                  head_dim: int) -> tuple[dict, int]:
    """``model.layers.*`` in Llama's names (``lm.model.layers.*``), wqkv split; also the LoRA rank."""
    out, rank = {}, 0
    for key, tensor in state.items():
        match = LAYER_KEY.fullmatch(key)
        if not match:
            out[key] = tensor
            continue
        layer, rest = match.groups()
        prefix = f"lm.model.layers.{layer}."
        if rest.endswith("rotary_emb.inv_freq"):
            continue
        module, _, leaf = rest.rpartition(".")
        if module.startswith("attention.wqkv"):
            part = module[len("attention.wqkv"):].lstrip(".")  # ffn | lora_A | lora_B
            target = {"ffn": "", "lora_A": ".lora_A", "lora_B": ".lora_B"}.get(part)
            if target is None:
                out[key] = tensor
                continue
            if part == "lora_A":  # reads the input: shared by q, k and v
                rank = tensor.shape[0]
                for name in ("q_proj", "k_proj", "v_proj"):
                    out[f"{prefix}self_attn.{name}{target}.{leaf}"] = tensor.clone()
                continue
            packed = tensor.reshape(kv_heads, groups + 2, head_dim, *tensor.shape[1:])
            pieces = {"q_proj": packed[:, :groups], "k_proj": packed[:, groups],
                      "v_proj": packed[:, groups + 1]}
            for name, piece in pieces.items():
                out[f"{prefix}self_attn.{name}{target}.{leaf}"] = piece.reshape(-1, *tensor.shape[1:]).clone()
            continue
        base = next((m for m in PROJECTIONS if module.startswith(m)), None)
        if base is not None:
            part = module[len(base):].lstrip(".")
            target = {"ffn": "", "lora_A": ".lora_A", "lora_B": ".lora_B"}.get(part)
            out[key if target is None else f"{prefix}{PROJECTIONS[base]}{target}.{leaf}"] = tensor
            continue
        out[f"{prefix}{NORMS[module]}.{leaf}" if module in NORMS else key] = tensor
    return out, rank


def _language(config: dict, folder: Path) -> dict:
    """Llama's config for InternLM2's fields."""
    if config.get("rope_scaling") and config["rope_scaling"].get("type") != "dynamic":
        raise CheckpointError(f"{folder}: rope_scaling {config['rope_scaling']} (upstream runs only "
                              "'dynamic')")
    heads = config["num_attention_heads"]
    rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000))}
    if config.get("rope_scaling"):
        rope.update(rope_type="dynamic", factor=float(config["rope_scaling"]["factor"]))
    llama = {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "hidden_act",
                                    "max_position_embeddings", "rms_norm_eps", "initializer_range",
                                    "bos_token_id", "pad_token_id") if k in config}
    return {"model_type": "llama", **llama, "num_attention_heads": heads,
            "num_key_value_heads": config.get("num_key_value_heads") or heads,
            "head_dim": config["hidden_size"] // heads, "attention_bias": bool(config.get("bias", True)),
            "mlp_bias": False, "tie_word_embeddings": False, "rope_parameters": rope}


def _vision(state: dict[str, torch.Tensor], folder: Path) -> dict:
    """CLIP's vision config read off the tower's weights (upstream builds it from
    openai/clip-vit-large-patch14-336, then widens the position table to the 490 px grid)."""
    prefix = "vit.vision_tower.vision_model."
    patch = state.get(prefix + "embeddings.patch_embedding.weight")
    positions = state.get(prefix + "embeddings.position_embedding.weight")
    if patch is None or positions is None:
        raise CheckpointError(f"{folder}: no CLIP tower weights (vit.vision_tower.vision_model.*)")
    grid = math.isqrt(positions.shape[0] - 1)
    if grid * grid + 1 != positions.shape[0]:
        raise CheckpointError(f"{folder}: CLIP position table of {positions.shape[0]} rows is not a square "
                              "grid + CLS")
    layers = {int(k[len(prefix):].split(".")[2]) for k in state if k.startswith(prefix + "encoder.layers.")}
    width = patch.shape[0]
    return {"hidden_size": width, "num_hidden_layers": len(layers),
            "intermediate_size": state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_attention_heads": max(1, width // CLIP_HEAD_WIDTH), "num_channels": patch.shape[1],
            "patch_size": patch.shape[-1], "image_size": grid * patch.shape[-1], "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5}


def _mamba(source: str, hub_only: bool, rows: int) -> tuple[dict, dict, dict]:
    """Meteor-Mamba's architecture fields, its whole config (and ``folder``) and its renamed weights,
    the token table padded to ``rows`` (our tokenizer's extra tokens start at the mean)."""
    folder = resolve_source(source, hub_only)
    config = read_json(folder, "config.json")
    if config.get("model_type") != "mamba":
        raise CheckpointError(f"{folder}/config.json has model_type {config.get('model_type')!r}, "
                              "not 'mamba'")
    known = MambaConfig().to_dict().keys() - set(FILE_FIELDS) - {"vocab_size", "model_type"}
    fields = {k: v for k, v in architecture(config).items() if k in known}
    # lm_head: MambaForCausalLM's own, never used by Meteor
    state = {k: v for k, v in read_state_dict(folder).items() if not k.startswith("lm_head.")}
    state = rename_by_prefix(state, MAMBA_PREFIXES, f"{folder} (Meteor-Mamba layout)")
    if "traversal.embeddings.weight" not in state:
        raise CheckpointError(f"{folder}: no backbone.embeddings.weight")
    fit_vocabulary(state, rows, ("traversal.embeddings.weight",))
    return fields, {**config, "folder": str(folder)}, state


def _check_token(tokenizer, token: str, config: dict, field: str, folder) -> None:
    if field in config and tokenizer.convert_tokens_to_ids(token) != config[field]:
        found = tokenizer.convert_tokens_to_ids(token)
        raise CheckpointError(f"{folder}: the tokenizer's {token} is id {found}, the config's {field} "
                              f"{config[field]}")


def convert(folder: Path, mamba: str | None = None) -> Meteor:
    config = read_json(folder, "config.json")
    if "tor_token_index" not in config or "hidden_size" not in config:
        raise CheckpointError(f"{folder}/config.json is not Meteor-MLM's (InternLM2 fields and "
                              "tor_token_index expected)")
    what = f"{folder} (Meteor-MLM layout)"
    state = read_state_dict(folder)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    state, rank = _split_layers(state, kv_heads, heads // kv_heads, config["hidden_size"] // heads)
    vision = _vision(state, folder)
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    state = rename_by_prefix(state, MLM_PREFIXES, what)
    if not rank:
        raise CheckpointError(f"{what}: no partial LoRA weights "
                              "(model.layers.*.attention.wqkv.lora_A.weight)")

    try:
        tokenizer = build_tokenizer(str(folder))
    except (ValueError, OSError, ImportError) as err:  # upstream's InternLM2Tokenizer is remote code
        raise CheckpointError(f"{folder}: its tokenizer does not load without remote code ({err}); add a "
                              "tokenizer.json of the same vocabulary to the folder") from err
    _check_token(tokenizer, "<image>", config, "image_token_index", folder)
    _check_token(tokenizer, "<tor>", config, "tor_token_index", folder)
    if END_OF_TURN in tokenizer.get_vocab():
        tokenizer.eos_token = END_OF_TURN
    language = _language(config, folder)
    language["vocab_size"] = max(len(tokenizer), state[EMBEDDINGS[0]].shape[0])
    mamba_fields, mamba_config, mamba_state = _mamba(mamba or DEFAULT_MAMBA, mamba is None, len(tokenizer))
    for token, field in (("<image>", "image_token_index"), ("<tor>", "tor_token_index")):
        _check_token(tokenizer, token, mamba_config, field, mamba_config["folder"])
    model_config = {
        "vision": {"hf": {"model_type": "clip_vision_model", "config": vision, "feature_layer": -1,
                          "select": "default"}},
        "projector": "mlp2x_gelu",
        "language": {"config": language},
        # upstream: rank 256, alpha 256 (scale 1), dropout 0.05 (training only)
        "partial_lora": {"rank": rank, "alpha": float(rank), "targets": LORA_TARGETS, "dropout": 0.05},
        "output_format": "plain",
        "prompt": BACKBONE_PROMPT,
        "preprocess": {"image_size": vision["image_size"], "mean": CLIP_MEAN, "std": CLIP_STD,
                       "resize": "squash"},
        "max_length": language.get("max_position_embeddings", 4096),
        "step": 2,
        "traversal": {"embedder": "mamba", "mamba": mamba_fields, "num_tor": NUM_TOR, "placement": "even",
                      "prompt": EMBEDDER_PROMPT},
    }
    model = Meteor(model_config, tokenizer=tokenizer)
    return load_converted(model, {**state, **mamba_state}, f"{what} + {mamba_config['folder']}")
