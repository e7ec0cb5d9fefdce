"""Rewards: format, accuracy (exact and numeric), IoU, Thurstone fidelity, weighted sums and column checks."""

from __future__ import annotations

import math

import pytest

from mmreason.rl.rewards import (
    THURSTONE_EPS,
    accuracy_reward,
    box_iou,
    format_reward,
    iou_reward,
    numeric_accuracy_reward,
    thurstone_fidelity_reward,
    weighted_sum,
)


def test_format_reward_accepts_the_two_parts_and_crops_inside_think():
    good = ["<think>a</think><answer>b</answer>",
            "  <think>\nline one\nline two\n</think>\n<answer> 3 </answer>\n",
            "<think>look <crop>[1, 2, 30, 40]</crop> then count</think> <answer>2</answer>"]
    bad = ["<answer>2</answer>",
           "<think>only thinking</think>",
           "Sure! <think>a</think><answer>b</answer>",
           "<think>a</think><answer>b</answer> done",
           "<answer>b</answer><think>a</think>",
           "<think>a</think><answer>1</answer><answer>2</answer>",
           "<think>a</think><crop>[1,2,3,4]</crop><answer>b</answer>"]
    assert format_reward(None, good + bad) == [1.0] * len(good) + [0.0] * len(bad)


def test_accuracy_reward_exact_match_after_normalisation():
    completions = ["<answer> Red </answer>", "<think>x</think><answer>Yes.</answer>", "<answer>4</answer>",
                   "the answer is cat"]
    assert accuracy_reward(None, completions, answer=["red", "yes", "3", "cat"]) == [1.0, 1.0, 0.0, 0.0]


def test_numeric_accuracy_within_tolerance_and_exact_otherwise():
    reward = numeric_accuracy_reward(abs_tol=0.1)
    completions = ["<answer>3.05</answer>", "<answer>3.2</answer>", "<answer>1,000</answer>",
                   "<answer>Red</answer>", "<answer>three</answer>", "no tags 3"]
    answers = ["3", "3", "1000.0", "red", "3", "3"]
    assert reward(None, completions, answer=answers) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    relative = numeric_accuracy_reward(rel_tol=0.05)
    assert relative(None, ["<answer>104</answer>", "<answer>106</answer>"], answer=[100, 100]) == [1.0, 0.0]


def test_box_iou_and_iou_reward_by_hand():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)  # intersection 1, union 4 + 4 − 1
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0  # empty union
    completions = ["<answer>[0, 0, 2, 2]</answer>", "<answer>[1,1,3,3]</answer>", "<answer>[1, 2]</answer>",
                   "[1,1,3,3]"]
    assert iou_reward(None, completions, box=[[1, 1, 3, 3]] * 4) == pytest.approx([1 / 7, 1.0, 0.0, 0.0])


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_thurstone_fidelity_on_two_images_by_hand():
    # image "a" (quality 0.8) sampled 3, 5 and one unreadable score; image "b" (quality 0.3) sampled 2, 2.
    # a: μ 4, unbiased σ² 2 (the unreadable one is left out); b: μ 2, σ² 0. a is better: gt 1 for a, 0 for b.
    completions = ["<answer>3</answer>", "<answer>5</answer>", "<answer>great</answer>",
                   "<answer>2</answer>", "<answer>2</answer>"]
    image_id, quality = ["a", "a", "a", "b", "b"], [0.8, 0.8, 0.8, 0.3, 0.3]
    e = THURSTONE_EPS
    p_a3, p_a5 = _phi((3 - 2) / math.sqrt(2 + 0 + e)), _phi((5 - 2) / math.sqrt(2 + 0 + e))
    p_b = _phi((2 - 4) / math.sqrt(0 + 2 + e))
    expected = [math.sqrt(p_a3 + e) + math.sqrt(e), math.sqrt(p_a5 + e) + math.sqrt(e), 0.0,
                math.sqrt(e) + math.sqrt(1 - p_b + e), math.sqrt(e) + math.sqrt(1 - p_b + e)]
    got = thurstone_fidelity_reward(None, completions, image_id=image_id, quality=quality)
    assert got == pytest.approx(expected)
    assert got[1] > got[0]  # the higher score for the better image is rewarded more


def test_thurstone_ties_and_a_lone_image():
    same = ["<answer>1</answer>"] * 4
    got = thurstone_fidelity_reward(None, same, image_id=[0, 0, 1, 1], quality=[2.0] * 4)
    assert got == pytest.approx([2 * math.sqrt(0.25 + THURSTONE_EPS)] * 4)  # p = 0.5, gt = 0.5
    assert thurstone_fidelity_reward(None, same[:2], image_id=[0, 0], quality=[2.0, 2.0]) == [0.0, 0.0]


def test_weighted_sum_returns_totals_and_unweighted_components():
    completions = ["<think>a</think><answer>red</answer>", "<answer>blue</answer>"]
    fns = {"format": (format_reward, 0.5), "accuracy": (accuracy_reward, 1.0)}
    totals, components = weighted_sum(fns, None, completions, answer=["red", "red"], image_id=[0, 1])
    assert totals == [1.5, 0.0]
    assert components == {"format": [1.0, 0.0], "accuracy": [1.0, 0.0]}
    totals, components = weighted_sum([format_reward, accuracy_reward], None, completions, answer=["red", "blue"])
    assert totals == [2.0, 1.0] and list(components) == ["format_reward", "accuracy_reward"]


def test_a_reward_that_does_not_apply_is_left_out_as_trl_does(caplog):
    def only_the_first(prompts, completions, **_):
        return [1.0] + [None] * (len(completions) - 1)

    def never(prompts, completions, **_):
        return [None] * len(completions)

    totals, components = weighted_sum({"first": (only_the_first, 2.0), "format": (format_reward, 0.5)}, None,
                                      ["<think>a</think><answer>red</answer>", "b"])
    assert totals == [2.5, 0.0]
    assert components["first"][0] == 1.0 and math.isnan(components["first"][1])
    with caplog.at_level("WARNING"):
        totals, _ = weighted_sum({"first": (only_the_first, 1.0), "never": (never, 1.0)}, None, ["a", "b", "c"])
    assert totals == [1.0, 0.0, 0.0]
    assert "no reward applies to 2 of 3 completions" in caplog.text


def test_a_column_of_the_wrong_length_names_the_column_and_both_lengths():
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        accuracy_reward(None, ["<answer>a</answer>", "<answer>b</answer>"], answer=["a"])
    with pytest.raises(ValueError, match="column 'quality' has 3 values for 2 completions"):
        thurstone_fidelity_reward(None, ["<answer>1</answer>"] * 2, image_id=[0, 1], quality=[1, 2, 3])
