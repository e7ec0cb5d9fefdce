"""Inference verbs without a Trainer: ``predict`` one image, ``eval`` an export on shards.

``eval`` scores what a model's ``respond`` returns with the evaluators its
declared capabilities call for, the same ones validation uses in training
(:mod:`mmreason.eval.evaluators`); a family's options (inference voting, the
answer stage's rationale source, test-time scaling) pass through to it. With
``--predictions`` it also lists every sample with what each evaluator scored of
it, so a report's numbers can be traced to the samples behind them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from mmreason.data.shards import SKIPPED, eval_stream, resolve_shards
from mmreason.eval.evaluators import evaluators_for
from mmreason.export import load_export
from mmreason.overlay import draw_prediction

log = logging.getLogger(__name__)

FIRST_FIELDS = ("text", "answer", "rationale")  # what a listed response shows before a family's extras


class NothingScored(ValueError):
    """An evaluation read no usable sample."""


def eval_batches(urls: list[str], preprocess, batch_size: int, limit: int | None, skipped: Counter,
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


def check_response_options(model, options: dict) -> None:
    """Refuse options the model's ``respond`` does not take, naming the ones it does."""
    unknown = sorted(set(options) - set(model.response_options))
    if unknown:
        raise ValueError(f"{unknown} do not apply to a {model.family!r} model; its options: "
                         f"{list(model.response_options) or 'none'}")


@contextmanager
def jsonl_writer(path: str | Path) -> Iterator:
    """A function writing one object as a JSON line into a temporary file beside ``path``, renamed over
    ``path`` only when the block ends without error: a crash never leaves a half-written file, and
    keeps the one a previous run wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as stream:
            yield lambda obj: stream.write(json.dumps(obj) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def in_reading_order(described: dict) -> dict:
    """A described response with the fields every family gives first, then the family's own."""
    return {**{k: described[k] for k in FIRST_FIELDS if k in described}, **described}


def _sample_lines(model, responses: list[dict], batch: dict, outcomes: list) -> Iterator[dict]:
    """One ``--predictions`` line per sample: its question and gold answer, the response as ``predict``
    describes it (masks left out: their IoU is the score) and what each evaluator scored of it."""
    for i, (response, record) in enumerate(zip(responses, batch["records"], strict=True)):
        line = {"key": batch["keys"][i], "question": record.question, "choices": record.choices,
                "gold": record.answer}
        line.update((k, v) for k, v in in_reading_order(model.describe(response)).items() if k != "mask")
        for scored in outcomes:
            if scored and scored[i]:
                line.update(scored[i])
        yield line


def evaluate(model, urls: list[str], batch_size: int = 64, max_new_tokens: int = 160,
             limit: int | None = None, predictions: str | Path | None = None, **options) -> dict:
    """Greedy responses for every sample of ``urls``, scored by the evaluators the model's capabilities
    call for (:func:`~mmreason.eval.evaluators.evaluators_for`): answer accuracy with the majority
    baseline, rationale scores, crops, masks or perception. ``options`` go to the model's ``respond``
    (its ``response_options``: e.g. ``votes``, ``rationale_source`` for a pipeline, ``samples`` for
    test-time scaling of masks). ``predictions``: a JSONL file to list every sample in, in order, with
    its parsed answer, correctness, mask IoU or crop IoU."""
    check_response_options(model, options)
    evaluators = evaluators_for(model, options.get("rationale_source", "generated"))
    skipped, scored = Counter(), 0
    weights = next(model.parameters())
    unit = "sample" if evaluators and evaluators[0].key is None else "image"
    with jsonl_writer(predictions) if predictions else nullcontext() as write:
        for batch in eval_batches(urls, model.preprocess, batch_size, limit, skipped, unit):
            images = model.preprocess.normalize(batch["pixels"].to(weights.device)).to(weights.dtype)
            responses = model.respond(images, batch["records"], max_new_tokens=max_new_tokens, **options)
            outcomes = [evaluator.add(responses, batch) for evaluator in evaluators]
            if write:
                for line in _sample_lines(model, responses, batch, outcomes):
                    write(line)
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
    result = evaluate(model, urls, args.batch_size, args.max_new_tokens, args.limit, args.predictions,
                      **pipeline_options(args))
    print(result["table"])
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "data": urls, **result["report"]}, indent=1))
        log.info("report written to %s", args.out)
    if args.predictions:
        log.info("per-sample predictions written to %s", args.predictions)


def predict_command(args) -> None:
    if args.image is None or args.question is None:
        raise SystemExit("predict needs --image and --question, or --inputs for many images")
    model = load_export(args.model, args.device, args.dtype, args.adapters)
    out = model.predict(args.image, args.question, choices=args.choices, max_new_tokens=args.max_new_tokens,
                        **pipeline_options(args))
    if args.out:
        picture = model.preprocess.open_rgb(args.image)
        if "crops" not in out and "mask" not in out:
            raise SystemExit(f"--out draws what a model found; a {model.family!r} model reports nothing to draw")
        draw_prediction(picture, args.question, out, args.out)
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


def pipeline_options(args) -> dict:
    """The pipeline options the user set (left out when at their defaults, so other families accept them)."""
    options = {}
    if args.votes != 1:
        options.update(votes=args.votes, temperature=args.temperature)
    if args.rerank:
        from mmreason.diagnostics.scorer_eval import load_scorer

        options["rerank"] = load_scorer(args.rerank, args.device, args.dtype)
    if args.stop_entropy is not None:
        options["stop_entropy"] = args.stop_entropy
    if args.samples != 1:
        options.update(samples=args.samples, temperature=args.temperature)
    if args.rationales != "generated":
        options["rationale_source"] = args.rationales
    return options
