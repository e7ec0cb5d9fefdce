"""How well a rationale scorer ranks right rationales above wrong ones, as AUROC on held-out records.

Two separations, reported apart because they are different tasks: the gold rationale against the
corrupted ones made from it (every corruption kind that applies, one each, as training makes them:
:mod:`mmreason.models.scorer_processor`), also per kind and per task; and, where the records carry them, a
model's own sampled rationales (``meta["candidates"]``, labelled right or wrong by the scene graph),
the ranking a reader choosing among its samples needs. Each AUROC comes with its Hanley–McNeil
standard error and its counts; one with a class missing is None. Corruptions are drawn from each
sample's key, so a report is reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tqdm import tqdm

from mmreason.data.shards import eval_stream, resolve_shards
from mmreason.eval.auroc import auroc_report
from mmreason.export import load_export
from mmreason.models.scorer_processor import candidates_of, corrupt, corruption_kinds

GOLD = "gold"
CANDIDATE = {True: "right", False: "wrong"}  # what a sampled candidate is scored as


def separation(right: list[float], wrong: list[float]) -> dict:
    """AUROC of scores of right (positive) against wrong (negative) rationales, its standard error and counts."""
    return auroc_report([*right, *wrong], [True] * len(right) + [False] * len(wrong))


def _pairs(key: str, record) -> list[tuple[str, str]]:
    """(what, rationale) of one record: gold, each corruption kind, candidates as ``right``/``wrong``."""
    rng, out = random.Random(key), []
    if record.rationale:
        out.append((GOLD, record.rationale))
        out += [(kind, text) for kind in corruption_kinds(record) if (text := corrupt(record, kind, rng)) is not None]
    out += [(CANDIDATE[ok], text) for text, ok in candidates_of(record)]
    return out


def _gold_vs_corrupted(scored: list[tuple[str, str, float]]) -> dict:
    """The separation of gold from corrupted rationales, overall, per corruption kind and per task."""
    gold = [(task, score) for kind, task, score in scored if kind == GOLD]
    wrong = [(kind, task, score) for kind, task, score in scored if kind != GOLD]
    return {**separation([s for _, s in gold], [s for _, _, s in wrong]),
            "per_kind": {kind: separation([s for _, s in gold], [s for k, _, s in wrong if k == kind])
                         for kind in sorted({k for k, _, _ in wrong})},
            "per_task": {task: separation([s for t, s in gold if t == task], [s for _, t, s in wrong if t == task])
                         for task in sorted({t for t, _ in gold})}}


def evaluate_scorer(scorer, urls: list[str], limit: int | None = None, batch_size: int = 64) -> dict:
    """Score every record of ``urls`` (the first ``limit``): ``gold_vs_corrupted`` (with ``per_kind`` and
    ``per_task``), ``candidates`` (None when no record carries any), ``records`` read and ``skipped_pairs``
    (over the scorer's max_length, left out)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of records, got {limit}")
    stream, total = eval_stream(urls, scorer.preprocess, batch_size)
    stream.max_samples = limit
    scored: list[tuple[str, str, float]] = []  # (gold, a corruption kind, right or wrong; the task; the score)
    records = skipped = 0
    weights = next(scorer.parameters())
    with tqdm(total=min(filter(None, (total, limit)), default=None), desc="score", unit="record") as bar:
        for batch in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0):
            kinds, texts, rows = [], [], []
            for i, (key, record) in enumerate(zip(batch["keys"], batch["records"], strict=True)):
                pairs = _pairs(key, record)
                encoded = scorer.processor.encode([record] * len(pairs), [text for _, text in pairs])
                fitting = [pair for pair, (ids, _) in zip(pairs, encoded) if scorer.processor.fits(ids)]
                skipped += len(pairs) - len(fitting)
                kinds += [(kind, record.task) for kind, _ in fitting]
                texts += [text for _, text in fitting]
                rows += [i] * len(fitting)
            images = scorer.preprocess.normalize(batch["pixels"].to(weights.device))
            scores = scorer.score(images, batch["records"], texts, rows).tolist()
            scored += [(kind, task, score) for (kind, task), score in zip(kinds, scores)]
            records += len(batch["records"])
            bar.update(len(batch["records"]))
    right, wrong = ([score for kind, _, score in scored if kind == CANDIDATE[ok]] for ok in (True, False))
    return {"records": records, "skipped_pairs": skipped,
            "gold_vs_corrupted": _gold_vs_corrupted([e for e in scored if e[0] not in CANDIDATE.values()]),
            "candidates": separation(right, wrong) if right or wrong else None}


def format_report(report: dict) -> str:
    """The report's AUROCs as lines for people."""

    def line(name: str, entry: dict) -> str:
        area = "n/a" if entry["auroc"] is None else f"{entry['auroc']:.3f} ± {entry['se']:.3f}"
        return f"{name}: AUROC {area} ({entry['positives']} right, {entry['negatives']} wrong)"

    summary = report["gold_vs_corrupted"]
    lines = [f"{report['records']} records, {report['skipped_pairs']} pair(s) over max_length left out",
             line("gold vs corrupted", summary)]
    lines += [line(f"  gold vs {kind}", entry) for kind, entry in summary["per_kind"].items()]
    lines += [line(f"  {task}", entry) for task, entry in summary["per_task"].items()]
    if report["candidates"] is not None:
        lines.append(line("sampled candidates", report["candidates"]))
    return "\n".join(lines)


def load_scorer(folder: str, device: str = "cpu", dtype: str | None = None):
    """A rationale scorer export, or an error saying that ``folder`` holds another kind of model."""
    model = load_export(folder, device, dtype)
    if model.family != "scorer":
        raise ValueError(f"{folder} holds a {model.family!r} model, but a rationale scorer export is expected "
                         "(family 'scorer'; train one with recipes/scorer/synth-tiny.yaml)")
    return model


def score_command(args) -> dict:
    """The ``score`` verb: evaluate a scorer export on shards, print the AUROCs, optionally write JSON."""
    scorer = load_scorer(args.model, args.device, args.dtype)
    urls = resolve_shards(args.data, args.split)
    report = evaluate_scorer(scorer, urls, args.limit, args.batch_size)
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "data": urls, **report}, indent=1))
    return report
