import json

import pytest

from mmreason.eval.rationale import RationaleReport, rationale_scores

PREDICTIONS = [
    "i see a red circle at the left .",
    "the blue square is left",
    "there are two shapes",
    "no circle here",
]
REFERENCES = [
    "i see a red circle at the left .",
    "the red circle is left of the square",
    "i count two shapes in the image",
    "a blue square at the right",
]


def test_identical_texts_score_perfectly():
    scores = rationale_scores(
        ["the red circle is left of the square"], ["the red circle is left of the square"]
    )
    assert scores["bleu4"] == pytest.approx(100.0)
    assert scores["bleu1"] == pytest.approx(100.0)
    assert scores["rougeL"] == pytest.approx(1.0)
    assert scores["n"] == 1


def test_disjoint_texts_score_zero():
    scores = rationale_scores(["yes no maybe so"], ["the red circle is left"])
    assert scores["bleu4"] == 0.0
    assert scores["bleu1"] == 0.0
    assert scores["rougeL"] == 0.0


def test_rouge_l_matches_hand_computed_lcs():
    # prediction: the red square is left               (5 tokens)
    # reference:  the red circle is left of the square (8 tokens)
    # LCS = "the red is left" = 4 ("square" comes last in the reference, so it cannot join "is left").
    # P = 4/5, R = 4/8, F = 2PR / (P + R) = 0.8 / 1.3 = 0.6153846...
    scores = rationale_scores(["the red square is left"], ["the red circle is left of the square"])
    assert scores["rougeL"] == pytest.approx(0.8 / 1.3, abs=1e-6)


def test_bleu1_matches_hand_computed_precision_and_brevity_penalty():
    # prediction: the blue square is left               (5 tokens)
    # reference:  the red circle is left of the square  (8 tokens)
    # clipped unigram matches: the, square, is, left = 4 of 5 -> precision 0.8
    # brevity penalty = exp(1 - 8/5) = exp(-0.6) = 0.5488116
    # BLEU-1 = 100 * 0.8 * 0.5488116 = 43.90493
    scores = rationale_scores(["the blue square is left"], ["the red circle is left of the square"])
    assert scores["bleu1"] == pytest.approx(43.90493, abs=1e-4)
    assert scores["bleu4"] < scores["bleu1"]


def test_merged_reports_equal_one_report_over_all_pairs():
    whole = RationaleReport().add_many(PREDICTIONS + ["x"], REFERENCES + [""])
    first = RationaleReport().add_many(PREDICTIONS[:2], REFERENCES[:2])
    second = RationaleReport().add_many(PREDICTIONS[2:] + ["x"], REFERENCES[2:] + [""])
    merged = first.merge(second).to_dict()
    expected = whole.to_dict()
    assert merged == pytest.approx(expected)
    assert merged["n"] == 4 and merged["skipped"] == 1
    # corpus BLEU is not the mean of per-shard BLEU, so merging must pool the pairs themselves
    shard_bleu4 = [
        rationale_scores(PREDICTIONS[:2], REFERENCES[:2])["bleu4"],
        rationale_scores(PREDICTIONS[2:], REFERENCES[2:])["bleu4"],
    ]
    assert expected["bleu4"] != pytest.approx(sum(shard_bleu4) / 2, abs=1.0)


def test_state_round_trips_through_json():
    report = RationaleReport().add_many(PREDICTIONS + ["x"], REFERENCES + [None])
    restored = RationaleReport.from_state(json.loads(json.dumps(report.state())))
    assert restored.to_dict() == report.to_dict()
    assert restored.to_dict()["skipped"] == 1


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"3 predictions for 2 references"):
        RationaleReport().add_many(["a", "b", "c"], ["a", "b"])


def test_empty_reference_is_skipped_and_counted():
    scores = rationale_scores(["the red circle", "anything", "whatever"], ["the red circle", "", None])
    assert scores["n"] == 1
    assert scores["skipped"] == 2
    assert scores["bleu1"] == pytest.approx(100.0)
    assert scores["rougeL"] == pytest.approx(1.0)


def test_empty_report_scores_zero():
    assert RationaleReport().to_dict() == {"bleu1": 0.0, "bleu4": 0.0, "rougeL": 0.0, "n": 0, "skipped": 0}
