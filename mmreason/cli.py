"""The ``mmreason`` command: one verb per job a user has."""

from __future__ import annotations

import argparse
import json
import logging
import sys

DTYPE_CHOICES = ("bf16", "fp16", "fp32", "bfloat16", "float16", "float32")  # mmreason.export's names

LIGHTNING_VERBS = {
    "fit": "train from a recipe (-c RECIPE; --ckpt_path last resumes)",
    "validate": "validate a checkpoint (-c RECIPE --ckpt_path CKPT)",
    "test": "test a checkpoint (-c RECIPE --ckpt_path CKPT)",
}


def _load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1, …)")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="the precision to run in (default: float32, whatever the export stores)")
    p.add_argument("--adapters", default=None, help="a folder of LoRA adapters trained on --model (lora.save: adapters)")


def _pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """Options of families that sample several answers: pipelines (mccot) and segmentation (star)."""
    p.add_argument("--votes", type=int, default=1,
                   help="sample this many rationales, answer each, majority-vote (pipeline families)")
    p.add_argument("--samples", type=int, default=1,
                   help="segmentation: sample this many answers and aggregate their masks (test-time scaling)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature with --votes or --samples > 1")
    p.add_argument("--rationales", default="generated", choices=("generated", "teacher_forced", "gold"),
                   help="what the answer stage reads: generated (default), upstream's teacher-forced argmax, "
                        "or the gold rationale (eval only)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmreason", description="Multimodal reasoning model zoo.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, text in LIGHTNING_VERBS.items():
        verbs.add_parser(verb, help=text, add_help=False)

    p = verbs.add_parser("predict", help="answer a question about an image with an export folder")
    p.add_argument("--model", required=True, help="export folder")
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--choices", nargs="+", default=None, help="options of a multiple-choice question")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None,
                   help="save a PNG of what the model found: a crop policy's boxes, a segmentation's mask")
    _load_arguments(p)
    _pipeline_arguments(p)

    p = verbs.add_parser("eval", help="score an export folder on shards, per task")
    p.add_argument("--model", required=True, help="export folder")
    p.add_argument("--data", required=True, nargs="+", help="shard pattern(s) or a folder")
    p.add_argument("--split", default="test", help="with a folder: which split's shards (default: test)")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--limit", type=int, default=None, help="score only the first N samples")
    _load_arguments(p)
    _pipeline_arguments(p)

    p = verbs.add_parser("export", help="write an export folder from a training checkpoint (.ckpt)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="precision of the stored weights (default: the checkpoint's, float32)")

    p = verbs.add_parser("convert", help="turn a released checkpoint (folder or hub id) into an export folder")
    p.add_argument("format", help="the checkpoint's layout: llava-hf, llava, lisa, meteor, mmcot, sam")
    p.add_argument("src", help="a folder, or a hub id (downloaded when the network allows)")
    p.add_argument("--out", required=True, help="the export folder to write")
    p.add_argument("--vision", default=None, help="llava, lisa: the CLIP checkpoint (default: the config's vision tower); "
                   "mmcot: a local weights file of timm's vit_large_patch32_384 (default: timm downloads it)")
    p.add_argument("--answer", default=None, help="mmcot: the answer model (SRC is the rationale model)")
    p.add_argument("--into", default=None, help="sam: the segmentation export whose decoder takes SAM's weights")
    p.add_argument("--mamba", default=None, help="meteor: Meteor-Mamba's folder or hub id (default: BK-Lee/Meteor-Mamba)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="precision of the stored weights "
                   "(default: float32; bf16 halves a 7B export to about 14 GB)")

    p = verbs.add_parser("vocab", help="how an export's tokenizer covers a data set; grow a word-level vocabulary")
    p.add_argument("model", help="the export folder")
    p.add_argument("--data", required=True, help="shards: a folder of {split}-*.tar, a pattern or a file")
    p.add_argument("--split", default="train", help="the split of a data folder (default: train)")
    p.add_argument("--limit", type=int, default=100_000, help="records to read at most")
    p.add_argument("--extend", default=None, metavar="NEW_EXPORT",
                   help="write a copy of the export whose tokenizer also knows the unknown words")

    p = verbs.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*")

    p = verbs.add_parser("data", help="make shards: synthetic benchmark or your data")
    data = p.add_subparsers(dest="data_verb", metavar="DATA_VERB", required=True)
    from mmreason.data.cli import add_data_arguments

    add_data_arguments(data)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in LIGHTNING_VERBS:
        from mmreason.training.cli import run_lightning_cli

        run_lightning_cli(argv)
        return
    args = _parser().parse_args(argv)
    if args.verb is None:
        _parser().print_help()
        return
    if args.verb == "data":
        from mmreason.data.cli import run_data_verb

        run_data_verb(args)
    elif args.verb == "list":
        from mmreason.zoo import list_models, model_info

        for name in list_models(args.pattern):
            print(f"{name:28s} {model_info(name)['description']}")
    elif args.verb == "predict":
        from mmreason.inference import predict_command

        predict_command(args)
    elif args.verb == "eval":
        from mmreason.inference import eval_command

        eval_command(args)
    elif args.verb == "convert":
        from mmreason.checkpoints import convert

        options = {k: getattr(args, k) for k in ("vision", "answer", "into", "mamba") if getattr(args, k)}
        print(json.dumps({"export": str(convert(args.format, args.src, args.out, args.dtype, **options))}))
    elif args.verb == "vocab":
        from mmreason.text.vocabulary import vocab_command

        print(json.dumps(vocab_command(args), indent=1))
    elif args.verb == "export":
        from mmreason.training.checkpoint import export_checkpoint

        export_checkpoint(args.ckpt, args.out, args.dtype)
        print(json.dumps({"export": args.out}))
