"""Building a model: a registered configuration, overrides, and parts started from an export.

One spec starts any family's parts from an earlier export::

    model_config:
      init: {from: runs/encoder-synth-tiny-scene/export, parts: [vision], frozen: [vision]}

For each part in ``parts`` the export's architecture of that part is adopted
(with what its weights assume: the preprocessing for ``vision``, the
tokenizer for ``language``, the image positions for ``projector``), the model
is built — family constructors read no files — and the part's weights are
copied in; parts in ``frozen`` stay fixed in training. The model keeps no
reference to the folder, so its own export and checkpoints stand alone.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmreason.export import load_export, read_export_config
from mmreason.models.base import freeze
from mmreason.models.config_schema import check_config
from mmreason.zoo import family_class, merge_config, model_info

PART_CONFIG = {"vision": ("vision", "preprocess"), "projector": ("projector", "image_position"),
               "language": ("language",)}  # the config fields that describe each part's weights
INIT_KEYS = ("from", "parts", "frozen")


def create_model(name: str, **overrides) -> nn.Module:
    """A model of a registered name with config keys overridden (``init`` starts parts from an export);
    a key the family does not read, at any depth, is refused with the valid ones."""
    info = model_info(name)
    return build_model(info["family"], merge_config(info["config"], overrides))


def build_model(family: str, config: dict, tokenizer=None) -> nn.Module:
    """A ``family`` model of ``config`` (with ``tokenizer``, unless ``init`` starts the language model,
    which brings its own)."""
    cls = family_class(family)
    config = dict(config)
    init = config.pop("init", None)
    check_config(config, cls.config_schema, family, "model_config")
    if not init:
        return cls(config, tokenizer=tokenizer)
    parts, frozen, source = _check_init(init, cls)
    exported = read_export_config(source)["config"]
    for part in parts:
        missing = [k for k in PART_CONFIG[part][:1] if k not in exported]
        if missing:
            raise ValueError(f"init.from {source} has no {part} to start from (its config has no {missing[0]!r})")
        config.update({k: exported[k] for k in PART_CONFIG[part] if k in exported})
    if "vision" in parts:  # the export's own setting does not carry over: init.frozen decides
        config["vision"] = {**config["vision"], "frozen": "vision" in frozen}
    parent = load_export(source)
    model = cls(config, tokenizer=parent.tokenizer if "language" in parts else tokenizer)
    for part in parts:
        weights = parent.part_modules(part)[0].state_dict()
        for module in model.part_modules(part):
            module.load_state_dict(weights)
    for part in frozen:
        for module in model.part_modules(part):
            freeze(module)
    return model


def _check_init(init, cls) -> tuple[list[str], list[str], str]:
    if not isinstance(init, dict) or set(init) - set(INIT_KEYS) or "from" not in init:
        raise ValueError(f"init must be {{from: EXPORT, parts: [...], frozen: [...]}} (keys {INIT_KEYS}), got {init!r}")
    parts, frozen = list(init.get("parts") or ()), list(init.get("frozen") or ())
    offered = cls.init_parts
    unknown = [p for p in parts + frozen if p not in offered]
    if unknown or not parts or set(frozen) - set(parts):
        raise ValueError(f"init.parts must name some of {offered} (a {cls.family} model's parts) and init.frozen "
                         f"some of those; got parts {parts}, frozen {frozen}")
    if not Path(str(init["from"])).is_dir():
        raise FileNotFoundError(f"init.from: export folder {init['from']!r} does not exist")
    return parts, frozen, str(init["from"])
