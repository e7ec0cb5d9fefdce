"""LLaVA instruction data (a JSON list of image + human/gpt conversations) to canonical shards.

Each conversation becomes one ``vqa`` sample keyed by its id: the last
human→gpt pair is the record's question and answer, the earlier pairs its
``turns``, so a model trains on every reply with the conversation before it in
context, as LLaVA does. ``<image>`` is dropped from the text: the image goes
into the first user turn, where each model family's prompt puts it.
"""

from __future__ import annotations

import re
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

IMAGE_TAG = re.compile(r"\s*<image>\s*")
ASKS, ANSWERS = ("human", "user"), ("gpt", "assistant")
TEXT_ONLY = ("skip", "blank")
BLANK_SIZE = (64, 64)


def strip_image_tag(text: str) -> str:
    """Drop ``<image>`` and the whitespace around it, keeping a line break where there was one."""
    return IMAGE_TAG.sub(lambda m: "\n" if "\n" in m.group() else " ", text).strip()


def compile_answer_split(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"answer_split {pattern!r} is not a valid regular expression: {err}") from err
    missing = {"rationale", "answer"} - set(regex.groupindex)
    if missing:
        raise ValueError(f"answer_split {pattern!r} lacks the named group(s) {sorted(missing)}; expected "
                         f"(?P<rationale>...) and (?P<answer>...)")
    return regex


def split_answer(text: str, regex: re.Pattern | None) -> tuple[str, str | None]:
    """(answer, rationale): the regex's groups where it matches, else the whole reply as the answer."""
    match = regex.search(text) if regex else None
    if match is None:
        return text.strip(), None
    return (match.group("answer") or "").strip(), (match.group("rationale") or "").strip() or None


def turn_pairs(conversations, where: str) -> list[tuple[str, str]]:
    """The (question, reply) pairs of a conversation that alternates human and gpt turns."""
    if not isinstance(conversations, list) or not conversations or len(conversations) % 2:
        raise ConversionError(f"{where}: 'conversations' must be a non-empty list of alternating human and "
                              f"gpt turns, got {str(conversations)[:80]!r}")
    for i, turn in enumerate(conversations):
        roles = ASKS if i % 2 == 0 else ANSWERS
        if not isinstance(turn, dict) or turn.get("from") not in roles or not isinstance(turn.get("value"), str):
            raise ConversionError(f"{where}: conversations[{i}] must be {{'from': {roles[0]!r}, 'value': "
                                  f"<text>}}, got {str(turn)[:80]!r}")
    return [(conversations[i]["value"], conversations[i + 1]["value"]) for i in range(0, len(conversations), 2)]


def convert_llava(src: Path, out: Path, images: Path, split: str, samples_per_shard: int,
                  strict: bool = False, *, text_only: str = "skip", answer_split: str | None = None) -> dict:
    """Convert ``src`` (LLaVA JSON) with image paths relative to ``images``.

    ``text_only``: records without an image are skipped ("skip", counted as
    ``no_image``) or kept with a blank 64×64 white image and
    ``meta["no_image"]`` ("blank"). ``answer_split``: a regex with named groups
    ``rationale`` and ``answer`` that splits a gpt reply where it matches.
    """
    if text_only not in TEXT_ONLY:
        raise ValueError(f"text_only must be one of {TEXT_ONLY}, got {text_only!r}")
    regex = compile_answer_split(answer_split)
    items = read_json(src, "LLaVA data")
    if not isinstance(items, list):
        raise ConversionError(f"{src}: expected a JSON list of {{id, image, conversations}} records, "
                              f"got a {type(items).__name__}")
    with ShardSink(out, samples_per_shard, strict) as sink:
        for index, item in enumerate(progress(items, "llava")):
            if not isinstance(item, dict):
                raise ConversionError(f"{src} record at index {index}: expected an object with 'id', 'image' and "
                                      f"'conversations', got {str(item)[:80]!r}")
            record_id = str(index if item.get("id") is None else item["id"])
            where = f"{src} record {record_id!r} (index {index})"
            pairs = turn_pairs(item.get("conversations"), where)
            path = item.get("image")
            if path is None:
                if text_only == "skip":
                    sink.skip("no_image", where)
                    continue
                image, size, extra = blank_image(BLANK_SIZE), BLANK_SIZE, {"no_image": True}
            elif isinstance(path, str) and path:
                try:
                    (image, size), extra = load_image(image_path(images, path, where), where), {}
                except UnusableFile as err:
                    sink.skip_unusable(split, where, err)
                    continue
            else:
                raise ConversionError(f"{where}: 'image' must be one path relative to {images}, got {path!r}")
            turns = []
            for question, reply in pairs:
                answer, rationale = split_answer(reply, regex)
                turns.append({"question": strip_image_tag(question), "answer": answer, "rationale": rationale})
            meta = {"source": "llava", "id": record_id, **extra}
            record = {**turns.pop(), "task": "vqa", "turns": turns, "meta": meta}
            sink.write(split, record_id, image, size, record, where)
        return sink.finish()
