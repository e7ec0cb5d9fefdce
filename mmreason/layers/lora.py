"""LoRA fine-tuning (Hu et al., 2021) through peft: low-rank updates on the language model and,
optionally, the vision tower, merged into ordinary weights when the model is exported.

peft's adapters are injected in place (``inject_adapter_in_model``): each target Linear
becomes peft's LoRA layer holding the frozen ``base_layer`` and trainable ``lora_A``/``lora_B``,
so the model keeps its structure and every family's forward and generation run unchanged.
An export stores ``W + B·A·alpha/rank`` under the original names (an ordinary export any
loader reads), or with ``save: adapters`` only the adapters (and the weights trained beside them),
which :func:`apply_adapters` puts back onto the export they were trained from.
"""

from __future__ import annotations

import re

import torch
from torch import nn

LORA_KEYS = ("rank", "alpha", "dropout", "language", "vision", "save")
DEFAULT_LORA = {"rank": 8, "alpha": 16, "dropout": 0.05, "language": "all-linear", "vision": None, "save": "merged"}
SAVES = ("merged", "adapters")
ADAPTER = "default"  # peft's adapter name
LORA_WEIGHT = re.compile(rf"^(?P<layer>.+)\.lora_(?P<which>[AB])\.{ADAPTER}\.weight$")


def lora_spec(spec: dict | None) -> dict:
    """The LoRA settings with defaults, checked: ``rank`` and ``alpha`` positive, ``language``/``vision``
    peft's ``target_modules`` (a list of layer names, ``all-linear``, or None for no adapters there)."""
    unknown = sorted(set(spec or {}) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"lora takes {LORA_KEYS}, not {unknown}")
    spec = {**DEFAULT_LORA, **(spec or {})}
    if int(spec["rank"]) < 1 or float(spec["alpha"]) <= 0 or not 0 <= float(spec["dropout"]) < 1:
        raise ValueError(f"lora needs rank >= 1, alpha > 0 and 0 <= dropout < 1, got {spec}")
    if spec["save"] not in SAVES:
        raise ValueError(f"lora.save must be one of {SAVES}, got {spec['save']!r}")
    if spec["language"] is None and spec["vision"] is None:
        raise ValueError("lora needs targets: language and/or vision (layer names or all-linear)")
    return spec


def add_lora(model: nn.Module, spec: dict) -> dict:
    """Inject LoRA into ``model.lm`` (and ``model.vision``) as ``spec`` says; the wrapped layers' own weights
    freeze, the rest of the model keeps its setting. Returns the checked spec (kept as ``model.lora``)."""
    from peft import LoraConfig, inject_adapter_in_model

    spec = lora_spec(spec)
    for part in ("language", "vision"):
        targets = spec[part]
        if targets is None:
            continue
        module = model.lm if part == "language" else model.vision
        config = LoraConfig(r=int(spec["rank"]), lora_alpha=float(spec["alpha"]), lora_dropout=float(spec["dropout"]),
                            target_modules=targets)
        try:
            inject_adapter_in_model(config, module, adapter_name=ADAPTER)
        except ValueError as err:
            raise ValueError(f"lora.{part} {targets!r} matches no layer of the {part} model ({err})") from err
    model.lora = spec
    return spec


def scale(spec: dict) -> float:
    return float(spec["alpha"]) / int(spec["rank"])


def merged_state_dict(state: dict[str, torch.Tensor], spec: dict) -> dict[str, torch.Tensor]:
    """``state`` with every LoRA layer folded into its base weight (``W + B·A·alpha/rank``) under the
    layer's own name: the state dict of the model without adapters."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    out = {}
    for key, tensor in state.items():
        match = LORA_WEIGHT.match(key)
        if match:
            pairs.setdefault(match["layer"], {})[match["which"]] = tensor
        else:
            out[key.replace(".base_layer.", ".")] = tensor
    for layer, pair in pairs.items():
        weight = out[f"{layer}.weight"]
        delta = (pair["B"].float() @ pair["A"].float()) * scale(spec)
        out[f"{layer}.weight"] = (weight.float() + delta).to(weight.dtype)
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What ``save: adapters`` stores: the adapters, and every other weight training changes (a projector
    left unfrozen, say), so the base export plus these is the trained model."""
    state = model.state_dict()
    return ({k: v for k, v in state.items() if LORA_WEIGHT.match(k)}
            | {name: state[name] for name, p in model.named_parameters() if p.requires_grad})


def apply_adapters(model: nn.Module, spec: dict, adapters: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` (the export the adapters were trained from) with LoRA added and the adapters (and the
    trained weights beside them) loaded; an adapter missing, or a weight the model lacks, is an error naming it."""
    add_lora(model, spec)
    state = model.state_dict()
    missing = sorted(k for k in state if LORA_WEIGHT.match(k) and k not in adapters)
    unexpected = sorted(k for k in adapters if k not in state)
    if missing or unexpected:
        raise ValueError(f"the adapters do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(adapters, strict=False)
    return model
