"""Inference verbs without a Trainer: ``predict`` one image, ``eval`` an export on shards.

Families that run a pipeline (rationale, then answer) expose ``run``; for them
``eval`` also scores the rationales (BLEU/ROUGE-L) and takes the pipeline's
options: inference voting and where the answer stage's rationale comes from.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from mmreason.data.scene_targets import scenes_of
from mmreason.data.shards import SKIPPED, eval_stream, resolve_shards
from mmreason.eval.accuracy import AccuracyReport, format_table, majority_baseline
from mmreason.eval.crops import CropReport
from mmreason.eval.perception import PerceptionReport, scaled_scene
from mmreason.eval.rationale import RationaleReport
from mmreason.eval.segmentation import SegmentationReport, score_segments, with_text_answers
from mmreason.export import load_export
from mmreason.models.base import ANSWERS, CROPS, PERCEIVES, PIPELINE, SEGMENTS
from mmreason.models.star import strip_seg
from mmreason.overlay import draw_crops, draw_mask

log = logging.getLogger(__name__)


class NothingScored(ValueError):
    """An evaluation read no usable sample."""


def _eval_batches(urls: list[str], preprocess, batch_size: int, limit: int | None, skipped: Counter,
                  unit: str = "sample"):
    """The batches of ``urls`` (capped at ``limit`` samples) in this process, so every skipped
    sample — even after the last batch — is tallied by reason into ``skipped``."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of samples, got {limit}")
    stream, total = eval_stream(urls, preprocess, batch_size)
    if limit is not None:
        stream.max_samples = limit
        total = min(limit, total) if total else limit
    SKIPPED.take(), SKIPPED.take_kinds()
    with tqdm(total=total, desc="eval", unit=unit) as bar:
        for batch in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0):
            skipped.update(batch["skip_kinds"])
            yield batch
            bar.update(len(batch["pixels"]))
    SKIPPED.take()
    skipped.update(SKIPPED.take_kinds())


def _skip_summary(skipped: Counter, scored: int, urls: list[str]) -> tuple[dict, str]:
    """The report's ``skipped`` entry and table line; an error when nothing could be scored."""
    count = sum(skipped.values())
    reasons = ", ".join(f"{kind}: {n}" for kind, n in skipped.most_common())
    if scored == 0:
        raise NothingScored(f"no sample could be scored from {len(urls)} shard(s) ({urls[0]}, ...): "
                            f"{count} skipped" + (f" ({reasons})" if reasons else "; the shards hold no samples"))
    line = f"skipped: {count} sample(s)" + (f" ({reasons})" if reasons else "")
    return {"count": count, "reasons": dict(skipped)}, line


def evaluate(model, urls: list[str], batch_size: int = 64, max_new_tokens: int = 160,
             limit: int | None = None, **pipeline_options) -> dict:
    """Greedy answers for every sample of ``urls``: the accuracy report with the majority baseline;
    for pipeline families the rationale scores and the mean vote share (``pipeline_options`` go to
    their ``run``: ``votes``, ``temperature``, ``rationale_source``); for segmentation families
    gIoU/cIoU per question type (``samples``, ``temperature``: test-time scaling); for crop
    policies the crop IoU and action shares."""
    if model.can(PERCEIVES):
        if pipeline_options:
            raise ValueError(f"{sorted(pipeline_options)} do not apply to a {model.family!r} model")
        return evaluate_perception(model, urls, batch_size, limit)
    pipeline, segmenter = model.can(PIPELINE), model.can(SEGMENTS)
    segment_options = {k: pipeline_options.pop(k) for k in ("samples", "temperature")
                       if segmenter and k in pipeline_options}
    if pipeline_options and not pipeline:
        raise ValueError(f"{sorted(pipeline_options)} apply to pipeline families (e.g. mccot; --samples to "
                         f"segmentation families), not to a {model.family!r} model")
    report, rationale_report, records, confidences = AccuracyReport(), RationaleReport(), [], []
    crops = CropReport() if model.can(CROPS) else None  # a crop-action policy: where it looked
    segments, skipped, scored = SegmentationReport(), Counter(), 0
    device = next(model.parameters()).device
    for batch in _eval_batches(urls, model.preprocess, batch_size, limit, skipped):
        images = model.preprocess.normalize(batch["pixels"].to(device))
        if pipeline:
            results = model.run(images, batch["records"], max_new_tokens=max_new_tokens, **pipeline_options)
            texts = [r["text"] for r in results]
            if pipeline_options.get("votes", 1) > 1:
                confidences += [r["confidence"] for r in results]
            if pipeline_options.get("rationale_source", "generated") != "gold" and results[0]["rationale"] is not None:
                rationale_report.add_many([r["rationale"] for r in results],
                                          [r.rationale for r in batch["records"]])
        elif segmenter:
            results = model.segment(images, batch["records"], max_new_tokens=max_new_tokens, **segment_options)
            score_segments(segments, results, batch)
            texts, batch["records"] = with_text_answers([strip_seg(r["text"]) for r in results], batch["records"])
        else:
            texts = model.answer_batch(images, batch["records"], max_new_tokens=max_new_tokens)
        if crops is not None:
            crops.add_many(texts, batch["records"], model.preprocess.image_size)
        if model.can(ANSWERS):  # a rationale-only stage has nothing to score
            report.add_many(texts, batch["records"])
        records += batch["records"]
        scored += len(batch["pixels"])
    skip_report, skip_line = _skip_summary(skipped, scored, urls)
    baseline = majority_baseline(records)
    out = {"report": report.to_dict(baseline) | {"skipped": skip_report},
           "table": format_table(report, baseline) + "\n\n" + skip_line}
    if rationale_report.predictions:
        out["report"]["rationale"] = rationale_report.to_dict()
        scores = out["report"]["rationale"]
        out["table"] += (f"\n\nrationale: BLEU-1 {scores['bleu1']:.1f}, BLEU-4 {scores['bleu4']:.1f}, "
                         f"ROUGE-L {scores['rougeL']:.3f} (n={scores['n']})")
    if confidences:
        out["report"]["mean_confidence"] = sum(confidences) / len(confidences)
    if segments.n:
        out["report"]["segmentation"] = summary = segments.to_dict()
        out["table"] += (f"\n\nsegmentation (n={summary['n']}): gIoU {summary['giou']:.4f}, cIoU {summary['ciou']:.4f}; "
                         + ", ".join(f"{g} {v['giou']:.3f}" for g, v in summary["per_group"].items()))
    if crops is not None:
        out["report"]["crops"] = summary = crops.to_dict()
        out["table"] += "\n\ncrops: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if v is not None)
    return out


def evaluate_perception(model, urls: list[str], batch_size: int = 64, limit: int | None = None) -> dict:
    """The objects a vision encoder sees in each image of ``urls``, scored against the scene graphs
    in the records' ``meta`` (synthetic shards): per-object attributes, counts, localisation."""
    report, skipped, images = PerceptionReport(), Counter(), 0
    device = next(model.parameters()).device
    for batch in _eval_batches(urls, model.preprocess, batch_size, limit, skipped, unit="image"):
        scenes, size = scenes_of(batch)
        seen = model.perceive(model.preprocess.normalize(batch["pixels"].to(device)))
        for objects, scene in zip(seen, scenes):
            report.add(objects, scaled_scene(scene, model.preprocess.image_size / size))
        images += len(scenes)
    skip_report, skip_line = _skip_summary(skipped, images, urls)
    return {"report": {"perception": report.to_dict(), "skipped": skip_report},
            "table": report.table() + "\n\n" + skip_line}


def eval_command(args) -> None:
    model = load_export(args.model)
    urls = resolve_shards(args.data, args.split)
    result = evaluate(model, urls, args.batch_size, args.max_new_tokens, args.limit, **_pipeline_options(args))
    print(result["table"])
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "data": urls, **result["report"]}, indent=1))
        log.info("report written to %s", args.out)


def predict_command(args) -> None:
    model = load_export(args.model)
    out = model.predict(args.image, args.question, choices=args.choices, max_new_tokens=args.max_new_tokens,
                        **_pipeline_options(args))
    if args.out:
        picture = model.preprocess.open_rgb(args.image)
        if "crops" in out:
            draw_crops(picture, out["crops"], out["input_size"], args.out)
        elif "mask" in out:
            draw_mask(picture, out.pop("mask"), args.out)
        else:
            raise SystemExit(f"--out draws what a model found; a {model.family!r} model reports nothing to draw")
    out.pop("mask", None)  # a tensor: the overlay shows it
    if args.json:
        print(json.dumps(out))
    else:
        if out["rationale"] is not None:
            print(f"rationale: {out['rationale']}")
        for i, box in enumerate(out.get("crops", []), 1):
            print(f"crop {i}: {box}")
        print(f"answer: {out['answer']}")
        if args.out:
            print(f"overlay: {args.out}")
        if out.get("confidence") is not None and args.votes > 1:
            print(f"confidence: {out['confidence']:.2f} ({args.votes} votes: {out['votes']})")


def _pipeline_options(args) -> dict:
    """The pipeline options the user set (left out when at their defaults, so other families accept them)."""
    options = {}
    if args.votes != 1:
        options.update(votes=args.votes, temperature=args.temperature)
    if args.samples != 1:
        options.update(samples=args.samples, temperature=args.temperature)
    if args.rationales != "generated":
        options["rationale_source"] = args.rationales
    return options
