"""``predict`` over many images: a folder asked one question, or a JSONL file of questions.

Inputs are answered in batches through the model's ``respond``, the path ``eval``
scores, so every family answers here as it is evaluated, and each answer is read
out by ``describe`` as single-image ``predict`` reads it. An input that cannot be
used (an unreadable image, a bad line) is skipped and named in the summary
instead of stopping the run; the results file appears only once complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmreason.export import load_export
from mmreason.inference import check_response_options, in_reading_order, jsonl_writer, pipeline_options

MAX_LINE_CHARS = 1 << 16  # a query line is an image path, a question and choices: longer is not one
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def read_inputs(source: str | Path, question: str | None = None,
                choices: list[str] | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """The queries ``{id, image, path, question, choices}`` of a folder of images (each asked ``question``,
    id = file name) or of a JSONL file (id = the line's, else its line number), and the (input, reason)
    of each line that could not be read."""
    source = Path(source)
    if source.is_dir():
        if question is None:
            raise ValueError("a folder of images needs --question, the question asked of every image")
        images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [{"id": p.name, "image": str(p), "path": p, "question": question, "choices": choices}
                for p in images], []
    queries, bad = [], []
    with source.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(iter(lambda: lines.readline(MAX_LINE_CHARS + 1), ""), 1):
            if len(line) > MAX_LINE_CHARS:  # read no further than the limit; skip the rest of the line
                while line and not line.endswith("\n"):
                    line = lines.readline(MAX_LINE_CHARS)
                bad.append((f"{source.name}:{number}", f"line longer than {MAX_LINE_CHARS:,} characters"))
                continue
            if not line.strip():
                continue
            try:
                queries.append(_line_query(json.loads(line), source.parent, number))
            except ValueError as exn:  # JSONDecodeError too
                bad.append((f"{source.name}:{number}", str(exn)))
    return queries, bad


def _line_query(obj, folder: Path, number: int) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"'image' must be a path, got {image!r}")
    return {"id": obj.get("id", number), "image": image, "path": folder / image,
            "question": obj.get("question"), "choices": obj.get("choices")}


def answer_queries(model, queries: list[dict], batch_size: int, max_new_tokens: int | None = None,
                   skipped: list[tuple[str, str]] | None = None, **options) -> Iterator[tuple[dict, dict]]:
    """(query, described response) for each usable query, in order, answered ``batch_size`` at a time;
    the (input, reason) of each unusable one (a bad question or choices, an unreadable image) goes
    into ``skipped``. ``options`` go to the model's ``respond``, as in evaluation."""
    check_response_options(model, options)
    skipped = [] if skipped is None else skipped
    weights = next(model.parameters())
    pending = []

    def answered():
        records = [record for _, record, _ in pending]
        images = torch.stack([pixels for _, _, pixels in pending]).to(weights.device, weights.dtype)
        with torch.no_grad():
            responses = model.respond(images, records, max_new_tokens, **options)
        return [(query, model.describe(response)) for (query, _, _), response in zip(pending, responses, strict=True)]

    for query in tqdm(queries, desc="predict", unit="image"):
        try:
            record = model.query(query["question"], query["choices"])
        except ValueError as exn:
            skipped.append((query["image"], str(exn)))
            continue
        try:
            pixels = model.preprocess(query["path"])
        except Exception as exn:  # PIL raises many types for corrupt data
            skipped.append((query["image"], f"unreadable image: {type(exn).__name__}: {exn}"))
            continue
        pending.append((query, record, pixels))
        if len(pending) == batch_size:
            yield from answered()
            pending = []
    if pending:
        yield from answered()


def result_line(query: dict, described: dict, mask_path: Path, out_folder: Path) -> dict:
    """One line of results.jsonl; a mask is saved as a 0/255 PNG at ``mask_path``, the line holding its
    path relative to ``out_folder``."""
    described = in_reading_order(described)
    mask = described.pop("mask", None)
    line = {"id": query["id"], "image": query["image"], "question": query["question"], "choices": query["choices"],
            **described}
    if mask is not None:
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(mask.cpu(), dtype=np.uint8) * 255).save(mask_path)
        line["mask"] = str(mask_path.relative_to(out_folder))
    return line


def batch_predict_command(args) -> None:
    """``predict --inputs``: results.jsonl at ``--out`` (masks in ``<out stem>-masks/`` beside it), then a
    summary of what was answered and what was skipped, and why."""
    if args.image is not None:
        raise SystemExit("give --image (one image) or --inputs (many), not both")
    if not args.out:
        raise SystemExit("--inputs writes its results to --out FILE.jsonl; name it")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be a positive number of images, got {args.batch_size}")
    options = pipeline_options(args)
    if options.get("rationale_source", "generated") != "generated":
        raise SystemExit("predict generates its rationales; --rationales gold or teacher_forced need gold "
                         "rationales (use `mmreason eval`)")
    try:
        queries, skipped = read_inputs(args.inputs, args.question, args.choices)
    except (OSError, ValueError) as exn:
        raise SystemExit(f"cannot read --inputs {args.inputs}: {exn}") from exn
    model = load_export(args.model, args.device, args.dtype, args.adapters)
    out = Path(args.out)
    masks = out.parent / f"{out.stem}-masks"
    answered = 0
    with jsonl_writer(out) as write:
        for i, (query, described) in enumerate(answer_queries(model, queries, args.batch_size, args.max_new_tokens,
                                                              skipped, **options)):
            write(result_line(query, described, masks / f"{i:06d}.png", out.parent))
            answered += 1
        if not answered:
            raise SystemExit(f"no input could be answered; {_summary(answered, skipped, out)}")
    print(json.dumps({"out": str(out), "answered": answered, "skipped": [
        {"input": name, "reason": reason} for name, reason in skipped]}) if args.json
        else _summary(answered, skipped, out))


def _summary(answered: int, skipped: list[tuple[str, str]], out: Path) -> str:
    lines = [f"answered {answered} input(s) into {out}; skipped {len(skipped)}"]
    lines += [f"  skipped {name}: {reason}" for name, reason in skipped]
    return "\n".join(lines)
