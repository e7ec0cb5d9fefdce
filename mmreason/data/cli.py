"""``mmreason data synth|convert|features``: shards from the benchmark or users' files, and with vision features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHOWN_SKIPPED = 20  # skipped records printed; every one is listed in {split}-skipped.jsonl


def add_data_arguments(verbs) -> None:
    p = verbs.add_parser("synth", help="generate the synthetic visual-reasoning benchmark as shards")
    p.add_argument("--out", required=True)
    for split, default in (("train", 30000), ("val", 500), ("test", 1000), ("heldout", 1000)):
        p.add_argument(f"--{split}", type=int, default=default, help=f"{split} samples (default {default})")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--tasks", nargs="+", default=None, help="question types (default: all)")
    p.add_argument("--rationale-style", choices=("short", "long"), default="short")
    p.add_argument("--noise", action="store_true", help="textured/noisy backgrounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples-per-shard", type=int, default=1000)

    p = verbs.add_parser("convert", help="convert llava | jsonl | scienceqa | reasonseg data to shards")
    p.add_argument("format")
    p.add_argument("src", help="the source file (llava, jsonl) or folder (scienceqa, reasonseg)")
    p.add_argument("--images", default=None, help="image folder (default: the source's folder)")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train", help="shard name prefix for single-split formats")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--strict", action="store_true",
                   help="stop at the first record whose image or mask is missing, unreadable or truncated "
                        "(default: skip it and name it in the report and {split}-skipped.jsonl)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a format option, e.g. --option text_only=blank (repeatable)")
    p.add_argument("--tokenizer", default=None, metavar="EXPORT|SPEC",
                   help="report how this tokenizer (an export folder, synth-word, synth-bpe, a tokenizer folder or "
                        "hub id) covers the converted text: unknown-token rate and words, tokens per word")

    p = verbs.add_parser("features", help="copy shards with a frozen vision encoder's features precomputed")
    p.add_argument("--encoder", required=True, help="export folder whose vision encoder computes the features")
    p.add_argument("--data", required=True, help="source shard folder (from `mmreason data synth|convert`)")
    p.add_argument("--out", required=True)
    p.add_argument("--splits", nargs="+", default=None, help="default: train val test heldout")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda when available)")


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--option {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key] = value
    return out


def _coverage(spec: str, shards: list[str]) -> dict:
    """The tokenizer's coverage of the converted records (the 50 most frequent unknown words)."""
    from mmreason.text.tokenizer import build_tokenizer
    from mmreason.text.vocabulary import coverage, record_texts, shard_records

    records = shard_records(shards, limit=100_000)
    report = coverage(build_tokenizer(spec), [t for r in records for t in record_texts(r)])
    return {"spec": spec, "records": len(records), **report, "unknown": dict(list(report["unknown"].items())[:50])}


def run_data_verb(args: argparse.Namespace) -> None:
    if args.data_verb == "synth":
        from mmreason.data.synth import ALL_TASKS, SynthConfig
        from mmreason.data.synth_shards import synthesize

        config = SynthConfig(image_size=args.image_size, tasks=tuple(args.tasks or ALL_TASKS),
                             rationale_style=args.rationale_style, noise=args.noise, seed=args.seed)
        counts = {"train": args.train, "val": args.val, "test": args.test, "heldout": args.heldout}
        report = synthesize(args.out, counts, config, samples_per_shard=args.samples_per_shard)
    elif args.data_verb == "features":
        from mmreason.data.features import write_feature_shards

        splits = {"splits": args.splits} if args.splits else {}
        report = write_feature_shards(args.encoder, args.data, args.out, batch_size=args.batch_size,
                                      device=args.device, **splits)
    else:
        from mmreason.data.convert import ConversionError, convert

        try:
            report = convert(args.format, args.src, args.out, images=args.images, split=args.split,
                             samples_per_shard=args.samples_per_shard, strict=args.strict,
                             **_options(args.option))
        except ConversionError as err:  # the message names the file and record: no traceback needed
            raise SystemExit(f"mmreason data convert: {err}") from err
        if args.tokenizer:
            report["tokenizer"] = _coverage(args.tokenizer, [str(Path(args.out) / s) for s in report["shards"]])
        named = report["skipped_records"]
        if len(named) > SHOWN_SKIPPED:
            more = f"... and {len(named) - SHOWN_SKIPPED} more in {args.out}/*-skipped.jsonl"
            report["skipped_records"] = [*named[:SHOWN_SKIPPED], more]
    print(json.dumps(report, indent=1, default=str))
