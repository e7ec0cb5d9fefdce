"""Sampled rationales as data: candidates labelled by the scene graph, and self-distillation sets.

A rationale scorer learns from a model's own samples as well as from gold and corrupted
rationales: each sampled rationale is labelled true when every object it mentions is in the
scene as described and its conclusion's answer is right (:func:`rationale_is_true`). The same
samples make a self-distillation round (QCRD's use of positive and negative rationales): train
on the model's own rationales and answers, all of them, only those a scorer accepts, or — as an
upper bound that needs the scene graph — only the true ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from PIL import Image

from mmreason.diagnostics.faithfulness import read_answer
from mmreason.diagnostics.grounding import rationale_is_true

FILTERS = ("all", "scorer", "true")


def pixels_image(pixels: torch.Tensor) -> Image.Image:
    """A loader's (S, S, 3) uint8 pixels as the RGB image the model saw."""
    return Image.fromarray(pixels.numpy())


@torch.no_grad()
def candidate_samples(model, batches, k: int, temperature: float, max_new_tokens: int | None = None,
                      scorer=None) -> Iterator[tuple[str, Image.Image, dict]]:
    """(key, image, record) per sample, the record's ``meta["candidates"]`` holding K sampled
    ``{rationale, answer, correct}`` (and ``score`` with a scorer)."""
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
                candidate = {"rationale": rationale, "answer": read_answer(samples[j]["text"], record),
                             "correct": bool(record.meta.get("scene")) and rationale_is_true(rationale, record)}
                if scores is not None:
                    candidate["score"] = round(scores[j], 4)
                candidates.append(candidate)
            stored = record.to_json()
            stored["meta"] = {**stored["meta"], "candidates": candidates}
            yield key, pixels_image(batch["pixels"][i]), stored


@torch.no_grad()
def score_candidates(scorer, batch: dict) -> None:
    """Add (or replace) each candidate's ``score`` by ``scorer``, in the batch's records (loader batch)."""
    rows, rationales = [], []
    for i, record in enumerate(batch["records"]):
        for candidate in record.meta.get("candidates", []):
            rows.append(i)
            rationales.append(candidate["rationale"])
    if not rationales:
        return
    images = scorer.preprocess.normalize(batch["pixels"])
    scores = iter(scorer.score(images, batch["records"], rationales, rows=rows).tolist())
    for record in batch["records"]:
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
        if keep == "true" and not candidate["correct"]:
            continue
        meta = {k: v for k, v in record["meta"].items() if k != "candidates"}
        out.append({**record, "rationale": candidate["rationale"], "answer": candidate["answer"], "steps": [],
                    "meta": {**meta, "distilled_from": {k: v for k, v in candidate.items() if k != "rationale"}}})
    return out
