import pytest
import torch

from mmreason.eval.segmentation import IGNORE, SegmentationReport, intersection_union, mask_score


def grid(rows):
    return torch.tensor(rows, dtype=torch.uint8)


def logits(on):
    """+3 where ``on`` is 1, -3 elsewhere."""
    return torch.tensor(on, dtype=torch.float32) * 6 - 3


TARGET = grid([[1, 1, 0, 0],
               [1, 1, 0, 0],
               [0, 0, 0, 0],
               [0, 0, 0, 0]])
PRED = [[1, 1, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0]]
X = IGNORE
TARGET_IGNORE = grid([[1, 1, X, 0],
                      [1, 1, 0, 0],
                      [0, 0, 0, 0],
                      [0, 0, 0, X]])
PRED_IGNORE = [[1, 1, 1, 0],
               [0, 0, 0, 0],
               [0, 0, 0, 0],
               [0, 0, 0, 1]]


@pytest.mark.parametrize("semantics", ["lisa", "segzero"])
def test_four_by_four_known_intersection_and_union(semantics):
    # target {(0,0),(0,1),(1,0),(1,1)}, prediction {(0,0),(0,1),(0,2)}: I = 2, U = 4 + 3 - 2 = 5
    assert intersection_union(logits(PRED), TARGET, semantics) == (2, 5)
    assert intersection_union(torch.tensor(PRED, dtype=torch.bool), TARGET, semantics) == (2, 5)
    assert intersection_union(torch.tensor(PRED), TARGET.bool(), semantics) == (2, 5)
    report = SegmentationReport(semantics)
    score = report.add(logits(PRED), TARGET)
    expected = 2 / (5 + 1e-5) if semantics == "lisa" else 2 / 5
    assert score == expected
    assert report.to_dict()["giou"] == expected
    assert report.to_dict()["ciou"] == 2 / 5


def test_logits_threshold_is_strictly_positive():
    zero = torch.zeros(4, 4)
    assert intersection_union(zero, TARGET) == (0, 4)
    assert intersection_union(zero + 1e-6, TARGET) == (4, 16)


def test_ignore_pixels_excluded_under_lisa_counted_under_segzero():
    # LISA: the two predicted ignore pixels vanish: I = |{(0,0),(0,1)}| = 2, U = |target| = 4
    assert intersection_union(logits(PRED_IGNORE), TARGET_IGNORE, "lisa") == (2, 4)
    # Seg-Zero: ignore is target, 6 pixels; all 4 predicted pixels hit it: I = 4, U = 6
    assert intersection_union(logits(PRED_IGNORE), TARGET_IGNORE, "segzero") == (4, 6)
    # a target of only ignore pixels is empty under LISA, two target pixels under Seg-Zero
    only_ignore = grid([[X, X, 0, 0]] + [[0, 0, 0, 0]] * 3)
    assert intersection_union(logits([[0] * 4] * 4), only_ignore, "lisa") == (0, 0)
    assert intersection_union(logits([[0] * 4] * 4), only_ignore, "segzero") == (0, 2)
    assert intersection_union(logits([[1, 1, 0, 0]] + [[0] * 4] * 3), only_ignore, "lisa") == (0, 0)


def test_empty_target_scores_one_under_lisa_and_is_dropped_or_zero_under_segzero():
    empty = torch.zeros(4, 4, dtype=torch.uint8)
    no_pred = logits([[0] * 4] * 4)
    for pred in (no_pred, None):
        lisa = SegmentationReport("lisa")
        assert lisa.add(pred, empty) == 1.0
        assert lisa.to_dict()["giou"] == 1.0 and lisa.to_dict()["ciou"] == 0.0  # ΣU = 0: cIoU is 0
    # Seg-Zero: an empty prediction on an empty target is dropped; a parse failure (None) there scores 0
    segzero = SegmentationReport("segzero")
    assert segzero.add(TARGET.bool(), TARGET) == 1.0
    assert segzero.add(no_pred, empty, group="short") is None
    summary = segzero.to_dict()
    assert (summary["giou"], summary["n"], summary["dropped"]) == (1.0, 1, 1)  # scored as 0 it would be 0.5
    assert summary["per_group"] == {} and segzero.totals()["dropped"] == 1
    assert segzero.add(None, empty) == 0.0
    summary = segzero.to_dict()
    assert (summary["giou"], summary["ciou"], summary["n"], summary["dropped"]) == (0.5, 1.0, 2, 1)
    # an empty target with a false positive has U > 0 and scores 0 under both
    for semantics in ("lisa", "segzero"):
        assert SegmentationReport(semantics).add(logits(PRED), empty) == 0.0
    assert mask_score(0, 0, "lisa") == 1.0 and mask_score(0, 0, "segzero") == 0.0


def test_none_prediction_under_both_semantics():
    # LISA: an empty mask, I = 0, U = |target outside ignore| = 4; Seg-Zero: I = 0, U = |GT| with ignore = 6
    assert intersection_union(None, TARGET_IGNORE, "lisa") == (0, 4)
    assert intersection_union(None, TARGET_IGNORE, "segzero") == (0, 6)
    for semantics, union in (("lisa", 4), ("segzero", 6)):
        report = SegmentationReport(semantics)
        assert report.add(None, TARGET_IGNORE) == 0.0
        report.add(logits(PRED_IGNORE), TARGET_IGNORE)
        summary = report.to_dict()
        assert summary["n"] == 2 and summary["no_prediction"] == 1 and summary["dropped"] == 0
        inter = 2 if semantics == "lisa" else 4
        assert summary["ciou"] == inter / (union + union)


def test_giou_and_ciou_differ_on_two_masks():
    # mask A: perfect 4-pixel prediction, I = 4, U = 4
    target_a = TARGET
    # mask B: 12-pixel target (rows 0-2), prediction 3 pixels inside it: I = 3, U = 12
    target_b = grid([[1] * 4] * 3 + [[0] * 4])
    pred_b = [[1, 1, 1, 0]] + [[0] * 4] * 3
    lisa = SegmentationReport("lisa").add_many([logits(target_a.tolist()), logits(pred_b)], [target_a, target_b])
    segzero = SegmentationReport("segzero").add_many([target_a.bool(), logits(pred_b)], [target_a, target_b])
    # gIoU = (1 + 0.25) / 2 = 0.625 (up to LISA's 1e-5), cIoU = (4 + 3) / (4 + 12) = 0.4375
    assert lisa.to_dict()["giou"] == pytest.approx((4 / (4 + 1e-5) + 3 / (12 + 1e-5)) / 2, abs=1e-15)
    assert lisa.to_dict()["giou"] == pytest.approx(0.625, abs=1e-5)
    assert segzero.to_dict()["giou"] == 0.625
    assert lisa.to_dict()["ciou"] == segzero.to_dict()["ciou"] == 7 / 16


def test_per_group_breakdown():
    target_b = grid([[1] * 4] * 3 + [[0] * 4])
    pred_b = logits([[1, 1, 1, 0]] + [[0] * 4] * 3)
    report = SegmentationReport("segzero")
    report.add(TARGET.bool(), TARGET, group="sentence")
    report.add(pred_b, target_b, group="phrase")
    report.add(None, target_b, group="phrase")
    report.add(TARGET.bool(), TARGET)  # no group: overall only
    summary = report.to_dict()
    assert summary["n"] == 4
    assert summary["per_group"] == {
        "phrase": {"giou": 0.125, "ciou": 3 / 24, "n": 2},
        "sentence": {"giou": 1.0, "ciou": 1.0, "n": 1},
    }
    assert summary["giou"] == (1 + 0.25 + 0 + 1) / 4
    assert summary["ciou"] == (4 + 3 + 0 + 4) / (4 + 12 + 12 + 4)


def _samples(count=40):
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        target = (torch.rand(8, 8, generator=gen) > 0.6).to(torch.uint8)
        target[torch.rand(8, 8, generator=gen) > 0.9] = IGNORE
        pred = None if i % 7 == 3 else torch.randn(8, 8, generator=gen)
        out.append((pred, target, ("sentence", "phrase", True)[i % 3]))
    return out


@pytest.mark.parametrize("semantics", ["lisa", "segzero"])
def test_merge_equals_one_report_fed_everything(semantics):
    samples = _samples()
    whole = SegmentationReport(semantics)
    for pred, target, group in samples:
        whole.add(pred, target, group)
    parts = [SegmentationReport(semantics) for _ in range(3)]
    for i, (pred, target, group) in enumerate(samples):
        parts[i % 3].add(pred, target, group)
    states = [part.state() for part in parts]
    # as training.evaluation.gathered does: a default report, merged with every rank's from_state, in any order
    for order in ((0, 1, 2), (2, 0, 1)):
        merged = SegmentationReport()
        for k in order:
            merged.merge(SegmentationReport.from_state(states[k]))
        assert merged.semantics == semantics
        assert merged.to_dict() == whole.to_dict()  # exact, not approximate
        assert merged.totals() == whole.totals()


def test_merge_rejects_mixed_semantics_and_bad_input():
    lisa, segzero = SegmentationReport("lisa"), SegmentationReport("segzero")
    lisa.add(None, TARGET)
    segzero.add(None, TARGET)
    with pytest.raises(ValueError, match="cannot merge"):
        lisa.merge(segzero)
    lisa.merge(SegmentationReport("segzero"))  # an empty report merges into anything
    with pytest.raises(ValueError, match="semantics"):
        SegmentationReport("giou")
    with pytest.raises(ValueError, match="shape"):
        intersection_union(torch.zeros(3, 4), TARGET)
    with pytest.raises(ValueError, match="one of each"):
        SegmentationReport().add_many([None], [TARGET, TARGET])
    empty = SegmentationReport().to_dict()
    assert (empty["giou"], empty["ciou"], empty["n"], empty["per_group"]) == (0.0, 0.0, 0, {})
