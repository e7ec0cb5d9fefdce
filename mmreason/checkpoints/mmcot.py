"""MM-CoT's released models (amazon-science/mm-cot, ``T5ForMultimodalGeneration`` in ``model.py``) → an
mccot-family export.

Upstream trains two models of one architecture: a rationale model (prompt format ``QCM-E``: question,
context and options in, ``Solution: …`` out) and an answer model (``QCMG-A``: the same plus the
generated rationale in, ``The answer is (X).`` out), each saved by the Hugging Face Trainer
(``config.json``, ``pytorch_model.bin``, tokenizer files). Each is a T5 whose encoder states are fused
with image features after the encoder (``JointEncoder``: ``image_dense`` projects the features,
``mha_layer`` is one-head attention from the text states to them, ``gate_dense`` gates the mix) —
exactly an :class:`~mmreason.models.mccot.MCCoTStage`. The rationale folder is ``SRC``, the answer
folder the ``answer`` option; without it the export writes rationales only.

Image features are timm ``vit_large_patch32_384``'s ``forward_features`` with the class token
(145 × 1024, ``extract_features.py``; 384 px, bicubic, mean and std 0.5). The tower is not in the
checkpoints: ``vision`` names a local file of its weights (else timm downloads them when the network
allows), or, as a dict, a whole timm tower spec. Checkpoints trained on DETR, CLIP or ResNet features
are refused: their features came from models this zoo does not build.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mmreason.checkpoints.source import (
    CheckpointError,
    read_json,
    read_state_dict,
    rename_by_prefix,
    resolve_source,
)
from mmreason.models.mccot import MCCoT
from mmreason.text.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

FORMAT = "mmcot"
CONVERTER_VERSION = 1
OPTIONS = ("answer", "vision")  # the answer model's folder; the ViT's weights file (or a timm tower spec)
VIT = {"name": "vit_large_patch32_384", "pretrained": True, "frozen": True, "keep_prefix_tokens": True}
VIT_PREPROCESS = {"image_size": 384, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "crop"}
OTHER_FEATURES = {256: "DETR (img_type detr)", 2048: "CLIP or ResNet (img_type clip / resnet)"}
PREFIXES = {  # the fusion first: it lives under the encoder
    "encoder.image_dense.": "fusion.image_proj.", "encoder.mha_layer.": "fusion.attention.",
    "encoder.gate_dense.": "fusion.gate.", "shared.": "t5.shared.", "encoder.": "t5.encoder.",
    "decoder.": "t5.decoder.", "lm_head.": "t5.lm_head.",
}
TABLES = ("t5.shared.weight", "t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight", "t5.lm_head.weight")
UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)  # upstream ignores it on load
T5_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
             "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
             "layer_norm_epsilon", "initializer_factor", "feed_forward_proj", "tie_word_embeddings")


def _language(folder: Path) -> dict:
    """The T5 settings of a model's ``config.json`` (T5's own default ties the output table)."""
    config = read_json(folder, "config.json")
    if config.get("model_type") != "t5":
        raise CheckpointError(f"{folder}/config.json has model_type {config.get('model_type')!r}; MM-CoT's models "
                              "are T5s (architectures ['T5ForMultimodalGeneration'])")
    fields = {k: config[k] for k in T5_FIELDS if k in config}
    fields.setdefault("tie_word_embeddings", True)
    return {"model_type": "t5", **fields}


def _stage_state(folder: Path, rows: int) -> dict[str, torch.Tensor]:
    """A model's weights in a stage's names, its token tables cut (or grown with their mean) to ``rows``."""
    state = {k: v for k, v in read_state_dict(folder).items() if k not in UNUSED}
    state = rename_by_prefix(state, PREFIXES, f"{folder} ({FORMAT} layout)")
    if "fusion.image_proj.weight" not in state:
        raise CheckpointError(f"{folder}: no encoder.image_dense weights; a text-only T5 (trained without "
                              "--img_type) is not an MM-CoT model")
    for key in TABLES:
        if key in state and state[key].shape[0] != rows:
            table = state[key][:rows]
            state[key] = torch.cat([table, table.mean(0, keepdim=True).expand(rows - table.shape[0], -1)])
    return state


def _vision(vision: str | dict | None) -> dict:
    if isinstance(vision, dict):
        return {**VIT, **vision}
    return {**VIT, "weights_file": vision} if vision else dict(VIT)


def convert(folder: Path, answer: str | None = None, vision: str | dict | None = None) -> MCCoT:
    folders = {"rationale": folder, **({"answer": resolve_source(answer)} if answer else {})}
    language = _language(folder)
    for name, other in folders.items():
        if _language(other) != language:
            raise CheckpointError(f"{other} ({name} model) has another T5 configuration than {folder}: "
                                  f"{_language(other)} vs {language}")
    tokenizer = build_tokenizer(str(folder))
    if answer and any((folders["answer"] / f).is_file() for f in ("tokenizer.json", "spiece.model")):
        if build_tokenizer(str(folders["answer"])).get_vocab() != tokenizer.get_vocab():
            raise CheckpointError(f"{folders['answer']} holds another tokenizer than {folder}; both stages read one")
    states = {name: _stage_state(path, len(tokenizer)) for name, path in folders.items()}
    tower = _vision(vision)
    width = states["rationale"]["fusion.image_proj.weight"].shape[1]
    size = (tower.get("overrides") or {}).get("img_size", VIT_PREPROCESS["image_size"])
    config = {"vision": tower, "language": {"config": language}, "preprocess": {**VIT_PREPROCESS, "image_size": size},
              "stages": list(folders), "max_length": 512, "max_target_length": 512, "templates": "mm-cot"}
    model = MCCoT(config, tokenizer=tokenizer)
    if model.vision.width != width:
        kind = OTHER_FEATURES.get(width, f"{width}-dimensional")
        raise CheckpointError(f"{folder}: encoder.image_dense reads {kind} features; only ViT features "
                              f"({tower['name']}, {model.vision.width} wide) convert")
    for name, state in states.items():
        stage = model.stages[name]
        missing, unexpected = stage.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("vision.") and k not in TABLES]
        if missing or unexpected:
            raise CheckpointError(f"{folders[name]} ({FORMAT} layout): missing {missing[:5]} ({len(missing)}), "
                                  f"unexpected {unexpected[:5]} ({len(unexpected)})")
        absent = [k for k in ("t5.shared.weight", "t5.lm_head.weight") if k not in state]
        if absent and not (absent == ["t5.lm_head.weight"] and language["tie_word_embeddings"]):
            raise CheckpointError(f"{folders[name]} ({FORMAT} layout): no {absent[0][3:]} in its weights")
    if "answer" not in folders:
        log.warning("no answer model given (answer=...): the export writes rationales but answers nothing")
    return model.eval()
