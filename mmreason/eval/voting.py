"""Voting over K sampled answers to one question: plain majority, or votes weighted by a score.

Answers are compared after parsing (``( b )`` and ``b`` are one vote); unparseable texts do not
vote. Weighted voting is RR's use of a rationale scorer at inference: each sample's vote counts
its rationale's score, so a few well-reasoned samples can outvote many careless ones.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from mmreason.data.schema import Record
from mmreason.eval.answers import answer_kind, field_of, parse_answer

log = logging.getLogger(__name__)


def ballot(text: str | None, record: Record) -> str | None:
    """The answer ``text`` gives to ``record``'s question, in canonical form (None where it does not parse)."""
    kind = answer_kind(record) if field_of(record, "answer") else ("choice" if record.choices else "text")
    return parse_answer(text, kind, record.choices)


def ballots_of(texts: Sequence[str], record: Record) -> list[str | None]:
    """Each text's :func:`ballot`."""
    return [ballot(t, record) for t in texts]


def per_record(n_texts: int, n_records: int) -> int:
    """K, when ``n_texts`` texts hold K per record (a record's K adjacent); an error naming the counts otherwise."""
    k = n_texts // n_records if n_records else 0
    if k < 1 or k * n_records != n_texts:
        raise ValueError(f"got {n_texts} texts for {n_records} records; pass K per record, a record's K adjacent")
    return k


def weighted_vote(texts: Sequence[str], record: Record, weights: Sequence[float] | None = None
                  ) -> tuple[int, float, list[str | None]]:
    """(index of a text carrying the winning answer, the winner's share of the total weight, every ballot).

    ``weights`` (one per text, ≥ 0; default all 1: a plain majority) weigh each ballot; ties go to
    the answer first seen. If no text parses, the first is kept with share 0.
    """
    ballots = ballots_of(texts, record)
    winner, share = tally(ballots, weights)
    return winner, share, ballots


def tally(ballots: Sequence[str | None], weights: Sequence[float] | None = None) -> tuple[int, float]:
    """(index of a ballot carrying the answer with the most weight, that answer's share of the total weight);
    ties go to the answer first seen, None ballots do not vote, and with none left (0, 0.0)."""
    weights = [1.0] * len(ballots) if weights is None else [float(w) for w in weights]
    if len(weights) != len(ballots) or any(w < 0 for w in weights):
        raise ValueError(f"need one non-negative weight per ballot: {len(ballots)} ballots, weights {weights}")
    totals: dict[str, float] = defaultdict(float)
    for ballot, weight in zip(ballots, weights):
        if ballot is not None:
            totals[ballot] += weight
    if not totals:
        return 0, 0.0
    best = max(totals, key=lambda b: (totals[b], -ballots.index(b)))
    total = sum(weights)
    return ballots.index(best), (totals[best] / total if total > 0 else 0.0)


def scored_votes(texts: Sequence[str], rationales: Sequence[str], records: Sequence[Record], images,
                 preprocess, scorer=None) -> list[dict]:
    """K sampled outputs per record (adjacent) voted per record: ``text`` and ``rationale`` of the winner,
    ``confidence`` (its share of the votes or of the scores), ``votes`` (every ballot) and, with a
    ``scorer`` (a rationale scorer model reading the same images), ``scores``: each sample's weight."""
    k = per_record(len(texts), len(records))
    weights = None
    if scorer is not None:
        if scorer.preprocess.to_dict() != preprocess.to_dict():
            raise ValueError("the rationale scorer reads images preprocessed differently from this model "
                             f"({scorer.preprocess.to_dict()} vs {preprocess.to_dict()}); use a scorer trained "
                             "on this model's image size and normalisation")
        scores = scorer.score(images, list(records), list(rationales), skip_too_long=True)
        if scores.isnan().any():
            log.warning("%d sampled rationale(s) exceed the scorer's max_length: their votes weigh 0",
                        int(scores.isnan().sum()))
        weights = scores.nan_to_num(0.0).tolist()
    out = []
    for i, record in enumerate(records):
        group = slice(i * k, (i + 1) * k)
        winner, share, ballots = weighted_vote(texts[group], record, weights[group] if weights else None)
        response = {"text": texts[group][winner], "rationale": rationales[group][winner], "confidence": share,
                    "votes": ballots}
        if weights:
            response["scores"] = [round(w, 4) for w in weights[group]]
        out.append(response)
    return out
