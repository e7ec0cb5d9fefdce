"""Turn a model's generated text into an answer and score it against the gold record.

Generations come tagged (``<think> … </think> <answer> 3 </answer>``), untagged
(``yes``), lowercased and space-split by a word-level decode (``( b ) .``),
truncated or garbage. Parsing is strict on purpose: when no answer of the
expected kind can be read, the parser returns ``None`` and the sample counts as
a parse failure, never as a guessed answer. The rules, in the order they apply:

1. Unify: vulgar fractions become decimals (``1½`` → ``1.5``), NFKC folds full-width and
   compatibility forms (``Ｂ`` → ``B``), the minus sign and en dash read as ``-``.
2. Span (:func:`extract_answer_span`): the last ``<answer>`` tag, else the text after the
   rationale; inside either, the phrase after the last answer marker ("the answer is", "answer
   is", "answer:", "the final/correct answer is"; not "no answer is") up to the end of its
   sentence or a reason ("because", "since", "given that", "due to"). Yes/no, number and choice
   spans drop a reason wherever it starts, so its wording is neither a hedge nor a candidate.
3. Hedges make the answer unreadable (``None``): maybe, perhaps, probably, possibly, might,
   could, likely, guess, not sure, I don't know, no answer, cannot tell, unknown, approximately,
   roughly, … (``_HEDGE``), in the span or in the sentence that leads to its marker ("I'm not
   sure, but the answer is B"). So are different candidates joined by "or" ("A or B", "either
   yes or no") and, for numbers, two numbers joined by "-", "to" or "and" ("3-4", "3 to 4").
4. Negation works per clause (split at , ; sentence ends, "but", "rather", "instead",
   "however"): a candidate after "not", "n't", "never", "neither", "nor" or "cannot" in its clause
   is denied; a clause saying "wrong", "incorrect" or "not correct/right/the answer" denies all of
   its candidates. Only the asserted candidates count: "not (A) but (B)" → B, "not yes" → None.
5. yesno: the first asserted "yes"/"no". number: the first asserted number — digits with a sign
   ("-3", "- 3", "minus three"), decimals (".1"), exponents ("1e3"), thousands commas, digit
   ordinals ("3rd"), number words and their compounds ("twenty-one" → 21, "one hundred and five").
   Word ordinals ("first" is too often not a number) and number words hyphen-glued to another
   word ("twenty-first") are not read. Canonical forms: "3", "2.5", "-3", "1000", "0.5".
6. choice: a span that is wholly a letter form ("B", "(b)", "B.", "option b") is that option
   letter, even when the choice texts are letters themselves (choices ["B", "A", "C"]: "B" is
   option B, the letter a model writes always names an option); else a span equal to a choice's
   text is that option; else each clause offers "(X)" / "option X" anywhere, or — once negators
   and filler such as "it is" are dropped — a letter form, a letter followed by ")", ".", ":" or
   "is", or a choice's text. All asserted candidates must name one option in range: "B, blue" →
   B when B is blue; "B, green" → None.
7. text: the span after :func:`normalize_text`; only the leading-sentence hedge of rule 3
   applies, since a hedged or negated text cannot equal the gold anyway.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import Any

KINDS = ("yesno", "number", "choice", "text")

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {word: i for i, word in enumerate(_UNITS)} | {word: 10 * i for i, word in enumerate(_TENS, 2)}
SCALE_WORDS = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}
ARTICLES = {"a", "an", "the"}
NUMBER_TOLERANCE = 1e-6

_ANSWER_OPEN = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"<\s*/?\s*\|?[a-z_]+\|?\s*>", re.IGNORECASE)
_MARKER = re.compile(
    r"(?<!\bno\s)\b(?:the\s+)?(?:(?:final|correct|right)\s+)?answer\s*(?:\bis\b|:)\s*:?", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"[.!?;\n](?=\s|$)")
_REASON = re.compile(r"\b(?:because|since|given\s+that|due\s+to)\b", re.IGNORECASE)
_PHRASE_END = re.compile(f"{_SENTENCE_END.pattern}|{_REASON.pattern}", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[,;]|[.!?](?=\s|$)|\b(?:but|rather|instead|however)\b", re.IGNORECASE)
_HEDGE = re.compile(
    r"\b(?:maybe|perhaps|probably|possibly|presumably|might|could(?!\s+not\b)|likely|unlikely|unsure"
    r"|uncertain|unclear|guess|approximately|roughly|unknown|unanswerable|impossible|no\s+(?:answer|idea)"
    r"|not\s+(?:sure|certain|clear|enough)|(?:do|does|did)(?:\s+not|n\s*'?\s*t)\s+know"
    r"|can(?:not|\s+not|\s*'?\s*t)\s+(?:tell|determine|say|answer|know|be\s+sure))\b",
    re.IGNORECASE,
)
_NEGATOR = re.compile(
    r"\b(?:not|never|neither|nor|cannot)\b"
    r"|\b(?:is|are|was|were|do|does|did|ca|can|could|would|wo|should|has|have|had|ai)n\s*'?\s*t\b",
    re.IGNORECASE,
)
_DENIED = re.compile(
    r"\b(?:wrong|incorrect)\b|(?:\bnot|n\s*'?\s*t)\s+(?:the\s+)?(?:correct|right|answer)\b", re.IGNORECASE
)
_OR = re.compile(r"\bor\b", re.IGNORECASE)
_YESNO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DIGITS = re.compile(
    r"(?<![\w.])(?:(\d+)(?:st|nd|rd|th)|((?:\d+(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?))(?!\w|\.\d)", re.IGNORECASE
)
_MINUS = re.compile(r"-\s*$")
_MINUS_WORD = re.compile(r"\b(?:minus|negative)\s*$", re.IGNORECASE)
_RANGE_GAP = re.compile(r"\s*(?:-|to|and)\s*", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+", re.IGNORECASE)
_WORD_JOIN = re.compile(r"\s*-\s*|\s+")
_WORD_GLUE = re.compile(r"-\s*")
_VULGAR = re.compile(r"(\d+\s*)?([\u00bc-\u00be\u2150-\u215e\u2189])")
_DASHES = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'"})
_PUNCT_BUT_POINT = str.maketrans({c: " " for c in string.punctuation if c not in "'."} | {"'": ""})
_LETTER_FORM = re.compile(
    r"(?:(?:option|choice|letter)\s*:?\s*)?[(\[]?\s*([a-z])\s*[)\].:]?\s*[.!]?", re.IGNORECASE
)
_MARKED_LETTER = re.compile(
    r"[(\[]\s*([a-z])\s*[)\]]|\b(?:option|choice|letter)\s*[:(]?\s*([a-z])\b", re.IGNORECASE
)
_LEADING_LETTER = re.compile(r"([a-z])\s*(?:[)\].:]|\s+is\b)", re.IGNORECASE)
_FILLER = re.compile(
    r"^\s*(?:(?:so|thus|hence|therefore|then|it\s*'?\s*s|it|that\s*'?\s*s|that|this|is|be|must|would|should"
    r"|i\s+(?:think|choose|pick|select|say)|i\s*'?\s*d\s+say)\b\s*)*",
    re.IGNORECASE,
)


def field_of(record: Any, name: str, default: Any = None) -> Any:
    """Read a field from a :class:`~mmreason.data.schema.Record` or a plain decoded dict alike."""
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


def _unify(text: str) -> str:
    """One spelling per character: "½" and "1½" as decimals (before NFKC would turn them into "1⁄2"),
    full-width forms folded, typographic minus, dash and apostrophes as ASCII."""
    text = _VULGAR.sub(lambda m: repr(int(m.group(1) or 0) + unicodedata.numeric(m.group(2))), text)
    return unicodedata.normalize("NFKC", text).translate(_DASHES)


def _clean(span: str) -> str | None:
    span = _SPECIAL_TOKEN.sub(" ", span).strip()
    return span or None


def _after_marker(text: str) -> tuple[str | None, str]:
    """The phrase after the last answer marker, up to its sentence end or a reason, and the start of
    the marker's own sentence (where a hedge such as "I'm not sure, but" would sit)."""
    matches = list(_MARKER.finditer(text))
    if not matches:
        return None, ""
    marker = matches[-1]
    tail = text[marker.end():]
    end = _PHRASE_END.search(tail)
    lead = _SENTENCE_END.split(text[: marker.start()])[-1]
    return _clean(tail[: end.start()] if end else tail), lead


def _locate(text: str | None) -> tuple[str | None, str]:
    """(answer span, the sentence leading to its marker or ""); see :func:`extract_answer_span`."""
    if not text or not text.strip():
        return None, ""
    opens = list(_ANSWER_OPEN.finditer(text))
    if opens:
        body = text[opens[-1].end():]
        close = _ANSWER_CLOSE.search(body)
        body = body[: close.start()] if close else body
        return _after_marker(body) if _MARKER.search(body) else (_clean(body), "")
    think_opens = list(_THINK_OPEN.finditer(text))
    think_closes = list(_THINK_CLOSE.finditer(text))
    if think_opens and (not think_closes or think_closes[-1].start() < think_opens[-1].start()):
        return None, ""
    rationale, rest = "", text
    if think_closes:
        rationale, rest = text[: think_closes[-1].start()], text[think_closes[-1].end():]
    if _MARKER.search(rest):
        return _after_marker(rest)
    span = _clean(rest)
    return (span, "") if span else _after_marker(rationale)


def split_rationale(text: str) -> str | None:
    """The text between <think> and </think>, if any."""
    if "<think>" not in text:
        return None
    return text.split("<think>", 1)[1].split("</think>", 1)[0].strip()


def extract_answer_span(text: str | None) -> str | None:
    """The part of a generation that holds the answer, or ``None`` if there is none.

    In order: the content of the last ``<answer>`` tag (to its closing tag or,
    when truncated, to the end; after an answer marker when it has one); with
    no answer tag, ``None`` if a ``<think>`` was left open (the model never
    reached an answer); otherwise the phrase after the last answer marker
    ("the answer is", "answer:", …) following the rationale, else the text
    following the rationale, else the phrase after a marker inside the
    rationale. A marker's phrase ends at its sentence end or at a reason
    ("because …"). Leftover special tokens (``</s>``, ``<pad>``) are dropped.
    """
    return _locate(text)[0]


def normalize_text(s: str) -> str:
    """VQA-style normalisation: lowercase, no punctuation, no articles, single spaces.

    Articles are kept when they are the whole answer, so a lone letter answer
    such as "A" survives instead of collapsing to the empty string.
    """
    s = _DIGIT_COMMA.sub("", s.lower())
    words = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s).translate(_PUNCT_BUT_POINT).split()
    kept = [w for w in words if w not in ARTICLES]
    return " ".join(kept or words)


def _mentions(span: str, find: Callable[[str], list[tuple[int, str]]]) -> list[tuple[str, bool]]:
    """(value, asserted) of every candidate ``find`` reads in each clause of ``span``, in order (rule 4)."""
    out = []
    for clause in _CLAUSE_BREAK.split(span):
        negator = _NEGATOR.search(clause)
        denied = _DENIED.search(clause) is not None
        out += [(value, not denied and (negator is None or pos < negator.start()))
                for pos, value in find(clause)]
    return out


def _hedged(span: str, mentions: list[tuple[str, bool]]) -> bool:
    """Whether the span hedges or offers different candidates joined by "or" (rule 3)."""
    return bool(_HEDGE.search(span)) or (_OR.search(span) is not None and len({v for v, _ in mentions}) > 1)


def _first_asserted(span: str, mentions: list[tuple[str, bool]]) -> str | None:
    if _hedged(span, mentions):
        return None
    return next((value for value, asserted in mentions if asserted), None)


def _yesno_words(clause: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group(1).lower()) for m in _YESNO.finditer(clause)]


def _parse_yesno(span: str) -> str | None:
    return _first_asserted(span, _mentions(span, _yesno_words))


def _canonical(value: int | float) -> str | None:
    """"3", "2.5", "-3": integral values without a point; ``None`` for an overflow such as "1e999"."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if not value.is_integer():
            return repr(value)
        value = int(value)
    return str(value)


def _read_number_words(words: list[tuple[int, int, str]], i: int, text: str) -> tuple[int, int]:
    """(value, end): the longest well-formed number-word sequence from ``words[i]``; ``end == i`` if none.

    Well-formed: "zero" alone; units or teens after nothing, "hundred" or a scale; units after a tens
    word ("twenty-one"); "hundred" after units, teens or tens below a hundred; scales in falling order;
    "and" after "hundred" or a scale when a number follows; "a" before "hundred" or a scale.
    """
    total = group = 0
    last, ceiling, end, j = None, math.inf, i, i
    while j < len(words):
        word = words[j][2]
        if j > i and not _WORD_JOIN.fullmatch(text[words[j - 1][1]: words[j][0]]):
            break
        following = words[j + 1][2] if j + 1 < len(words) else ""
        if word == "and":
            if last not in ("hundred", "scale") or not NUMBER_WORDS.get(following):
                break
            j += 1
            continue
        if word == "a" and j == i and following in SCALE_WORDS:
            group, last = 1, "unit"
            j += 1
            continue
        if word in NUMBER_WORDS:
            n = NUMBER_WORDS[word]
            if n == 0:
                if j == i:
                    return 0, j + 1
                break
            after = (None, "hundred", "scale") + (("tens",) if n < 10 else ())
            if last not in after:
                break
            group, last = group + n, "tens" if n >= 20 else "unit"
        elif word == "hundred":
            if last not in ("unit", "tens") or group >= 100:
                break
            group, last = group * 100, "hundred"
        elif word in SCALE_WORDS:
            if last is None or last == "scale" or SCALE_WORDS[word] >= ceiling:
                break
            ceiling = SCALE_WORDS[word]
            total, group, last = total + group * ceiling, 0, "scale"
        else:
            break
        j += 1
        end = j
    return total + group, end


def _word_numbers(text: str) -> list[tuple[int, int, int]]:
    """(start, end, value) of each number-word sequence not hyphen-glued to another word."""
    words = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]
    found, i = [], 0
    while i < len(words):
        value, end = _read_number_words(words, i, text)
        glued_before = i > 0 and _WORD_GLUE.fullmatch(text[words[i - 1][1]: words[i][0]])
        glued_after = i < end < len(words) and _WORD_GLUE.fullmatch(text[words[end - 1][1]: words[end][0]])
        if end > i and not glued_before and not glued_after:
            found.append((words[i][0], words[end - 1][1], value))
        i = max(end, i + 1)
    return found


def _signed(text: str, start: int) -> tuple[int, int]:
    """(sign, start) of a number at ``start``: negative after "minus"/"negative" or a minus that neither
    follows a digit or bracket (a range, a subtraction) nor is glued to a word ("x-3")."""
    word = _MINUS_WORD.search(text, 0, start)
    if word:
        return -1, word.start()
    minus = _MINUS.search(text, 0, start)
    if minus is None:
        return 1, start
    before = text[: minus.start()]
    last = before.rstrip()[-1:]
    if before[-1:].isalnum() or (last and (last.isdigit() or last in ")]")):
        return 1, start
    return -1, minus.start()


def _number_mentions(text: str) -> list[tuple[int, int, str]]:
    """(start, end, canonical value) of every number in ``text`` (thousands commas already removed)."""
    found = _word_numbers(text)
    for m in _DIGITS.finditer(text):
        token = m.group(1) or m.group(2)
        found.append((m.start(), m.end(), int(token) if token.isdigit() else float(token)))
    out = []
    for start, end, value in sorted(found):
        sign, start = _signed(text, start)
        canonical = _canonical(sign * value)
        if canonical is not None:
            out.append((start, end, canonical))
    return out


def _parse_number(span: str) -> str | None:
    span = _DIGIT_COMMA.sub("", span)
    found = _number_mentions(span)
    if any(_RANGE_GAP.fullmatch(span[a[1]: b[0]]) for a, b in pairwise(found)):
        return None
    return _first_asserted(span, _mentions(span, lambda c: [(s, v) for s, _, v in _number_mentions(c)]))


def _is_number(text: str) -> bool:
    """Whether ``text`` is one number and nothing else."""
    text = _DIGIT_COMMA.sub("", _unify(text)).strip()
    found = _number_mentions(text)
    return len(found) == 1 and found[0][:2] == (0, len(text))


def _letter(index: int) -> str:
    return string.ascii_uppercase[index]


def _choice_texts(choices: list[str] | None) -> dict[str, str]:
    """Normalised choice text → its letter (the first option where texts repeat)."""
    texts: dict[str, str] = {}
    for i, choice in enumerate(choices or []):
        texts.setdefault(normalize_text(choice), _letter(i))
    texts.pop("", None)
    return texts


def _clause_letters(clause: str, texts: dict[str, str]) -> list[tuple[int, str]]:
    """The options a clause names: "(X)" / "option X" anywhere, else the clause stripped of negators and
    filler as a letter form, a leading letter, or a choice's text (placed at the clause end, so that any
    negator in the clause denies it)."""
    marked = [(m.start(), (m.group(1) or m.group(2)).upper()) for m in _MARKED_LETTER.finditer(clause)]
    if marked:
        return marked
    bare = _FILLER.sub("", _NEGATOR.sub(" ", clause), count=1).strip()
    letter = _LETTER_FORM.fullmatch(bare) or _LEADING_LETTER.match(bare)
    if letter:
        return [(len(clause), letter.group(1).upper())]
    named = texts.get(normalize_text(bare))
    return [(len(clause), named)] if named else []


def _without_choice_texts(span: str, choices: list[str] | None) -> str:
    """The span with the options' own words taken out, so an option worded as a hedge ("likely",
    "not sure") is not read as the model hedging."""
    for choice in sorted(choices or [], key=len, reverse=True):
        if choice.strip():
            span = re.sub(re.escape(choice.strip()), " ", span, flags=re.IGNORECASE)
    return span


def _parse_choice(span: str, choices: list[str] | None) -> str | None:
    n_letters = len(choices) if choices else len(string.ascii_uppercase)
    texts = _choice_texts(choices)
    whole = _LETTER_FORM.fullmatch(span.strip())
    if whole:
        letters = {whole.group(1).upper()}
    elif normalize_text(span) in texts:
        letters = {texts[normalize_text(span)]}
    else:
        span = _REASON.split(span, 1)[0]
        mentions = _mentions(span, lambda c: _clause_letters(c, texts))
        if _hedged(_without_choice_texts(span, choices), mentions):  # "(B) unlikely" names an option
            return None
        letters = {value for value, asserted in mentions if asserted}
    if len(letters) != 1:
        return None
    letter = letters.pop()
    return letter if string.ascii_uppercase.index(letter) < n_letters else None


def parse_answer(text: str | None, kind: str, choices: list[str] | None = None) -> str | None:
    """Read an answer of ``kind`` from a generation; ``None`` when it cannot be read (module rules 1–7).

    ``yesno`` → "yes"/"no"; ``number`` → canonical number string ("3", "2.5", "-3"); ``choice`` →
    a letter within ``len(choices)``; ``text`` → :func:`normalize_text` of the span.
    """
    if kind not in KINDS:
        raise ValueError(f"answer kind must be one of {KINDS}, got {kind!r}")
    span, lead = _locate(_unify(text or ""))
    if span is None or _HEDGE.search(lead):
        return None
    if kind == "text":
        return normalize_text(span) or None
    if kind == "choice":
        return _parse_choice(span, choices)
    span = _REASON.split(span, 1)[0]
    return _parse_yesno(span) if kind == "yesno" else _parse_number(span)


def answer_kind(record: Any) -> str:
    """Which parser a record's gold answer calls for: choices, yes/no, a number, or free text."""
    if field_of(record, "choices"):
        return "choice"
    gold = normalize_text(field_of(record, "answer", ""))
    if gold in ("yes", "no"):
        return "yesno"
    return "number" if _is_number(gold) else "text"


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
