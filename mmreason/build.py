"""Building a model: a registered configuration with overrides, started from an export by one spec.

Every way of starting from an earlier export is the one ``init`` spec::

    init: {from: runs/encoder-synth-tiny-scene/export, parts: [vision], frozen: [vision]}
    init: {from: runs/meteor-synth-tiny-step1/export}          # the whole export, to train on

With ``parts``, the named model is built with the export's architecture of
each part (and what its weights assume: the preprocessing for ``vision``, the
tokenizer for ``language``, the image positions for ``projector``) and those
weights are copied in. Without ``parts`` the model *is* the export: its
architecture stays, and only a family's fine-tune options (for example
``output_format``) may be overridden. Parts in ``frozen`` stay fixed in
training either way. ``lora`` (beside ``init``; :mod:`mmreason.layers.lora`) adds LoRA adapters
to the language model (and the vision tower, if asked), freezing the layers they wrap; the export
merges them unless ``lora.save: adapters`` keeps them apart (then only onto the whole export
``init.from`` names).
Family constructors read no files and the model keeps no reference to the folder, so its own
export and checkpoints stand alone.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmreason.export import load_export, read_export_config, weights_sha256
from mmreason.layers.lora import add_lora, lora_spec
from mmreason.models.base import freeze
from mmreason.models.config_schema import check_config
from mmreason.zoo import family_class, merge_config, model_info

PART_CONFIG = {"vision": ("vision", "preprocess"), "projector": ("projector", "image_position"),
               "language": ("language",)}  # the config fields that describe each part's weights
INIT_KEYS = ("from", "parts", "frozen")
FINE_TUNE_OPTIONS = ("output_format", "max_length")  # a family adds its own as ``fine_tune_options``


def create_model(name: str | None = None, init: dict | None = None, lora: dict | None = None,
                 **overrides) -> nn.Module:
    """A model of a registered ``name`` with config keys overridden, started from an export by ``init``
    (without ``init.parts`` the export itself, and ``name`` may be left out), with ``lora`` adapters;
    a key the family does not read, at any depth, is refused with the valid ones."""
    init = None if init is None else _check_init(init)
    lora = None if lora is None else lora_spec(lora)
    if init is not None and not init["parts"]:
        return _with_lora(_whole_export(name, init, overrides), init, lora)
    if name is None:
        raise ValueError("name a registered model (`mmreason list`) or start from a whole export "
                         "with init: {from: EXPORT}")
    info = model_info(name)
    return _with_lora(build_model(info["family"], merge_config(info["config"], overrides), init=init), init, lora)


def build_model(family: str, config: dict, tokenizer=None, init: dict | None = None) -> nn.Module:
    """A ``family`` model of ``config`` (with ``tokenizer``, unless ``init`` starts the language model,
    which brings its own); ``init`` names parts of an export to start from."""
    cls = family_class(family)
    if "init" in config:
        raise ValueError("init is not part of a model's config: pass it beside the config "
                         "(a training module's init argument, or create_model(name, init=...))")
    check_config(config, cls.config_schema, family, "model_config")
    if not init:
        return cls(dict(config), tokenizer=tokenizer)
    init = _check_init(init)
    parts, frozen, source = init["parts"], init["frozen"], init["from"]
    _check_parts(parts, frozen, cls)
    config, exported = dict(config), read_export_config(source)["config"]
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
    _freeze(model, frozen)
    return model


def _whole_export(name: str | None, init: dict, overrides: dict) -> nn.Module:
    """The export ``init.from`` to train on, with only fine-tune options overridden."""
    model = load_export(init["from"]).train()
    if name is not None and model_info(name)["family"] != model.family:
        raise ValueError(f"model {name!r} is a {model_info(name)['family']!r} model but init.from {init['from']} "
                         f"holds a {model.family!r} one; leave the model name out to train the export as it is")
    allowed = (*FINE_TUNE_OPTIONS, *model.fine_tune_options)
    unchangeable = sorted(set(overrides) - set(allowed))
    if unchangeable:
        raise ValueError(f"model_config {unchangeable} cannot change an exported model's architecture; starting "
                         f"from a whole export (init without parts) only {list(allowed)} may be set")
    for key, value in overrides.items():
        model.config = merge_config(model.config, {key: value})
        setattr(model, key, value)
    if init["frozen"]:
        _check_parts(init["frozen"], init["frozen"], type(model))
    _freeze(model, init["frozen"])
    return model


def _with_lora(model: nn.Module, init: dict | None, lora: dict | None) -> nn.Module:
    """``model`` with ``lora``'s adapters, remembering the export they are trained on when they are to be
    saved apart (only the whole export ``init.from`` can take them back)."""
    if lora is None:
        return model
    if lora["save"] == "adapters" and (init is None or init["parts"]):
        raise ValueError("lora.save: adapters needs init from a whole export (init: {from: EXPORT}, no parts): "
                         "the adapters are loaded back onto that export")
    add_lora(model, lora)
    model.lora_base = weights_sha256(init["from"]) if lora["save"] == "adapters" else None
    return model


def _check_init(init) -> dict:
    """``init`` with ``parts``/``frozen`` as lists, after checking its shape and that its folder exists."""
    if not isinstance(init, dict) or set(init) - set(INIT_KEYS) or "from" not in init:
        raise ValueError(f"init must be {{from: EXPORT, parts: [...], frozen: [...]}} (keys {INIT_KEYS}; without "
                         f"parts, the whole export), got {init!r}")
    if not Path(str(init["from"])).is_dir():
        raise FileNotFoundError(f"init.from: export folder {init['from']!r} does not exist")
    return {"from": str(init["from"]), "parts": list(init.get("parts") or ()),
            "frozen": list(init.get("frozen") or ())}


def _check_parts(parts: list[str], frozen: list[str], cls) -> None:
    offered = cls.init_parts
    unknown = [p for p in parts + frozen if p not in offered]
    if unknown or not parts or set(frozen) - set(parts):
        raise ValueError(f"init.parts must name some of {offered} (a {cls.family} model's parts) and init.frozen "
                         f"some of those; got parts {parts}, frozen {frozen}")


def _freeze(model: nn.Module, parts: list[str]) -> None:
    for part in parts:
        for module in model.part_modules(part):
            freeze(module)
