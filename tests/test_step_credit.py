"""Step-level visual credit: matching crops to rationale boxes, labels, rewards and batch statistics."""

from __future__ import annotations

import pytest
from scipy.optimize import linear_sum_assignment

from mmreason.rl.rewards import box_iou
from mmreason.rl.step_credit import (
    ACTION_LABELS,
    action_rewards,
    action_shares,
    assign_actions,
    match_actions,
    mean_best_iou,
)

A = [0, 0, 10, 10]
B = [20, 20, 30, 30]
A_TOP = [0, 0, 10, 6]      # IoU 0.6 with A
A_BOTTOM = [0, 4, 10, 10]  # IoU 0.6 with A, 0.2 with A_TOP
FAR = [40, 40, 50, 50]


def test_two_crops_on_two_boxes_are_correct_in_either_order():
    assert assign_actions([B, A], [A, B]) == ["correct", "correct"]
    assert match_actions([B, A], [A, B]) == [1, 0]


def test_the_same_box_twice_is_correct_then_redundant():
    assert assign_actions([A, A], [A, B]) == ["correct", "redundant"]
    assert assign_actions([A, A_TOP], [A]) == ["correct", "redundant"]  # a looser second look


def test_credit_goes_to_the_earlier_crop_not_the_tighter_one():
    # Plain Hungarian on 1 - IoU would credit the exact second crop; the first one already covered A.
    assert assign_actions([A_TOP, A], [A]) == ["correct", "redundant"]
    assert match_actions([A_TOP, A], [A]) == [0, None]


def test_far_malformed_and_empty_rationale_are_erroneous():
    assert assign_actions([FAR, None, A], [A]) == ["erroneous", "erroneous", "correct"]
    assert assign_actions([A, B], []) == ["erroneous", "erroneous"]
    assert assign_actions([], [A]) == []


def test_duplicate_ground_truth_boxes_count_once():
    assert assign_actions([A, A], [A, A, B]) == ["correct", "redundant"]
    assert assign_actions([A, B], [A, A, B]) == ["correct", "correct"]
    assert match_actions([B, A], [A, A, B]) == [2, 0]  # reported at the first index


def test_matching_beats_greedy_by_order():
    # The first crop is exactly A and also reaches A_TOP (0.6); the second reaches A only.
    # Greedy-by-order gives the first crop its best box A and the second would be redundant.
    # The design matches one-to-one for the most correct actions: first -> A_TOP, second -> A.
    assert box_iou(A, A_TOP) == pytest.approx(0.6) and box_iou(A_BOTTOM, A_TOP) == pytest.approx(0.2)
    assert assign_actions([A, A_BOTTOM], [A, A_TOP]) == ["correct", "correct"]
    assert match_actions([A, A_BOTTOM], [A, A_TOP]) == [1, 0]


def test_more_correct_actions_beat_more_total_iou():
    # 1-D boxes: IoU = overlap of the x intervals. C = [8, 20] is reached by nothing.
    a, top, c = [0, 0, 10, 1], [0, 0, 5, 1], [8, 0, 20, 1]
    first, second = [0, 0, 10, 1], [4, 0, 10, 1]
    # Plain Hungarian on 1 - IoU pairs first-a (1.0) with second-c (0.125 < tau): one correct action.
    iou = [[box_iou(p, g) for g in (a, top, c)] for p in (first, second)]
    _, cols = linear_sum_assignment([[1 - v for v in row] for row in iou])
    assert list(cols) == [0, 2]
    assert assign_actions([first, second], [a, top, c]) == ["correct", "correct"]


def test_tau_is_the_reach_threshold():
    assert assign_actions([A_TOP], [A], tau=0.6) == ["correct"]
    assert assign_actions([A_TOP], [A], tau=0.7) == ["erroneous"]
    with pytest.raises(ValueError, match="tau"):
        assign_actions([A], [A], tau=0.0)


def test_action_rewards_take_magnitudes():
    labels = ["correct", "redundant", "erroneous"]
    assert action_rewards(labels) == [1.0, 0.0, -1.0]
    assert action_rewards(labels, r_correct=0.5, r_redundant=0.1, r_erroneous=0.3) == [0.5, -0.1, -0.3]
    with pytest.raises(ValueError, match="magnitudes"):
        action_rewards(labels, r_erroneous=-1.0)
    with pytest.raises(ValueError, match="unknown"):
        action_rewards(["right"])


def test_mean_best_iou_by_hand():
    # A_TOP: best 0.6 (A); FAR: 0; None is skipped -> (0.6 + 0) / 2.
    assert mean_best_iou([A_TOP, None, FAR], [A, B]) == pytest.approx(0.3)
    assert mean_best_iou([A], []) == 0.0
    assert mean_best_iou([None], [A]) is None
    assert mean_best_iou([], [A]) is None


def test_action_shares_over_a_batch():
    shares = action_shares([["correct", "redundant"], [], ["correct", "erroneous"]])
    assert shares == {"correct": 0.5, "redundant": 0.25, "erroneous": 0.25}
    assert action_shares([[], []]) == dict.fromkeys(ACTION_LABELS, 0.0)
