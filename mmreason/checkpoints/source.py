"""Reading a released checkpoint: a local folder or a hub id, its config and its weights.

Weights are read as data only: safetensors files, or ``.bin`` files through
``torch.load(weights_only=True)``, single or sharded with an index. Nothing
from the folder runs (no ``trust_remote_code``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
EMBEDDINGS = ("lm.model.embed_tokens.weight", "lm.lm_head.weight")  # a VLM's token tables, in our names
# config fields about the saved file, not the architecture (a saved dtype would build the model in it)
FILE_FIELDS = ("architectures", "auto_map", "_name_or_path", "transformers_version", "torch_dtype", "dtype")


def architecture(fields: dict) -> dict:
    """A released config's fields without those about how its file was saved."""
    return {k: v for k, v in fields.items() if k not in FILE_FIELDS}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(ValueError):
    """A released checkpoint that cannot be converted: missing files, or keys not in the expected layout."""


def resolve_source(src: str, hub_only: bool = False) -> Path:
    """A local folder or file as is (unless ``hub_only``: a name read from a checkpoint's own config may not point
    at a folder on this disk); a hub id downloaded once, into the Hugging Face cache, when the network allows."""
    folder = Path(src)
    if (folder.is_dir() or folder.is_file()) and not hub_only:  # a folder, or a single weights file
        return folder
    if not HUB_ID.fullmatch(src) or ".." in src:
        raise CheckpointError(f"{src!r} is neither a folder nor a hub id (org/name)" if not hub_only else
                              f"{src!r} is not a hub id (org/name); pass the folder explicitly")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(src, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]))
    except LocalEntryNotFoundError as err:
        raise CheckpointError(f"cannot download {src!r}: no network and not in the Hugging Face cache; download the "
                              "folder elsewhere (huggingface-cli download) and pass its path") from err
    except (HfHubHTTPError, ValueError) as err:
        raise CheckpointError(f"cannot download {src!r}: {err}") from err


def read_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {name}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _shard_names(index: Path) -> list[str]:
    """The shard file names an index lists: plain names beside it (a name with a folder in it could read
    any file), however the folder itself is linked (a hub snapshot's files are links into its cache)."""
    weight_map = read_json(index.parent, index.name).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
    names = sorted(set(weight_map.values()))
    bad = [n for n in names if Path(n).name != n or n in (".", "..")]
    if bad:
        raise CheckpointError(f"{index}: shard {bad[0]!r} is not a plain file name beside the index")
    return names


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weights: ``model.safetensors`` / ``pytorch_model.bin``, or the shards
    their ``.index.json`` lists."""
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        files = ([folder / f for f in _shard_names(index)] if index.is_file()
                 else [folder / name] if (folder / name).is_file() else [])
        if not files:
            continue
        state: dict[str, torch.Tensor] = {}
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{index}: shard {file.name!r} is missing")
            state.update(load_file(str(file)) if file.suffix == ".safetensors"
                         else torch.load(file, map_location="cpu", weights_only=True))
        return state
    raise CheckpointError(f"{folder} holds no weights: expected one of {WEIGHT_FILES} or its .index.json shards")


def rename_by_prefix(state: dict[str, torch.Tensor], mapping: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    """``state`` renamed by the first matching prefix of ``mapping`` (source prefix → our prefix); a key no
    prefix matches, or a target left unfilled, is an error naming the keys and the expected layout."""
    out, unexpected = {}, []
    for key, tensor in state.items():
        prefix = next((p for p in mapping if key.startswith(p)), None)
        if prefix is None:
            unexpected.append(key)
        else:
            out[mapping[prefix] + key[len(prefix):]] = tensor
    if unexpected:
        raise CheckpointError(f"{what}: {len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}; expected keys "
                              f"starting with {sorted(mapping)}")
    return out


def fit_vocabulary(state: dict[str, torch.Tensor], rows: int, keys: tuple[str, ...] = EMBEDDINGS) -> None:
    """Our tokenizer adds the zoo's special tokens: their rows in the token tables ``keys`` start at the mean."""
    for key in keys:
        if key in state and state[key].shape[0] < rows:
            table = state[key]
            state[key] = torch.cat([table, table.mean(0, keepdim=True).expand(rows - table.shape[0], -1)])


def align_tower_keys(state: dict[str, torch.Tensor], model, prefix: str = "vision.model.",
                     inner: str = "vision_model.") -> dict[str, torch.Tensor]:
    """Checkpoints name a transformers vision tower's weights with or without its ``vision_model.``
    level (transformers 4 kept it, 5 saves without); rename to what the installed version expects."""
    wanted = model.state_dict().keys()
    out = {}
    for key, tensor in state.items():
        if key.startswith(prefix) and key not in wanted:
            rest = key[len(prefix):]
            other = prefix + (rest[len(inner):] if rest.startswith(inner) else inner + rest)
            key = other if other in wanted else key
        out[key] = tensor
    return out


def load_converted(model, state: dict[str, torch.Tensor], what: str):
    """``model`` with the renamed ``state`` loaded (token tables fitted, tower keys aligned), in eval mode;
    every key must land: missing and unexpected ones are named."""
    fit_vocabulary(state, model.lm.get_input_embeddings().num_embeddings)
    missing, unexpected = model.load_state_dict(align_tower_keys(state, model), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} "
                              f"({len(unexpected)})")
    return model.eval()
