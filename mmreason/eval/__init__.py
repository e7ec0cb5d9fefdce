"""Evaluation: reading answers out of generations and scoring them."""

from mmreason.eval.accuracy import AccuracyReport, format_table, majority_baseline
from mmreason.eval.answers import (
    answer_kind,
    extract_answer_span,
    gold_answer,
    normalize_text,
    parse_answer,
    score_answer,
)

__all__ = [
    "AccuracyReport",
    "answer_kind",
    "extract_answer_span",
    "format_table",
    "gold_answer",
    "majority_baseline",
    "normalize_text",
    "parse_answer",
    "score_answer",
]
