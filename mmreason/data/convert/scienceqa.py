"""ScienceQA in its upstream layout (problems.json, pid_splits.json, images/) to ``mcq`` shards.

Each upstream split becomes its own shard set (``train-*``, ``val-*``, ...), so
the published splits stay exactly as published. The hint goes into the
question as context, as the upstream baselines prompt it, and is kept in meta.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .common import (
    ConversionError,
    ShardSink,
    UnusableFile,
    blank_image,
    image_path,
    load_image,
    progress,
    read_json,
)

log = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train", "val", "test", "minival")
NO_IMAGE = ("blank", "skip")
BLANK_SIZE = (224, 224)


def choose_splits(pid_splits, requested: str | list[str] | None, path: Path) -> list[str]:
    """The splits to convert; by default the disjoint ones plus ``minival`` (not ``trainval`` etc.)."""
    if not isinstance(pid_splits, dict):
        raise ConversionError(f"{path}: expected an object mapping split names to lists of qids")
    if requested is None:
        chosen = [name for name in DEFAULT_SPLITS if name in pid_splits]
        ignored = sorted(set(pid_splits) - set(chosen))
        if ignored:
            log.info("ScienceQA: not converting splits %s (pass splits=... to include them)", ignored)
        return chosen
    chosen = requested.split(",") if isinstance(requested, str) else list(requested)
    missing = [name for name in chosen if name not in pid_splits]
    if missing:
        raise ConversionError(f"{path}: no split(s) {missing}; expected names among {sorted(pid_splits)}")
    return chosen


def find_image(images: Path, folders: list[str], qid: str, name: str, where: str) -> Path:
    """Upstream keeps pictures at images/{split}/{qid}/; an unpacked copy may drop the images/ level."""
    relatives = [image_path(images, f"{folder}/{qid}/{name}", where).relative_to(images) for folder in folders]
    candidates = [root / relative for relative in relatives for root in (images / "images", images)]
    for path in candidates:
        if path.is_file():
            return path
    raise UnusableFile(f"{where}: image file not found; expected it at {candidates[0]} (also tried "
                       f"{', '.join(str(p) for p in candidates[1:])})", candidates[0], "missing_image")


def problem_record(qid: str, problem: dict, where: str) -> dict:
    """The canonical ``mcq`` record of one problem (its image is handled by the caller)."""
    choices, answer = problem.get("choices"), problem.get("answer")
    if not isinstance(choices, list) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ConversionError(f"{where}: expected 'choices' (a list) and 'answer' (an index into it), got "
                              f"choices={choices!r}, answer={answer!r}")
    hint = (problem.get("hint") or "").strip()
    question = problem.get("question")
    if hint and isinstance(question, str):
        question = f"{question}\nContext: {hint}"
    rationale = "\n".join((problem.get(part) or "").strip() for part in ("lecture", "solution")).strip()
    return {
        "question": question, "answer": chr(ord("A") + answer), "choices": choices, "task": "mcq",
        "rationale": rationale or None,
        "meta": {"source": "scienceqa", "qid": qid, "subject": problem.get("subject"),
                 "grade": problem.get("grade"), "hint": hint},
    }


def convert_scienceqa(src: Path, out: Path, images: Path, split: str, samples_per_shard: int,
                      strict: bool = False, *, no_image: str = "blank",
                      splits: str | list[str] | None = None) -> dict:
    """Convert the ScienceQA folder ``src``; ``split`` is unused, the splits come from pid_splits.json.

    ``no_image``: problems without a picture get a blank 224×224 white image and
    ``meta["no_image"]`` ("blank", counted as ``blank_images``) or are skipped
    ("skip", counted as ``no_image``). ``splits``: the upstream splits to
    convert (a list or comma-separated names).
    """
    if no_image not in NO_IMAGE:
        raise ValueError(f"no_image must be one of {NO_IMAGE}, got {no_image!r}")
    problems = read_json(src / "problems.json", "ScienceQA problems")
    pid_splits = read_json(src / "pid_splits.json", "ScienceQA splits")
    if not isinstance(problems, dict):
        raise ConversionError(f"{src / 'problems.json'}: expected an object mapping qids to problems")
    with ShardSink(out, samples_per_shard, strict) as sink:
        for name in choose_splits(pid_splits, splits, src / "pid_splits.json"):
            if not isinstance(pid_splits[name], list):
                raise ConversionError(f"{src / 'pid_splits.json'}: split {name!r} must be a list of qids")
            for qid in map(str, progress(pid_splits[name], f"scienceqa {name}")):
                where = f"ScienceQA qid {qid!r} (split {name!r})"
                problem = problems.get(qid)
                if not isinstance(problem, dict):
                    raise ConversionError(f"{where}: listed in {src / 'pid_splits.json'} but has no problem in "
                                          f"{src / 'problems.json'}; expected every listed qid there")
                record = problem_record(qid, problem, where)
                if problem.get("image"):
                    # minival's pictures live under the problem's own split folder (val).
                    folders = list(dict.fromkeys(f for f in (problem.get("split"), name) if f))
                    try:
                        path = find_image(images, folders, qid, problem["image"], where)
                        image, size = load_image(path, where)
                    except UnusableFile as err:
                        sink.skip_unusable(name, where, err)
                        continue
                elif no_image == "skip":
                    sink.skip("no_image", where)
                    continue
                else:
                    image, size = blank_image(BLANK_SIZE), BLANK_SIZE
                    record["meta"]["no_image"] = True
                sink.write(name, qid, image, size, record, where)
        return sink.finish()
