"""The evaluators shared by training and ``mmreason eval``: hand-computed scores and rank merging."""

from __future__ import annotations

import pytest
from conftest import valid_records

from mmreason.eval.evaluators import AnswerEvaluator, CropEvaluator, PerceptionEvaluator, RationaleEvaluator
from mmreason.eval.rationale import rationale_scores
from mmreason.training.evaluation import gathered


def test_answers_are_scored_per_task_against_the_majority_class():
    records = valid_records(4)  # answers yes/no/yes/no, tasks exist/count/exist/count
    evaluator = AnswerEvaluator()
    responses = [{"text": "<answer> yes"}, {"text": "<answer> yes"}, {"text": "<answer> no"}, {"text": "???"}]
    evaluator.add(responses, {"records": records})
    metrics = evaluator.metrics()
    assert metrics["accuracy"] == pytest.approx(0.25)  # only the first is right
    assert metrics["accuracy_exist"] == pytest.approx(0.5) and metrics["accuracy_count"] == 0.0
    assert metrics["parse_failure_rate"] == pytest.approx(0.25)
    report = evaluator.report()
    assert report["n"] == 4 and "mean_confidence" not in report
    assert report["majority_baseline"]["all"] == pytest.approx(1.0)  # per task, one answer each
    assert "| exist |" in evaluator.table()


def test_a_confidence_is_averaged_only_where_answers_were_voted():
    evaluator = AnswerEvaluator()
    evaluator.add([{"text": "<answer> yes", "confidence": 0.6}, {"text": "<answer> yes", "confidence": None}],
                  {"records": valid_records(2)})
    assert evaluator.report()["mean_confidence"] == pytest.approx(0.6)


def test_merged_rank_states_equal_one_evaluator_over_all_samples():
    records = valid_records(4)
    texts = [{"text": "<answer> yes", "rationale": "i see a red circle ."}, {"text": "<answer> no", "rationale": "x"},
             {"text": "<answer> no", "rationale": "i see"}, {"text": "<answer> no", "rationale": ""}]
    whole, first, second = ([AnswerEvaluator(), RationaleEvaluator()] for _ in range(3))
    for evaluator in whole:
        evaluator.add(texts, {"records": records})
    for part, lo, hi in ((first, 0, 2), (second, 2, 4)):
        for evaluator in part:
            evaluator.add(texts[lo:hi], {"records": records[lo:hi]})
    merged = [AnswerEvaluator(), RationaleEvaluator()]
    for part in (first, second):
        for into, evaluator in zip(merged, part):
            into.merge_state(evaluator.state())
    for into, evaluator in zip(merged, whole):
        assert into.metrics() == pytest.approx(evaluator.metrics())
    expected = rationale_scores([t["rationale"] for t in texts], [r.rationale for r in records])
    assert merged[1].metrics()["rationale_bleu1"] == pytest.approx(expected["bleu1"])
    assert gathered(whole, merged) is whole  # one process: nothing to gather


def test_crops_score_the_best_iou_of_each_answer_with_the_rationale_boxes():
    records = valid_records(2)  # one step box [1, 1, 10, 10] each, image 32 px
    evaluator = CropEvaluator(image_size=32)
    evaluator.add([{"text": "<crop> [ 1 , 1 , 1 0 , 1 0 ] </crop> <answer> yes"}, {"text": "<answer> no"}],
                  {"records": records})
    metrics = evaluator.metrics()
    assert metrics["mean_crop_iou"] == pytest.approx(1.0)  # only the answer with a crop counts
    assert metrics["actions_per_rollout"] == pytest.approx(0.5)


def test_perception_states_merge_as_counts():
    scene = [{"colour": "red", "shape": "circle", "size": "small", "center": [8, 8], "box": [4, 4, 12, 12]}]
    seen = [{**scene[0]}]
    a, b = PerceptionEvaluator(32), PerceptionEvaluator(32)
    a.scores.add(seen, scene)
    b.scores.add([], scene)
    a.merge_state(b.state())
    metrics = a.metrics()
    assert metrics["colour"] == pytest.approx(0.5) and metrics["exact_count"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.5) and metrics["precision"] == pytest.approx(1.0)
