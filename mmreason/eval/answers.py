"""Turn a model's generated text into an answer and score it against the gold record.

Generations come tagged (``<think> … </think> <answer> 3 </answer>``), untagged
(``yes``), lowercased and space-split by a word-level decode (``( b ) .``),
truncated or garbage. Parsing is strict on purpose: when no answer of the
expected kind can be read, the parser returns ``None`` and the sample counts as
a parse failure, never as a guessed answer.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

KINDS = ("yesno", "number", "choice", "text")

NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
ARTICLES = {"a", "an", "the"}
NUMBER_TOLERANCE = 1e-6

_ANSWER_OPEN = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"<\s*/?\s*\|?[a-z_]+\|?\s*>", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\bthe\s+answer\s+is\b\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?;\n](?=\s|$)")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER = re.compile(
    r"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w]|\.\d)|\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE
)
_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation if c != "'"} | {"'": ""})
_PUNCT_BUT_POINT = str.maketrans({c: " " for c in string.punctuation if c not in "'."} | {"'": ""})
_PAREN_LETTER = re.compile(r"\(\s*([a-z])\s*\)", re.IGNORECASE)
_OPTION_LETTER = re.compile(r"\b(?:option|choice)\s*[:(]?\s*([a-z])\b", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"^\s*([a-z])\s*[.):]", re.IGNORECASE)


def field_of(record: Any, name: str, default: Any = None) -> Any:
    """Read a field from a :class:`~mmreason.data.schema.Record` or a plain decoded dict alike."""
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


def _clean(span: str) -> str | None:
    span = _SPECIAL_TOKEN.sub(" ", span).strip()
    return span or None


def _after_answer_is(text: str) -> str | None:
    """The phrase after the last "the answer is", up to the end of that sentence."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end():]
    end = _SENTENCE_END.search(tail)
    return _clean(tail[: end.start()] if end else tail)


def split_rationale(text: str) -> str | None:
    """The text between <think> and </think>, if any."""
    if "<think>" not in text:
        return None
    return text.split("<think>", 1)[1].split("</think>", 1)[0].strip()


def extract_answer_span(text: str | None) -> str | None:
    """The part of a generation that holds the answer, or ``None`` if there is none.

    In order: the content of the last ``<answer>`` tag (to its closing tag or,
    when truncated, to the end; after "the answer is" when it says so); with
    no answer tag, ``None`` if a ``<think>`` was left open (the model never
    reached an answer); otherwise the phrase after "the answer is" following
    the rationale, else the text following the rationale, else "the answer is"
    inside the rationale. Leftover special tokens (``</s>``, ``<pad>``) are dropped.
    """
    if not text or not text.strip():
        return None
    opens = list(_ANSWER_OPEN.finditer(text))
    if opens:
        body = text[opens[-1].end():]
        close = _ANSWER_CLOSE.search(body)
        body = body[: close.start()] if close else body
        return _after_answer_is(body) if _ANSWER_IS.search(body) else _clean(body)
    think_opens = list(_THINK_OPEN.finditer(text))
    think_closes = list(_THINK_CLOSE.finditer(text))
    if think_opens and (not think_closes or think_closes[-1].start() < think_opens[-1].start()):
        return None
    rationale, rest = "", text
    if think_closes:
        rationale, rest = text[: think_closes[-1].start()], text[think_closes[-1].end():]
    if _ANSWER_IS.search(rest):
        return _after_answer_is(rest)
    return _clean(rest) or _after_answer_is(rationale)


def normalize_text(s: str) -> str:
    """VQA-style normalisation: lowercase, no punctuation, no articles, single spaces.

    Articles are kept when they are the whole answer, so a lone letter answer
    such as "A" survives instead of collapsing to the empty string.
    """
    s = _DIGIT_COMMA.sub("", s.lower())
    words = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s).translate(_PUNCT_BUT_POINT).split()
    kept = [w for w in words if w not in ARTICLES]
    return " ".join(kept or words)


def _canonical_number(token: str) -> str:
    token = NUMBER_WORDS.get(token.lower(), token)
    if "." not in token:
        return str(int(token))
    value = float(token)
    return str(int(value)) if value.is_integer() else repr(value)


def _parse_number(span: str) -> str | None:
    match = _NUMBER.search(_DIGIT_COMMA.sub("", span))
    return _canonical_number(match.group(1) or match.group(2)) if match else None


def _parse_yesno(span: str) -> str | None:
    return next((w for w in normalize_text(span).split() if w in ("yes", "no")), None)


def _letter(index: int) -> str:
    return string.ascii_uppercase[index]


def _parse_choice(span: str, choices: list[str] | None) -> str | None:
    n_letters = len(choices) if choices else len(string.ascii_uppercase)
    if choices:
        wanted = normalize_text(span)
        for i, choice in enumerate(choices):
            if wanted and normalize_text(choice) == wanted:
                return _letter(i)
    bare = span.translate(_PUNCT_TO_SPACE).strip()
    for pattern in (_PAREN_LETTER, _OPTION_LETTER, _LEADING_LETTER):
        match = pattern.search(span)
        if match:
            break
    else:
        match = re.fullmatch(r"([a-z])", bare, re.IGNORECASE)
    if match is None:
        return None
    letter = match.group(1).upper()
    return letter if string.ascii_uppercase.index(letter) < n_letters else None


def parse_answer(text: str | None, kind: str, choices: list[str] | None = None) -> str | None:
    """Read an answer of ``kind`` from a generation; ``None`` when it cannot be read.

    ``yesno`` → "yes"/"no"; ``number`` → canonical number string ("3", "2.5",
    number words up to twenty included); ``choice`` → a letter, from "(b)",
    "b", "option b", "b) …" or the text of one of ``choices`` (letters past
    ``len(choices)`` are rejected); ``text`` → :func:`normalize_text` of the span.
    """
    if kind not in KINDS:
        raise ValueError(f"answer kind must be one of {KINDS}, got {kind!r}")
    span = extract_answer_span(text)
    if span is None:
        return None
    if kind == "yesno":
        return _parse_yesno(span)
    if kind == "number":
        return _parse_number(span)
    if kind == "choice":
        return _parse_choice(span, choices)
    return normalize_text(span) or None


def answer_kind(record: Any) -> str:
    """Which parser a record's gold answer calls for: choices, yes/no, a number, or free text."""
    if field_of(record, "choices"):
        return "choice"
    gold = normalize_text(field_of(record, "answer", ""))
    if gold in ("yes", "no"):
        return "yesno"
    if re.fullmatch(r"-?\d+(?:\.\d+)?", gold) or gold in NUMBER_WORDS:
        return "number"
    return "text"


def gold_answer(record: Any) -> str:
    """The record's gold answer in the canonical form :func:`parse_answer` produces.

    Raises ``ValueError`` when the gold itself cannot be read (e.g. a multiple-choice
    answer that is neither a letter within range nor the text of a choice).
    """
    kind = answer_kind(record)
    raw = field_of(record, "answer", "")
    gold = parse_answer(raw, kind, field_of(record, "choices"))
    if gold is None:
        raise ValueError(
            f"gold answer {raw!r} of a {kind!r} question cannot be read; expected "
            + ("a letter within range or the text of one of the choices" if kind == "choice" else "a non-empty answer")
            + "; fix the record or its converter"
        )
    return gold


def score_answer(prediction_text: str | None, record: Any) -> tuple[bool, str | None]:
    """(correct, parsed prediction); a prediction that cannot be parsed is wrong and parsed is ``None``."""
    kind = answer_kind(record)
    gold = gold_answer(record)
    parsed = parse_answer(prediction_text, kind, field_of(record, "choices"))
    if parsed is None:
        return False, None
    if kind == "number":
        return abs(float(parsed) - float(gold)) <= NUMBER_TOLERANCE, parsed
    return parsed == gold, parsed
