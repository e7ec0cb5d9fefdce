"""Which architecture-config keys each family reads, so a misspelt key is refused.

Configs are nested dicts (they travel in recipes and exports as YAML/JSON). A
family declares the keys it reads as a nested dict (``config_schema``);
:func:`check_config` refuses any other key, at any depth, listing the valid
ones, instead of letting ``traversl:`` silently train the default. ``ANY``
marks a subtree handed to another library as is (timm's model arguments, a
Hugging Face config).
"""

from __future__ import annotations

ANY = "any"  # a free-form subtree
LEAF = None  # a value, not a subtree

HF_VISION = {"model_type": LEAF, "config": ANY, "path": LEAF, "feature_layer": LEAF, "select": LEAF}
VISION = {"name": LEAF, "overrides": ANY, "pretrained": LEAF, "weights_file": LEAF, "stem": LEAF, "frozen": LEAF,
          "keep_prefix_tokens": LEAF, "hf": HF_VISION}
LANGUAGE = {"config": ANY, "path": LEAF, "gguf_file": LEAF}
PREPROCESS = {"image_size": LEAF, "mean": LEAF, "std": LEAF, "max_pixels": LEAF, "resize": LEAF}
VLM = {"vision": VISION, "projector": LEAF, "language": LANGUAGE, "tokenizer": LEAF, "output_format": LEAF,
       "preprocess": PREPROCESS, "max_length": LEAF, "image_position": LEAF, "prompt": LEAF}


def check_config(config: dict, schema: dict, family: str, where: str = "config") -> None:
    """Raise ValueError naming the first key of ``config`` that ``schema`` does not know."""
    if not isinstance(config, dict):
        raise ValueError(f"{family} {where} must be a mapping of settings, got {type(config).__name__}")
    for key, value in config.items():
        if key not in schema:
            raise ValueError(f"{family} {where}: unknown key {key!r}; valid keys here: {', '.join(sorted(schema))}")
        sub = schema[key]
        if isinstance(sub, dict) and isinstance(value, dict):
            check_config(value, sub, family, f"{where}.{key}")
