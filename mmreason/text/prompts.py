"""Prompt and target templates shared by the families that answer questions.

The two output formats: ``answer`` (direct) targets ``<answer> A </answer>``;
``cot`` targets ``<think> rationale </think> <answer> A </answer>``. A record
without a rationale falls back to the direct target, so user data with and
without rationales trains with the same recipe.
"""

from __future__ import annotations

from string import ascii_uppercase

from mmreason.data.schema import Record

OUTPUT_FORMATS = ("answer", "cot")
TEMPLATE_WORDS = ("question", "choices", "answer", ":", "(", ")", *ascii_uppercase.lower(), *"0123456789")


def format_choices(choices: list[str] | None) -> str:
    if not choices:
        return ""
    return " choices : " + " ".join(f"( {ascii_uppercase[i]} ) {c}" for i, c in enumerate(choices))


def user_prompt(question: str, choices: list[str] | None = None) -> str:
    """The text after the image: question, lettered choices, then the cue to answer."""
    return f"<image> question : {question.strip()}{format_choices(choices)} answer :"


def target_text(record: Record, output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}; expected one of {OUTPUT_FORMATS}")
    answer = f"<answer> {record.answer.strip()} </answer>"
    if output_format == "cot" and record.rationale:
        return f"<think> {record.rationale.strip()} </think> {answer}"
    return answer
