"""Prompt and target templates shared by the families that answer questions.

The output formats: ``answer`` (direct) targets ``<answer> A </answer>``;
``cot`` targets ``<think> rationale </think> <answer> A </answer>``; ``plain`` targets
the bare answer, as released models (LLaVA) write it. A record
without a rationale falls back to the direct target, so user data with and
without rationales trains with the same recipe. In a conversation, each later
user turn is the prompt without its ``<image>`` (the first turn brought it), and
each earlier reply is written in the same output format.

Two-stage families (MM-CoT) use the encoder–decoder templates instead: the
``qcm_input`` (question, context, options; the rationale appended for the
answer stage), a ``solution : …`` rationale target and a ``the answer is …``
answer target. Models converted from MM-CoT's release read and write upstream's own
forms instead (``templates="mm-cot"``: ``Question: … Context: … Options: (A) … Solution:``,
``Solution: …``, ``The answer is (X).``; amazon-science/mm-cot ``utils_prompt.py``).
"""

from __future__ import annotations

import re
from string import ascii_uppercase

from mmreason.data.schema import Record, Turn
from mmreason.eval.answers import answer_kind, gold_answer

OUTPUT_FORMATS = ("answer", "cot", "plain")
PROMPT = "<image> question : {question}{choices} answer :"  # the zoo's own; released models bring theirs
TEMPLATE_WORDS = ("question", "choices", "answer", ":", "(", ")", *ascii_uppercase.lower(), *"0123456789",
                  "context", "options", "solution", "the", "is", "none", ".", ",", "object", "at", "and")
RATIONALE_CUE = "solution :"
TEMPLATES = ("zoo", "mm-cot")
IMAGE_TAG = re.compile(r"\s*<image>\s*")
UPSTREAM_CUE = "Solution:"  # MM-CoT's rationale cue (prompt formats QCM-E / QCMG-A)


def query_record(question: str, choices: list[str] | None = None, task: str = "vqa") -> Record:
    """The record ``predict`` answers: a non-empty question and, if given, at least two non-empty choices
    (``ascii_uppercase`` letters them, so at most 26)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question must be non-empty text, got {question!r}")
    if choices is not None:
        if (not isinstance(choices, (list, tuple)) or not 2 <= len(choices) <= len(ascii_uppercase)
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise ValueError(f"choices must be 2 to {len(ascii_uppercase)} non-empty texts, got {choices!r}")
        choices = list(choices)
    return Record(question=question, answer="", choices=choices, task=task)


def format_choices(choices: list[str] | None) -> str:
    if not choices:
        return ""
    return " choices : " + " ".join(f"( {ascii_uppercase[i]} ) {c}" for i, c in enumerate(choices))


def check_prompt(template: str) -> str:
    """A prompt template must hold one ``<image>`` and the ``{question}`` field (``{choices}`` optional)."""
    if not isinstance(template, str) or template.count("<image>") != 1 or "{question}" not in template:
        raise ValueError(f"prompt template must contain '<image>' once and '{{question}}', got {template!r}")
    try:
        template.format(question="", choices="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"prompt template {template!r} has a field other than {{question}} and {{choices}}") from err
    return template


def user_prompt(question: str, choices: list[str] | None = None, template: str = PROMPT) -> str:
    """The user turn: the image, the question and its lettered choices, then the cue to answer."""
    return template.format(question=question.strip(), choices=format_choices(choices))


def follow_up_prompt(question: str, choices: list[str] | None = None, template: str = PROMPT) -> str:
    """A later user turn of a conversation: the template without its image, which the first turn brought."""
    return user_prompt(question, choices, IMAGE_TAG.sub(" ", template).strip())


def answer_tag(answer: str) -> str:
    return f"<answer> {answer.strip()} </answer>"


def thinking(rationale: str, answer_next: bool = False) -> str:
    """The start of a ``cot`` target holding ``rationale`` (what a model is made to have written so far); with
    ``answer_next`` the rationale closed and the answer cued, so that the model answers next."""
    parts = ["<think>", rationale.strip()] + (["</think>", "<answer>"] if answer_next else [])
    return " ".join(p for p in parts if p)


def target_text(record: Record | Turn, output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}; expected one of {OUTPUT_FORMATS}")
    if output_format == "plain":
        return record.answer.strip()
    answer = answer_tag(record.answer)
    if output_format == "cot" and record.rationale:
        return f"<think> {record.rationale.strip()} </think> {answer}"
    return answer


def check_templates(templates: str) -> str:
    if templates not in TEMPLATES:
        raise ValueError(f"unknown templates {templates!r}; expected one of {TEMPLATES}")
    return templates


def qcm_input(record: Record, rationale: str | None = None, templates: str = "zoo") -> str:
    """MM-CoT's encoder input: question, context, options (QCM), then the rationale when given (QCMG)."""
    if check_templates(templates) == "mm-cot":
        return _upstream_input(record, rationale)
    options = " ".join(f"( {ascii_uppercase[i]} ) {c}" for i, c in enumerate(record.choices or [])) or "none"
    context = record.meta.get("context")  # converters may also have put it into the question already
    context = f"\ncontext : {str(context).strip()}" if context else ""
    text = f"question : {record.question.strip()}{context}\noptions : {options}"
    return f"{text}\n{RATIONALE_CUE} {rationale.strip()}" if rationale is not None else text


def _upstream_input(record: Record, rationale: str | None) -> str:
    """``create_one_example`` + ``build_train_pair`` of amazon-science/mm-cot, whitespace collapsed as its
    dataset does: QCM-E ends with the ``Solution:`` cue, QCMG-A carries the rationale and ends with ``Answer:``.
    The context is ScienceQA's hint (our ScienceQA shards append it to the question as ``Context: …``; it
    moves back here) and the image caption when the record's meta has one, else ``N/A``."""
    question = record.question.strip()
    hint = str(record.meta.get("hint") or record.meta.get("context") or "").strip()
    if hint and question.endswith(f"Context: {hint}"):
        question = question[: -len(f"Context: {hint}")].strip()
    context = " ".join([hint, str(record.meta.get("caption") or "").strip()]).strip() or "N/A"
    options = " ".join(f"({ascii_uppercase[i]}) {c}" for i, c in enumerate(record.choices or []))
    text = f"Question: {question}\nContext: {context}\nOptions: {options}\n"
    text += f"{UPSTREAM_CUE} {rationale.strip()}\nAnswer:" if rationale is not None else UPSTREAM_CUE
    return " ".join(text.split())


def rationale_target(rationale: str, templates: str = "zoo") -> str:
    if check_templates(templates) == "mm-cot":
        return " ".join(f"{UPSTREAM_CUE} {rationale}".split())
    return f"{RATIONALE_CUE} {rationale.strip()}"


def strip_rationale_cue(text: str, templates: str = "zoo") -> str:
    """A generated rationale without its cue (``solution :``, or upstream's ``Solution:``)."""
    cue = UPSTREAM_CUE if check_templates(templates) == "mm-cot" else RATIONALE_CUE
    text = " ".join(text.split())
    return text[len(cue):].strip() if text.startswith(cue) else text


def answer_cue(record: Record, templates: str = "zoo") -> str:
    """The answer sentence up to its answer (``the answer is (``), for a decoder made to answer next."""
    choice = answer_kind(record) == "choice"
    if check_templates(templates) == "mm-cot":
        return "The answer is (" if choice else "The answer is"
    return "the answer is (" if choice else "the answer is"


def answer_sentence(record: Record, templates: str = "zoo") -> str:
    """``the answer is ( X ) .`` for multiple choice, ``the answer is A .`` otherwise (upstream: ``The answer
    is (X).``)."""
    choice = answer_kind(record) == "choice"
    if check_templates(templates) == "mm-cot":
        return f"The answer is ({gold_answer(record)})." if choice else f"The answer is {record.answer.strip()}."
    if choice:
        return f"the answer is ( {gold_answer(record)} ) ."
    return f"the answer is {record.answer.strip()} ."
