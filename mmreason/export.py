"""Export folders: everything needed to rebuild a trained model offline.

Layout: ``config.json`` (family, architecture config, preprocessing, special
tokens, the resolved recipe, package versions, metrics), ``model.safetensors``,
the tokenizer files, and a ``README.md`` model card. A folder is written under
a temporary name and swapped in, so a crash never leaves half an export; a
crash between the two renames of the swap is repaired by the next save or load.

An export is self-contained: its config may not point at other folders, files
or hub names (a parent export, pretrained weights, a tokenizer elsewhere), so
loading one does bounded work and reads nothing beyond the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file
from transformers import AutoTokenizer

from mmreason.data.writer import unsafe_key
from mmreason.layers.lora import adapter_state_dict, apply_adapters, merged_state_dict
from mmreason.text.tokenizer import SPECIAL_TOKENS
from mmreason.zoo import family_class

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
ADAPTERS_FILE = "adapters.safetensors"  # a LoRA export's adapters alone (``lora.save: adapters``)
TOKENIZER_FILE = "tokenizer_config.json"
FORMAT_VERSION = 1
# weights of layouts the zoo no longer builds, and what their owner can do
RETIRED_LAYOUTS = {"mask_decoder.blocks.": "; this segmentation export predates the mask decoder's SAM layout (four "
                   "mask tokens, SAM's parameter names), which its weights cannot be mapped onto: train it again "
                   "with its recipe (recipes/star/)"}
TEXTLESS_FAMILIES = ("encoder",)  # families that read no text and so export no tokenizer


EXTERNAL_REFERENCES = ("init", "backbone_from", "from_export", "init_from", "rationale_from", "weights_file",
                       "path", "gguf_file")  # config keys that would make loading read beyond the folder


class ExportError(ValueError):
    """An export folder is missing a file or holds an invalid one."""


def _external_references(node, where: str = "config"):
    """Where an exported config points outside its folder: (key path, value) pairs."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}"
            if ((key in EXTERNAL_REFERENCES and value) or (key == "pretrained" and value)
                    or (key == "tokenizer" and value not in (".", None))):
                yield here, value
            yield from _external_references(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _external_references(value, f"{where}[{i}]")


def _non_finite_tensors(model) -> list[str]:
    return [name for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def _swap_names(folder: Path) -> tuple[Path, Path]:
    return folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")


def recover_interrupted_swap(folder: str | Path) -> None:
    """Finish a swap a crash interrupted: ``E.tmp`` is complete once ``E`` has been moved to ``E.old``."""
    folder = Path(folder)
    tmp, old = _swap_names(folder)
    if folder.exists() or not old.is_dir():
        return
    if tmp.is_dir():
        os.replace(tmp, folder)
        log.warning("export %s: finished a swap a crash interrupted (%s moved in place)", folder, tmp.name)
    else:
        os.replace(old, folder)
        log.warning("export %s: restored the previous export from %s", folder, old.name)
    shutil.rmtree(old, ignore_errors=True)


def _versions() -> dict[str, str]:
    out = {}
    for package in ("mmreason", "torch", "transformers", "timm", "lightning"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def portable_config(model) -> dict:
    """The model's config rewritten to rebuild from the folder alone (no hub, no weight files)."""
    config = json.loads(json.dumps(model.config))
    if hasattr(model, "lm"):  # the weights are stored as loaded: no GGUF or quantisation to read them through
        language = {k: v for k, v in model.lm.config.to_diff_dict().items() if k != "quantization_config"}
        config["language"] = {"config": {"model_type": model.lm.config.model_type, **language}}
    if (config.get("init_language") or {}).get("path") is not None:  # no path out of the folder: the architecture
        config["init_language"] = config["language"]
    config["vision"] = {**config["vision"], "pretrained": False, "weights_file": None}
    if config["vision"].get("hf", {}).get("path") is not None:  # a pretrained HF tower: its config, not its path
        tower = model.vision.model.config
        config["vision"]["hf"] = {**config["vision"]["hf"], "path": None,
                                  "config": {"model_type": tower.model_type, **tower.to_diff_dict()}}
    if model.tokenizer is not None:
        config["tokenizer"] = "."
    config["preprocess"] = model.preprocess.to_dict()
    return config


def model_card(family: str, metrics: dict | None, recipe: dict | None, source: dict | None = None) -> str:
    lines = [f"# {family} model", "", "Exported by mmreason. Load it with:", "", "```python",
             "import mmreason", "model = mmreason.load(\"PATH/TO/THIS/FOLDER\")",
             "print(model.predict(\"image.png\", \"how many red shapes are there?\"))", "```", ""]
    if source:
        lines += ["## Converted from", "", *[f"- {k}: {v}" for k, v in source.items()], ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    if recipe:
        lines += ["## Recipe", "", "```json", json.dumps(recipe, indent=1, default=str)[:4000], "```", ""]
    return "\n".join(lines)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", **{name: name for name in DTYPES}}


def dtype_name(dtype: str | None) -> str | None:
    """``bf16``/``bfloat16``, ``fp16``/``float16``, ``fp32``/``float32`` (or None) as DTYPES names it."""
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
    return None if dtype is None else DTYPE_NAMES[dtype]


def _save_weights(weights: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """``weights``, floating-point ones cast to ``dtype``, each storage once (tied weights are one
    tensor: :func:`safetensors.torch.load_model` fills the other names), into a file as readable as the
    folder's other files (safetensors writes its own owner-only)."""
    state, seen = {}, set()
    for name, tensor in weights.items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if identity in seen:
            continue
        seen.add(identity)
        state[name] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    save_file(state, str(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_export(model, folder: str | Path, recipe: dict | None = None, metrics: dict | None = None,
                source: dict | None = None, dtype: str | None = None) -> Path:
    """Write ``model`` to ``folder``; refuses non-finite weights, keeping the export already there.
    ``source`` says where converted weights came from (id, format, converter version); ``dtype``
    (``bf16``, ``fp16``, ``fp32``; default: the weights' own) is the stored weights' precision, so an
    export is sized like what it was trained in (it loads in float32 unless ``load_export`` says otherwise).
    A model fine-tuned with LoRA (``model.lora``) is stored with its adapters merged, or with
    ``lora.save: adapters`` as its adapters alone (loaded by ``load_export(BASE, adapters=FOLDER)``)."""
    folder = Path(folder)
    dtype = dtype_name(dtype) or next((name for name, t in DTYPES.items()
                                       if t == next(model.parameters()).dtype), "float32")
    non_finite = _non_finite_tensors(model)
    if non_finite:
        raise ExportError(f"refusing to export to {folder}: {len(non_finite)} weight tensor(s) hold NaN or inf "
                          f"(first: {non_finite[0]}); the export already there, if any, is kept")
    recover_interrupted_swap(folder)
    tmp, old = _swap_names(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "config": portable_config(model),
        "special_tokens": ({t: model.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
                           if model.tokenizer is not None else {}),
        "recipe": recipe,
        "metrics": metrics or {},
        "versions": _versions(),
        "weights_dtype": dtype,
        **({"source": source} if source else {}),
    }
    lora = getattr(model, "lora", None)
    weights = model.state_dict()
    if lora is not None and lora["save"] == "adapters":
        config["adapters"] = {"lora": lora, "base_weights_sha256": model.lora_base}
        weights, weights_file = adapter_state_dict(model), ADAPTERS_FILE
    else:
        weights, weights_file = (merged_state_dict(weights, lora) if lora else weights), WEIGHTS_FILE
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str))
    _save_weights(weights, tmp / weights_file, DTYPES[dtype])
    if model.tokenizer is not None:  # a vision encoder reads no text
        model.tokenizer.save_pretrained(str(tmp))
    (tmp / CARD_FILE).write_text(model_card(model.family, metrics, recipe, source))
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    log.info("exported %s model to %s", model.family, folder)
    return folder


def read_export_config(folder: str | Path, need_weights: bool = True) -> dict:
    """Check the folder's files and return its config, or raise ExportError naming the problem."""
    folder = Path(folder)
    recover_interrupted_swap(folder)
    if not folder.is_dir():
        tmp = _swap_names(folder)[0]
        if tmp.is_dir():
            raise ExportError(f"export folder {str(folder)!r} does not exist; {str(tmp)!r} is an export whose "
                              "writing was interrupted (incomplete): export again")
        raise ExportError(f"export folder {str(folder)!r} does not exist (write one with `mmreason export`)")
    if not (folder / CONFIG_FILE).is_file():
        raise ExportError(f"export folder {str(folder)!r} is incomplete: {CONFIG_FILE} is missing")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise ExportError(f"{folder / CONFIG_FILE} is not valid JSON: {exn}") from exn
    if need_weights and isinstance(config, dict) and "adapters" in config:
        raise ExportError(f"{str(folder)!r} holds LoRA adapters only: load them onto the export they were trained "
                          f"from, mmreason.load(BASE, adapters={str(folder)!r}) (predict/eval: --adapters)")
    if need_weights and not (folder / WEIGHTS_FILE).is_file():
        raise ExportError(f"export folder {str(folder)!r} is incomplete: {WEIGHTS_FILE} is missing")
    if not isinstance(config, dict):
        raise ExportError(f"{folder / CONFIG_FILE} must hold a JSON object")
    for key in ("family", "config"):
        if key not in config:
            raise ExportError(f"{folder / CONFIG_FILE} has no {key!r} entry; is this an mmreason export?")
    if not isinstance(config["config"], dict):
        raise ExportError(f"{folder / CONFIG_FILE}: 'config' must be a JSON object")
    references = list(_external_references(config["config"]))
    if references:
        where, value = references[0]
        raise ExportError(f"{folder / CONFIG_FILE}: {where} = {str(value)[:120]!r} points outside the folder; "
                          "an export must be self-contained (re-export it with `mmreason export`)")
    if config["family"] not in TEXTLESS_FAMILIES and not (folder / TOKENIZER_FILE).is_file():
        raise ExportError(f"export folder {str(folder)!r} is incomplete: {TOKENIZER_FILE} is missing")
    return config


def _build(folder: Path, config: dict):
    """The family's model for a checked config, untrained, with the folder's tokenizer."""
    tokenizer = None if config["family"] in TEXTLESS_FAMILIES else AutoTokenizer.from_pretrained(str(folder))
    return family_class(config["family"])(config["config"], tokenizer=tokenizer)


def weights_sha256(folder: str | Path) -> str:
    """The digest of an export's weights file: what LoRA adapters record of the export they fit."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _with_adapters(model, base: Path, folder: str | Path):
    """``model`` (the export ``base``) with the LoRA adapters of ``folder`` on it, if they were trained on it."""
    folder = Path(folder)
    entry = read_export_config(folder, need_weights=False).get("adapters")
    if not isinstance(entry, dict) or not (folder / ADAPTERS_FILE).is_file():
        raise ExportError(f"{str(folder)!r} holds no LoRA adapters ({ADAPTERS_FILE} and an 'adapters' entry)")
    if entry.get("base_weights_sha256") != weights_sha256(base):
        raise ExportError(f"the adapters in {str(folder)!r} were trained on another export than {str(base)!r} "
                          "(its weights differ); load them onto the export named by init.from in their recipe")
    try:
        adapters = load_file(str(folder / ADAPTERS_FILE))
    except (SafetensorError, OSError) as exn:
        raise ExportError(f"{folder / ADAPTERS_FILE} is not a readable safetensors file: {exn}") from exn
    try:
        return apply_adapters(model, entry["lora"], adapters)
    except ValueError as exn:
        raise ExportError(f"{folder}: {exn}") from exn


def load_export(folder: str | Path, device: str | torch.device = "cpu", dtype: str | None = None,
                adapters: str | Path | None = None):
    """Rebuild the model of an export folder, offline, in eval mode; ``dtype`` (``bfloat16``, ``float16``)
    halves a large model's memory (a 7B model: about 14 GB instead of 28); ``adapters``: a folder of LoRA
    adapters trained on this export (``lora.save: adapters``), put on it."""
    dtype = dtype_name(dtype)
    folder = Path(folder)
    model = _build(folder, read_export_config(folder))
    try:
        missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False)
    except (SafetensorError, OSError) as exn:
        raise ExportError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file: {exn}") from exn
    if missing or unexpected:
        hint = next((h for key, h in RETIRED_LAYOUTS.items() if any(key in name for name in unexpected)), "")
        raise ExportError(
            f"{folder / WEIGHTS_FILE} does not match the architecture in {CONFIG_FILE}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}{hint}"
        )
    if adapters is not None:
        model = _with_adapters(model, folder, adapters)
    return model.to(device=device, dtype=DTYPES[dtype] if dtype else None).eval()


def checkpoint_payload(model) -> dict:
    """What a training checkpoint carries to be exported alone: the export's config and tokenizer files
    (the weights are in its state dict), so ``export --ckpt`` needs none of the folders training started from."""
    files: dict[str, bytes] = {}
    if model.tokenizer is not None:
        with tempfile.TemporaryDirectory() as tmp:
            model.tokenizer.save_pretrained(tmp)
            files = {path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()}
    return {"format_version": FORMAT_VERSION, "family": model.family, "config": portable_config(model),
            "tokenizer_files": files, "lora": getattr(model, "lora", None)}


def model_from_checkpoint(payload: dict, weights: dict, source: str):
    """Rebuild a model from :func:`checkpoint_payload` and its weights, with every check of an export folder."""
    if not isinstance(payload, dict) or not isinstance(payload.get("tokenizer_files"), dict):
        raise ExportError(f"{source}: its export entry must be a dict with 'tokenizer_files'")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, content in payload["tokenizer_files"].items():
            if not isinstance(name, str) or unsafe_key(name) or not isinstance(content, bytes):
                raise ExportError(f"{source}: tokenizer file {str(name)[:80]!r} must be a plain file name with bytes")
            (folder / name).write_bytes(content)
        entries = {k: payload.get(k) for k in ("format_version", "family", "config")}
        (folder / CONFIG_FILE).write_text(json.dumps(entries))
        model = _build(folder, read_export_config(folder, need_weights=False))
    if payload.get("lora"):  # trained with LoRA: the model without adapters, the adapters merged in
        weights = merged_state_dict(weights, payload["lora"])
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ExportError(f"{source}: weights do not match the architecture: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")
    return model
