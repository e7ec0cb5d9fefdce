"""Sample a model's rationales into shards (for a rationale scorer), or make a self-distillation set of them.

    python tools/rationale_candidates.py sample --model runs/baseline-synth-tiny-cot/export \
        --data data/synth-basic --split train --limit 4000 --samples 4 --out data/candidates [--scorer S]
    python tools/rationale_candidates.py distill --data data/candidates --split train \
        --keep scorer --scorer runs/scorer-synth-tiny/export --threshold 0.5 --out data/distill-scorer

``sample`` writes ``{split}-*.tar`` shards whose records carry ``meta.candidates``: K sampled
``{rationale, answer, correct}`` (``correct`` by the scene graph; ``score`` with ``--scorer``).
``distill`` turns them into training shards: one record per kept sample, holding the sample's
rationale and answer in place of the gold ones (``--keep all | scorer | true``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
from tqdm import tqdm

from mmreason.data.shards import resolve_shards
from mmreason.data.writer import ShardSetWriter
from mmreason.diagnostics.candidates import (
    FILTERS,
    candidate_samples,
    candidate_shard_samples,
    distillation_records,
    score_candidates,
)
from mmreason.diagnostics.scorer_eval import load_scorer
from mmreason.export import load_export
from mmreason.inference import eval_batches


def sample(args) -> dict:
    model = load_export(args.model)
    scorer = load_scorer(args.scorer) if args.scorer else None
    torch.manual_seed(args.seed)
    skipped, counts = Counter(), Counter()
    batches = eval_batches(resolve_shards(args.data, args.split), model.preprocess, args.batch_size, args.limit,
                           skipped)
    with ShardSetWriter(args.out, args.split, samples_per_shard=1000) as writer:
        for key, image, record in candidate_samples(model, batches, args.samples, args.temperature,
                                                    args.max_new_tokens, scorer):
            writer.write(key, image, record)
            counts["records"] += 1
            counts["candidates"] += len(record["meta"]["candidates"])
            counts["true"] += sum(c["correct"] for c in record["meta"]["candidates"])
    return {**counts, "skipped": dict(skipped)}


def _batches(urls: list[str], size: int = 64):
    """Lists of (key, original image bytes, record) from local candidate shards, ``size`` at a time."""
    batch = []
    for url in urls:
        for sample in candidate_shard_samples(url):
            batch.append(sample)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def distill(args) -> dict:
    scorer = load_scorer(args.scorer) if args.scorer else None
    if args.keep == "scorer" and scorer is None:
        raise SystemExit("--keep scorer needs --scorer SCORER_EXPORT to score the candidates")
    counts = Counter()
    with ShardSetWriter(args.out, args.split, samples_per_shard=1000) as writer:
        for batch in tqdm(_batches(resolve_shards(args.data, args.split)), desc="distill", unit="batch"):
            records = [record for *_, record in batch]
            if scorer is not None:
                images = torch.stack([scorer.preprocess(image) for _, image, _ in batch])
                score_candidates(scorer, images, records)
            for key, image, record in batch:
                counts["records"] += 1
                for j, kept in enumerate(distillation_records(record.to_json(), args.keep, args.threshold)):
                    writer.write(f"{key}-{j}", image, kept)
                    counts["kept"] += 1
                    counts["kept_true"] += kept["meta"]["distilled_from"]["correct"] is True
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("sample")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scorer", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = verbs.add_parser("distill")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--keep", choices=FILTERS, default="all")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--scorer", default=None, help="score the candidates with this scorer (needed by --keep scorer)")
    p.add_argument("--out", required=True)
    args = parser.parse_args()
    print(json.dumps(sample(args) if args.verb == "sample" else distill(args)))


if __name__ == "__main__":
    main()
