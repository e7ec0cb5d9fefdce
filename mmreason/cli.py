"""The ``mmreason`` command: one verb per job a user has."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

DTYPE_CHOICES = ("bf16", "fp16", "fp32", "bfloat16", "float16", "float32")  # mmreason.export's names

LIGHTNING_VERBS = {
    "fit": "train from a recipe (-c RECIPE; --ckpt_path last resumes)",
    "validate": "validate a checkpoint (-c RECIPE --ckpt_path CKPT)",
    "test": "test a checkpoint (-c RECIPE --ckpt_path CKPT)",
}
DEBUG_FLAG, DEBUG_ENV = "--debug", "MMREASON_DEBUG"  # the flag sets the variable, so DDP's worker processes see it
USER_ERROR = 2  # the exit status of a mistake in the command line, a file or a recipe (argparse's too)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Warnings and log lines nobody running the command can act on (a message's start, as `warnings` matches it)
NOISE = (
    "LightningCLI's args parameter is intended",  # our command hands LightningCLI its arguments on purpose
    "Your `IterableDataset` has `__len__` defined",  # the shard stream's length is an estimate, by design
    r"Found \d+ module\(s\) in eval mode",  # frozen parts stay in eval mode on purpose
    "You have overridden `on_after_batch_transfer` in `LightningModule`",  # the module normalises; intended
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's use of a torch API
    "`past_key_values` is deprecated",  # transformers' rename, in the generation our models call
)
LOG_NOISE = ("💡 Tip",)  # Lightning's advertisement of its cloud logger


class OneLineParser(argparse.ArgumentParser):
    """Reports a command-line mistake as one line that points to ``--help``, not the whole usage."""

    def error(self, message: str):
        self.exit(USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1, …)")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="the precision to run in (default: float32, whatever the export stores)")
    p.add_argument("--adapters", default=None, help="a folder of LoRA adapters trained on --model (lora.save: adapters)")


def _pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """Options of families that sample several answers: pipelines (mccot) and segmentation (star)."""
    p.add_argument("--votes", type=int, default=1,
                   help="sample this many rationales, answer each, majority-vote (baseline, mccot)")
    p.add_argument("--rerank", default=None, metavar="SCORER_EXPORT",
                   help="with --votes: weigh each vote by a rationale scorer's score of its rationale")
    p.add_argument("--stop-entropy", type=float, default=None, metavar="BITS",
                   help="baseline: stop the rationale once the answer's entropy is below BITS, and answer")
    p.add_argument("--samples", type=int, default=1,
                   help="segmentation: sample this many answers and aggregate their masks (test-time scaling)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature with --votes or --samples > 1")
    p.add_argument("--rationales", default="generated", choices=("generated", "teacher_forced", "gold"),
                   help="what the answer stage reads: generated (default), upstream's teacher-forced argmax, "
                        "or the gold rationale (eval only)")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmreason", description="Multimodal reasoning model zoo.")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the traceback of an error (anywhere on the line; or set {DEBUG_ENV}=1)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, text in LIGHTNING_VERBS.items():
        verbs.add_parser(verb, help=text, add_help=False)

    p = verbs.add_parser("predict", help="answer a question about an image (or many) with an export folder")
    p.add_argument("--model", required=True, help="export folder")
    p.add_argument("--image", default=None, help="the image to ask about (or --inputs: many)")
    p.add_argument("--question", default=None, help="the question (with --inputs FOLDER: asked of every image)")
    p.add_argument("--choices", nargs="+", default=None, help="options of a multiple-choice question")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None,
                   help="save a PNG of what the model found: a crop policy's boxes, a segmentation's mask; with "
                        "--inputs: the results.jsonl to write")
    p.add_argument("--inputs", default=None, metavar="FOLDER|FILE.jsonl",
                   help="answer many images instead of --image: every image of a FOLDER (sorted) asked "
                        "--question, or one JSON object per line {image, question, choices?, id?} "
                        "(image paths relative to the file); --out names the results.jsonl to write")
    p.add_argument("--batch-size", type=int, default=16, help="with --inputs: images answered together")
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
    p.add_argument("--predictions", default=None, metavar="FILE.jsonl",
                   help="also write every sample here, one JSON line each in evaluation order: its question, "
                        "gold answer, generated text, parsed answer, correctness (mask IoU, crop IoU)")
    _load_arguments(p)
    _pipeline_arguments(p)

    p = verbs.add_parser("diagnose", help="faithfulness, step utility and scorer checks of a rationale-writing export")
    p.add_argument("--model", required=True, help="export folder of a model that writes a rationale, then answers")
    p.add_argument("--data", required=True, nargs="+", help="shard pattern(s) or a folder")
    p.add_argument("--split", default="test", help="with a folder: which split's shards (default: test)")
    p.add_argument("--out", default="diagnosis", help="folder for diagnosis.json, diagnosis.md and the figures")
    p.add_argument("--limit", type=int, default=None, help="diagnose only the first N samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--edits", nargs="+", default=None, metavar="KIND",
                   help="edit kinds for faithfulness (default: colour shape count relation drop shuffle)")
    p.add_argument("--scorer", default=None, metavar="SCORER_EXPORT",
                   help="a rationale scorer: its AUROC on the model's rationales; with --votes, weighted vs majority")
    p.add_argument("--votes", type=int, default=1, help="with --scorer: samples per question to vote over")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature with --votes")
    p.add_argument("--rationales", choices=("own", "gold"), default="own",
                   help="what faithfulness edits: the model's own rationales where true to the scene (default), "
                        "or the gold ones (for a model whose own are rarely true)")
    p.add_argument("--seed", type=int, default=0, help="seeds the edits' choices and the sampling")
    _load_arguments(p)

    p = verbs.add_parser("score", help="how well a rationale scorer tells right rationales from wrong ones (AUROC)")
    p.add_argument("--model", required=True, help="export folder of a rationale scorer")
    p.add_argument("--data", required=True, nargs="+", help="shard pattern(s) or a folder (records may carry "
                   "sampled candidates: tools/rationale_candidates.py)")
    p.add_argument("--split", default="test", help="with a folder: which split's shards (default: test)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N records")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    _load_arguments(p)

    p = verbs.add_parser("demo", help="a web page to try an export on your images (pip install 'mmreason[demo]')")
    p.add_argument("--model", required=True, help="export folder")
    p.add_argument("--port", type=int, default=7860, help="the local port to serve the page on")
    p.add_argument("--share", action="store_true",
                   help="also publish the page through a temporary public link (off by default)")
    p.add_argument("--max-new-tokens", type=int, default=160)
    _load_arguments(p)

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


def _quiet() -> None:
    """One log line per message, in one format, without the lines in :data:`NOISE` and :data:`LOG_NOISE`;
    warnings are logged too, so a progress bar prints them above itself."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score's "Using default tokenizer"
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not record.getMessage().startswith(LOG_NOISE))
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)


def _is_user_error(error: BaseException) -> bool:
    """A mistake the message explains: a file that is missing or unreadable (``OSError``, PIL's
    ``UnidentifiedImageError`` and truncated images among them), one of this package's own errors
    (``ExportError``, ``ImageTooLarge``, …) or a ``ValueError`` this package raised about its input."""
    if isinstance(error, (OSError, argparse.ArgumentError)) or type(error).__module__.startswith("mmreason."):
        return True
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return (isinstance(error, ValueError) and frame is not None
            and os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(PACKAGE_DIR))


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    if any(line.startswith("Original Traceback") for line in lines):  # raised in a data loader worker
        return lines[-1]
    return " ".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if DEBUG_FLAG in argv:
        argv = [arg for arg in argv if arg != DEBUG_FLAG]
        os.environ[DEBUG_ENV] = "1"
    _quiet()
    try:
        _run(argv)
    except Exception as error:
        if os.environ.get(DEBUG_ENV) == "1" or not _is_user_error(error):
            raise
        print(f"mmreason {argv[0]}: error: {_one_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR)


def _run(argv: list[str]) -> None:
    if argv and argv[0] in LIGHTNING_VERBS:
        from mmreason.training.cli import run_lightning_cli

        run_lightning_cli(argv, exit_on_error=False)
        return
    args = _parser().parse_args(argv)
    if args.verb is None:
        _parser().print_help()
        return
    if args.verb == "data":
        from mmreason.data.cli import run_data_verb

        run_data_verb(args)
    elif args.verb == "list":
        from mmreason.zoo import catalogue

        for name, description in catalogue(args.pattern).items():
            print(f"{name:28s} {description}")
    elif args.verb == "predict" and args.inputs:
        from mmreason.batch_inference import batch_predict_command

        batch_predict_command(args)
    elif args.verb == "predict":
        from mmreason.inference import predict_command

        predict_command(args)
    elif args.verb == "demo":
        from mmreason.demo import demo_command

        demo_command(args)
    elif args.verb == "eval":
        from mmreason.inference import eval_command

        eval_command(args)
    elif args.verb == "diagnose":
        from mmreason.diagnostics.command import diagnose_command

        diagnose_command(args)
    elif args.verb == "score":
        from mmreason.diagnostics.scorer_eval import score_command

        score_command(args)
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
