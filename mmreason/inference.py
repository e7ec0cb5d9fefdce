"""Inference verbs without a Trainer: ``predict`` one image, ``eval`` an export on shards.

``eval`` scores what a model's ``respond`` returns with the evaluators its
declared capabilities call for, the same ones validation uses in training
(:mod:`mmreason.eval.evaluators`); a family's options (inference voting, the
answer stage's rationale source, test-time scaling) pass through to it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from mmreason.data.shards import SKIPPED, eval_stream, resolve_shards
from mmreason.eval.evaluators import evaluators_for
from mmreason.export import load_export
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
             limit: int | None = None, **options) -> dict:
    """Greedy responses for every sample of ``urls``, scored by the evaluators the model's capabilities
    call for (:func:`~mmreason.eval.evaluators.evaluators_for`): answer accuracy with the majority
    baseline, rationale scores, crops, masks or perception. ``options`` go to the model's ``respond``
    (its ``response_options``: e.g. ``votes``, ``rationale_source`` for a pipeline, ``samples`` for
    test-time scaling of masks)."""
    unknown = sorted(set(options) - set(model.response_options))
    if unknown:
        raise ValueError(f"{unknown} do not apply to a {model.family!r} model; its options: "
                         f"{list(model.response_options) or 'none'}")
    evaluators = evaluators_for(model, options.get("rationale_source", "generated"))
    skipped, scored = Counter(), 0
    weights = next(model.parameters())
    unit = "sample" if evaluators and evaluators[0].key is None else "image"
    for batch in _eval_batches(urls, model.preprocess, batch_size, limit, skipped, unit):
        images = model.preprocess.normalize(batch["pixels"].to(weights.device)).to(weights.dtype)
        responses = model.respond(images, batch["records"], max_new_tokens=max_new_tokens, **options)
        for evaluator in evaluators:
            evaluator.add(responses, batch)
        scored += len(batch["pixels"])
    skip_report, skip_line = _skip_summary(skipped, scored, urls)
    report, tables = {}, []
    for evaluator in evaluators:
        if evaluator.key is None:
            report.update(evaluator.report())
        else:
            report[evaluator.key] = evaluator.report()
        tables.append(evaluator.table())
    tables.insert(1, skip_line)
    return {"report": report | {"skipped": skip_report}, "table": "\n\n".join(tables)}


def eval_command(args) -> None:
    model = load_export(args.model, args.device, args.dtype, args.adapters)
    urls = resolve_shards(args.data, args.split)
    result = evaluate(model, urls, args.batch_size, args.max_new_tokens, args.limit, **_pipeline_options(args))
    print(result["table"])
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "data": urls, **result["report"]}, indent=1))
        log.info("report written to %s", args.out)


def predict_command(args) -> None:
    model = load_export(args.model, args.device, args.dtype, args.adapters)
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
