"""Entropy, AUROC, early-stopping sweep and vote tallies, each against a hand-computed case."""

import math

import pytest
import torch

from mmreason.data.schema import Record
from mmreason.eval.auroc import auroc, auroc_standard_error
from mmreason.eval.step_utility import (
    early_stop_sweep,
    entropy_bits,
    entropy_drop,
    mean_curve,
    stop_point,
)
from mmreason.eval.voting import tally, weighted_vote


def test_entropy_of_a_known_distribution_in_bits():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1.0, 1e-12, 1e-12]]))
    assert entropy_bits(logits).tolist() == pytest.approx([1.5, 0.0], abs=1e-6)
    assert entropy_bits(torch.zeros(1, 8)).item() == pytest.approx(3.0)  # uniform over 8 = 3 bits


def test_auroc_hand_case_ties_and_one_class():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes) = 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [True, False]) == pytest.approx(0.5)  # a tie counts half
    assert auroc([0.2, 0.9], [True, True]) is None
    with pytest.raises(ValueError, match="one score per label"):
        auroc([0.1], [True, False])
    # Hanley & McNeil: A = 0.75, 2 positives, 2 negatives
    q1, q2 = 0.75 / 1.25, 2 * 0.75 ** 2 / 1.75
    expected = math.sqrt((0.75 * 0.25 + (q1 - 0.75 ** 2) + (q2 - 0.75 ** 2)) / 4)
    assert auroc_standard_error(0.75, 2, 2) == pytest.approx(expected)


def test_curves_drop_and_mean():
    curves = [[2.0, 1.0, 0.5], [1.0, 1.5]]
    assert entropy_drop(curves[0]) == 1.5 and entropy_drop(curves[1]) == -0.5
    assert mean_curve(curves, 4) == [1.5, 1.25, 0.5, None]


def test_early_stop_sweep_hand_case():
    curves = [[2.0, 0.3, 0.1], [0.2, 0.9, 0.05]]
    right = [[False, True, True], [False, False, True]]
    tokens = [[0, 10, 20], [0, 8, 16]]
    final = [True, False]  # the freely generated answers
    assert stop_point(curves[0], 0.5) == 1 and stop_point(curves[1], 0.5) == 0
    assert stop_point(curves[0], 0.01) == 2  # never below before the conclusion: the whole rationale
    assert stop_point([2.0, 2.0, 0.0], 0.5) == 2  # after the conclusion there is nothing left to save
    rows = early_stop_sweep(curves, right, tokens, [0.01, 0.5], final)
    assert rows[0] == {"threshold": 0.01, "accuracy": 0.5, "accuracy_lost": 0.0, "tokens_saved": 0.0,
                       "stopped_early": 0.0}
    # at 0.5: sample 1 stops after 1 sentence (right, 10 of 20 tokens), sample 2 before any (wrong, 0 of 16)
    assert rows[1]["accuracy"] == 0.5 and rows[1]["accuracy_lost"] == 0.0
    assert rows[1]["tokens_saved"] == pytest.approx(1 - 10 / 36) and rows[1]["stopped_early"] == 1.0
    with pytest.raises(ValueError, match="same non-zero number"):
        early_stop_sweep(curves, right, tokens, [0.5], [True])


def test_clustered_share_counts_samples_not_edits():
    from mmreason.diagnostics.faithfulness import clustered_share, share

    # two samples, two edits each: p = 0.5; clusters (2 of 2) and (0 of 2): C/(C-1)·((2-1)² + (0-1)²)/4² = 0.25
    assert clustered_share([("a", True), ("a", True), ("b", False), ("b", False)]) == {
        "n": 4, "share": 50.0, "se": 50.0}
    assert share(2, 4) == {"n": 4, "share": 50.0, "se": 25.0}  # as if the four edits were independent
    singles = clustered_share([(str(i), i < 3) for i in range(10)])
    assert singles["se"] == pytest.approx(round(100 * math.sqrt(0.3 * 0.7 / 10 * 10 / 9), 2))


def test_weighted_vote_can_overrule_the_majority():
    record = Record(question="how many?", answer="3", task="count")
    texts = ["the answer is 4 .", "the answer is 4 .", "the answer is 3 .", "garbled"]
    assert weighted_vote(texts, record)[:2] == (0, 0.5)
    winner, share, ballots = weighted_vote(texts, record, [0.1, 0.1, 0.9, 0.5])
    assert ballots == ["4", "4", "3", None] and winner == 2 and share == pytest.approx(0.9 / 1.6)
    assert tally(["a", "b"], [1.0, 1.0]) == (0, 0.5)  # a tie goes to the answer seen first
    assert tally([None, None]) == (0, 0.0)
    with pytest.raises(ValueError, match="non-negative weight per ballot"):
        tally(["a"], [-1.0])
