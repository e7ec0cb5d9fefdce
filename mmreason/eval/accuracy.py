"""Answer accuracy over a test set, per task, mergeable across ranks, read against chance.

A report holds only integer counts, so each rank can score its own shard of
the test set and the counts can be ``all_gather``-ed (``state()`` →
``from_state()`` → ``merge``) into exactly the report on the whole set.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from mmreason.eval.answers import field_of, gold_answer, score_answer

log = logging.getLogger(__name__)

_COUNTS = ("n", "correct", "parse_failures")


def _task(record: Any) -> str:
    return field_of(record, "task") or "vqa"


def _rate(num: int, den: int) -> float:
    return num / den if den else 0.0


class AccuracyReport:
    """Counts of samples, correct answers and parse failures, overall and per task.

    A parse failure counts as a wrong answer in ``accuracy`` and is also
    reported on its own, so a model that stops emitting answers is told apart
    from one that answers wrongly.
    """

    def __init__(self) -> None:
        self.per_task: dict[str, dict[str, int]] = {}

    def add(self, prediction_text: str | None, record: Any) -> tuple[bool, str | None]:
        """Score one generation against its record; returns ``(correct, parsed)``."""
        correct, parsed = score_answer(prediction_text, record)
        counts = self.per_task.setdefault(_task(record), dict.fromkeys(_COUNTS, 0))
        counts["n"] += 1
        counts["correct"] += int(correct)
        if parsed is None:
            counts["parse_failures"] += 1
            log.debug("no %s answer parsed from %r", _task(record), prediction_text)
        return correct, parsed

    def add_many(self, predictions: Sequence[str | None], records: Sequence[Any]) -> AccuracyReport:
        if len(predictions) != len(records):
            raise ValueError(
                f"got {len(predictions)} predictions for {len(records)} records; pass one generation per record"
            )
        for prediction, record in zip(predictions, records):
            self.add(prediction, record)
        return self

    def merge(self, other: AccuracyReport) -> AccuracyReport:
        """Add another report's counts into this one (e.g. another rank's); returns self."""
        for task, counts in other.per_task.items():
            mine = self.per_task.setdefault(task, dict.fromkeys(_COUNTS, 0))
            for key in _COUNTS:
                mine[key] += counts[key]
        return self

    def state(self) -> dict[str, dict[str, int]]:
        """Plain ``{task: {n, correct, parse_failures}}`` ints, safe to ``all_gather_object``."""
        return {task: dict(counts) for task, counts in self.per_task.items()}

    @classmethod
    def from_state(cls, state: dict[str, dict[str, int]]) -> AccuracyReport:
        report = cls()
        report.per_task = {task: {key: int(counts[key]) for key in _COUNTS} for task, counts in state.items()}
        return report

    def totals(self) -> dict[str, int]:
        return {key: sum(counts[key] for counts in self.per_task.values()) for key in _COUNTS}

    def to_dict(self, baseline: dict[str, float] | None = None) -> dict:
        """Summary for logs and model cards; ``baseline`` (from :func:`majority_baseline`) is attached as is."""
        total = self.totals()
        out = {
            "n": total["n"],
            "accuracy": _rate(total["correct"], total["n"]),
            "parse_failure_rate": _rate(total["parse_failures"], total["n"]),
            "per_task": {
                task: {
                    "n": counts["n"],
                    "accuracy": _rate(counts["correct"], counts["n"]),
                    "parse_failures": counts["parse_failures"],
                }
                for task, counts in sorted(self.per_task.items())
            },
        }
        if baseline is not None:
            out["majority_baseline"] = dict(baseline)
        return out


def majority_baseline(records: Iterable[Any]) -> dict[str, float]:
    """Accuracy of always giving each task's most frequent gold answer: ``{task: acc, ..., "all": acc}``.

    "all" pools the tasks, each answered with its own majority answer, which is
    the chance level a model reaches by reading the question type alone.
    """
    answers: dict[str, Counter] = {}
    for record in records:
        answers.setdefault(_task(record), Counter())[gold_answer(record)] += 1
    hits = {task: counter.most_common(1)[0][1] for task, counter in answers.items()}
    sizes = {task: sum(counter.values()) for task, counter in answers.items()}
    out = {task: hits[task] / sizes[task] for task in sorted(answers)}
    out["all"] = _rate(sum(hits.values()), sum(sizes.values()))
    return out


def format_table(report: AccuracyReport, baseline: dict[str, float] | None = None) -> str:
    """Markdown table, one row per task and an "all" row; a majority column when ``baseline`` is given."""
    header = ["task", "n", "accuracy %", "parse failures %"] + (["majority %"] if baseline is not None else [])
    rows = [(task, counts) for task, counts in sorted(report.per_task.items())]
    rows.append(("all", report.totals()))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, counts in rows:
        cells = [
            task,
            str(counts["n"]),
            f"{100 * _rate(counts['correct'], counts['n']):.1f}",
            f"{100 * _rate(counts['parse_failures'], counts['n']):.1f}",
        ]
        if baseline is not None:
            cells.append(f"{100 * baseline[task]:.1f}" if task in baseline else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
