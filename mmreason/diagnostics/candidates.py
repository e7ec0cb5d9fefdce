"""Sampled rationales as data: candidates labelled by the scene graph, and self-distillation sets.

A rationale scorer learns from a model's own samples as well as from gold and corrupted
rationales: each sampled rationale is labelled true when every object it mentions is in the
scene as described and its conclusion's answer is right (:func:`rationale_is_true`). The same
samples make a self-distillation round (QCRD's use of positive and negative rationales): train
on the model's own rationales and answers, all of them, only those a scorer accepts, or — as an
upper bound that needs the scene graph — only the true ones.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from mmreason.data.grounding import rationale_is_true
from mmreason.data.schema import Record, validate_record
from mmreason.eval.voting import ballot
from mmreason.text.vocabulary import MAX_RECORD_BYTES

log = logging.getLogger(__name__)

FILTERS = ("all", "scorer", "true")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
MAX_IMAGE_BYTES = 64 << 20  # an encoded image larger than this is passed over unread


def candidate_shard_samples(path: str | Path) -> Iterator[tuple[str, bytes, Record]]:
    """(key, original image bytes, record) of each sample of a local shard of candidates, read member by
    member; members larger than a record or an image can be (sizes from the tar header) are passed over
    unread, as are samples without both, and records that do not validate are named in the log."""
    pending: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            limit = MAX_RECORD_BYTES if ext == "json" else MAX_IMAGE_BYTES if ext in IMAGE_EXTENSIONS else -1
            if not member.isfile() or member.size > limit:
                continue
            parts = pending.setdefault(key, {})
            parts[ext] = tar.extractfile(member).read()
            image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
            if "json" in parts and image is not None:
                del pending[key]
                try:
                    yield key, image, validate_record(json.loads(parts["json"]), key)
                except (ValueError, TypeError, UnicodeDecodeError) as error:
                    log.warning("%s: sample %r passed over: %s", path, key, error)


def pixels_image(pixels: torch.Tensor) -> Image.Image:
    """A loader's (S, S, 3) uint8 pixels as the RGB image the model saw."""
    return Image.fromarray(pixels.numpy())


@torch.no_grad()
def candidate_samples(model, batches, k: int, temperature: float, max_new_tokens: int | None = None,
                      scorer=None) -> Iterator[tuple[str, Image.Image, dict]]:
    """(key, image, record) per sample, the record's ``meta["candidates"]`` holding K sampled
    ``{rationale, answer, correct}`` (``correct`` by the scene graph, None without one; ``score`` with a
    scorer). The image is the model's input view, so the record keeps no step boxes (they are in the
    original's pixels); its scene graph and ``meta.image_size`` stay as they were."""
    weights = next(model.parameters())
    model.eval()
    for batch in batches:
        images = model.preprocess.normalize(batch["pixels"].to(weights.device)).to(weights.dtype)
        records = batch["records"]
        samples = model.sample_outputs(images, records, k, temperature, max_new_tokens=max_new_tokens)
        scores = scorer.score(images, records, [s["rationale"] for s in samples]).tolist() if scorer else None
        for i, (key, record) in enumerate(zip(batch["keys"], records)):
            candidates = []
            for j in range(i * k, (i + 1) * k):
                rationale = samples[j]["rationale"]
                candidate = {"rationale": rationale, "answer": ballot(samples[j]["text"], record),
                             "correct": rationale_is_true(rationale, record) if record.meta.get("scene") else None}
                if scores is not None:
                    candidate["score"] = round(scores[j], 4)
                candidates.append(candidate)
            stored = {**record.to_json(), "steps": []}
            stored["meta"] = {**stored["meta"], "candidates": candidates}
            yield key, pixels_image(batch["pixels"][i]), stored


@torch.no_grad()
def score_candidates(scorer, images: torch.Tensor, records: list) -> None:
    """Add (or replace) each candidate's ``score`` by ``scorer`` in ``records`` (``images``: the scorer's
    preprocessed images, one per record)."""
    rows, rationales = [], []
    for i, record in enumerate(records):
        for candidate in record.meta.get("candidates", []):
            rows.append(i)
            rationales.append(candidate["rationale"])
    if not rationales:
        return
    scores = iter(scorer.score(images, records, rationales, rows=rows).tolist())
    for record in records:
        for candidate in record.meta.get("candidates", []):
            candidate["score"] = round(next(scores), 4)


def distillation_records(record: dict, keep: str, threshold: float = 0.5) -> list[dict]:
    """Training records made of a candidate-carrying record's samples: its question with a sample's
    rationale and answer, for every sample ``keep`` lets through (``all``; ``scorer``: score ≥
    ``threshold``; ``true``: correct by the scene graph). Gold answer and rationale are not used."""
    if keep not in FILTERS:
        raise ValueError(f"unknown filter {keep!r}; expected one of {FILTERS}")
    out = []
    for candidate in record["meta"].get("candidates", []):
        if candidate["answer"] is None or not candidate["rationale"]:
            continue
        if keep == "scorer" and candidate.get("score", -1.0) < threshold:
            continue
        if keep == "true" and candidate["correct"] is not True:
            continue
        meta = {k: v for k, v in record["meta"].items() if k != "candidates"}
        out.append({**record, "rationale": candidate["rationale"], "answer": candidate["answer"], "steps": [],
                    "meta": {**meta, "distilled_from": {k: v for k, v in candidate.items() if k != "rationale"}}})
    return out
