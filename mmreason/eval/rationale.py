"""Rationale quality: generated rationales scored against gold ones with BLEU-1, BLEU-4 and ROUGE-L.

Two-stage models write a rationale before their answer, so their evaluation reports
how close that rationale is to the gold one next to answer accuracy. BLEU is corpus
BLEU from ``sacrebleu`` (0-100 scale); ROUGE-L is the F-measure from ``rouge-score``
averaged over samples (0-1 scale). Texts are scored as given, without lower-casing.

A report keeps the text pairs themselves, since corpus BLEU is not a mean of
per-sample scores, so each rank's report can be ``all_gather``-ed (``state()`` →
``from_state()`` → ``merge``) into exactly the report on the whole set.
"""

from __future__ import annotations

from collections.abc import Sequence

from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

# effective_order only matters for BLEU-4: when no hypothesis in the corpus is long enough to
# have n-grams of some order, that order is dropped instead of zeroing the score, so a set of
# very short rationales is still scored on the orders it has.
_BLEU1 = BLEU(max_ngram_order=1)
_BLEU4 = BLEU(effective_order=True)
_ROUGE_L = RougeScorer(["rougeL"])


class RationaleReport:
    """Prediction/reference rationale pairs, with the count of pairs skipped for lack of a gold rationale."""

    def __init__(self) -> None:
        self.predictions: list[str] = []
        self.references: list[str] = []
        self.skipped = 0

    def add_many(self, predictions: Sequence[str], references: Sequence[str | None]) -> RationaleReport:
        """Add pairs; a pair whose reference is empty or None is skipped and counted in ``skipped``."""
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions for {len(references)} references; "
                "pass one rationale per reference"
            )
        for prediction, reference in zip(predictions, references):
            if not reference:
                self.skipped += 1
                continue
            self.predictions.append(prediction)
            self.references.append(reference)
        return self

    def merge(self, other: RationaleReport) -> RationaleReport:
        """Add another report's pairs into this one (e.g. another rank's); returns self."""
        self.predictions.extend(other.predictions)
        self.references.extend(other.references)
        self.skipped += other.skipped
        return self

    def state(self) -> dict:
        """Plain lists and an int, safe to ``all_gather_object`` or ``json.dumps``."""
        return {
            "predictions": list(self.predictions),
            "references": list(self.references),
            "skipped": self.skipped,
        }

    @classmethod
    def from_state(cls, state: dict) -> RationaleReport:
        report = cls()
        report.predictions = list(state["predictions"])
        report.references = list(state["references"])
        report.skipped = int(state["skipped"])
        return report

    def to_dict(self) -> dict:
        """``{"bleu1", "bleu4"}`` on 0-100, ``"rougeL"`` (mean F-measure) on 0-1, ``"n"`` and ``"skipped"``."""
        n = len(self.predictions)
        if n == 0:
            return {"bleu1": 0.0, "bleu4": 0.0, "rougeL": 0.0, "n": 0, "skipped": self.skipped}
        rouge_l = sum(
            _ROUGE_L.score(reference, prediction)["rougeL"].fmeasure
            for prediction, reference in zip(self.predictions, self.references)
        )
        return {
            "bleu1": _BLEU1.corpus_score(self.predictions, [self.references]).score,
            "bleu4": _BLEU4.corpus_score(self.predictions, [self.references]).score,
            "rougeL": rouge_l / n,
            "n": n,
            "skipped": self.skipped,
        }


def rationale_scores(predictions: Sequence[str], references: Sequence[str | None]) -> dict:
    """One-shot :meth:`RationaleReport.to_dict` over the given pairs."""
    return RationaleReport().add_many(predictions, references).to_dict()
