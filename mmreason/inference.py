"""Inference verbs without a Trainer: ``predict`` one image, ``eval`` an export on shards."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from mmreason.data.shards import eval_stream, resolve_shards
from mmreason.eval.accuracy import AccuracyReport, format_table, majority_baseline
from mmreason.export import load_export

log = logging.getLogger(__name__)


def evaluate(model, urls: list[str], batch_size: int = 64, max_new_tokens: int = 160,
             limit: int | None = None) -> dict:
    """Greedy answers for every sample of ``urls``: the accuracy report with the majority baseline."""
    stream, total = eval_stream(urls, model.preprocess, batch_size)
    if limit is not None:
        stream.max_samples = limit
        total = min(limit, total) if total else limit
    report, records = AccuracyReport(), []
    device = next(model.parameters()).device
    with tqdm(total=total, desc="eval", unit="sample") as bar:
        for batch in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1):
            images = model.preprocess.normalize(batch["pixels"].to(device))
            texts = model.answer_batch(images, batch["records"], max_new_tokens=max_new_tokens)
            report.add_many(texts, batch["records"])
            records += batch["records"]
            bar.update(len(texts))
    baseline = majority_baseline(records)
    return {"report": report.to_dict(baseline), "table": format_table(report, baseline)}


def eval_command(args) -> None:
    model = load_export(args.model)
    urls = resolve_shards(args.data, args.split)
    result = evaluate(model, urls, args.batch_size, args.max_new_tokens, args.limit)
    print(result["table"])
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "data": urls, **result["report"]}, indent=1))
        log.info("report written to %s", args.out)


def predict_command(args) -> None:
    model = load_export(args.model)
    out = model.predict(args.image, args.question, choices=args.choices, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(out))
    else:
        if out["rationale"]:
            print(f"rationale: {out['rationale']}")
        print(f"answer: {out['answer']}")
