"""Does a rationale scorer pick better answers than a plain majority, at the same number of samples?

Both rules vote over the *same* K sampled outputs per question, so the comparison is paired:
the difference's standard error comes from the per-question differences, not from two
independent accuracies. The scorer's AUROC on the model's own greedy rationales, labelled
true or false against the scene graph, says how well it judges this model's writing.
"""

from __future__ import annotations

import math

from mmreason.data.grounding import rationale_is_true
from mmreason.diagnostics.faithfulness import share
from mmreason.eval.answers import gold_answer
from mmreason.eval.auroc import auroc_report
from mmreason.eval.voting import tally
from mmreason.rl.crop import strip_crops


class VotingComparison:
    def __init__(self) -> None:
        self.greedy_scores: list[float] = []
        self.greedy_true: list[bool] = []
        self.majority: list[bool] = []
        self.weighted: list[bool] = []
        self.any_right: list[bool] = []

    def add_greedy(self, scorer, images, records, described) -> None:
        """Score each greedy rationale; label it by the scene graph (records without one are left out)."""
        rows = [i for i, r in enumerate(records) if r.meta.get("scene")]
        if not rows:
            return
        scores = scorer.score(images[rows], [records[i] for i in rows],  # the words, as the scorer learnt them
                              [strip_crops(described[i].get("rationale") or "") for i in rows], skip_too_long=True)
        for i, score in zip(rows, scores.tolist()):
            if score == score:  # NaN: over the scorer's max_length, left out
                self.greedy_scores.append(score)
                self.greedy_true.append(rationale_is_true(described[i].get("rationale") or "", records[i]))

    def add_votes(self, records, sampled: list[dict]) -> None:
        """Per question, the K ballots and scores of one sampling: majority's and the scorer's winners."""
        for record, response in zip(records, sampled):
            ballots, gold = response["votes"], gold_answer(record)
            self.majority.append(ballots[tally(ballots)[0]] == gold)
            self.weighted.append(ballots[tally(ballots, response["scores"])[0]] == gold)
            self.any_right.append(gold in ballots)

    def to_dict(self, votes: int) -> dict:
        out = {"greedy_rationales": auroc_report(self.greedy_scores, self.greedy_true)}
        n = len(self.majority)
        if n:
            diffs = [int(w) - int(m) for w, m in zip(self.weighted, self.majority)]
            mean = sum(diffs) / n
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
            out["votes"] = {"k": votes, "majority": share(sum(self.majority), n),
                            "scorer": share(sum(self.weighted), n),
                            "scorer_minus_majority": {"points": round(100 * mean, 2),
                                                      "se": round(100 * sd / math.sqrt(n), 2)},
                            "any_sample_right": share(sum(self.any_right), n)}
        return out
