"""StAR's parallel test-time scaling, rule by rule on hand-made 4×4 masks (StAR's evaluation_star.py)."""

import pytest
import torch

from mmreason.seg.tts import aggregate_batch, aggregate_masks, mask_iou_matrix


def m(rows: str) -> torch.Tensor:
    """A 4×4 bool mask from four rows of 0/1, e.g. ``"1100 1100 0000 0000"``."""
    return torch.tensor([[c == "1" for c in row] for row in rows.split()], dtype=torch.bool)


EMPTY = m("0000 0000 0000 0000")
SQ = m("1100 1100 0000 0000")  # top-left 2×2
SQ_P = m("1110 1100 0000 0000")  # SQ plus one pixel: IoU with SQ 4/5
FAR = m("0000 0000 0011 0011")  # bottom-right 2×2
MID = m("0000 0000 1100 1100")  # bottom-left 2×2
TOP = m("0011 0011 0000 0000")  # top-right 2×2


def test_iou_matrix_by_hand_and_two_empty_masks_score_zero():
    iou = mask_iou_matrix(torch.stack([SQ, SQ_P, FAR, EMPTY, EMPTY]))
    expected = torch.tensor([
        [1, 4 / 5, 0, 0, 0],
        [4 / 5, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],  # an empty union scores 0, as StAR's clustering computes it
        [0, 0, 0, 0, 0],
    ], dtype=torch.float64)
    torch.testing.assert_close(iou, expected, rtol=0, atol=0)
    batched = mask_iou_matrix(torch.stack([torch.stack([SQ, SQ_P, FAR, EMPTY, EMPTY])] * 2))
    torch.testing.assert_close(batched[1], expected, rtol=0, atol=0)


def test_no_object_majority_and_empty_inputs():
    result = aggregate_masks([SQ, [], []], [0.9, None, None])
    assert result["no_object"] and not result["mask"].any() and result["mask"].shape == (4, 4)
    assert (result["valid"], result["no_object_votes"], result["sample"]) == (3, 2, 1)
    assert (result["objects"], result["clusters"], result["chosen"]) == (0, [], [])
    assert aggregate_masks([SQ, SQ, [], []], [0.9, 0.9, 0, 0])["no_object"]  # exactly half: still empty
    result = aggregate_masks([SQ, SQ, SQ, []], [0.9, 0.9, 0.9, 0])
    assert not result["no_object"] and torch.equal(result["mask"], SQ)
    result = aggregate_masks([None, None], [0, 0], shape=(4, 4))  # nothing parsed: N = 0, empty
    assert result["no_object"] and result["valid"] == 0 and result["sample"] == -1
    with pytest.raises(ValueError, match="shape"):
        aggregate_masks([None, []], [0, 0])


def test_rule1_clusters_form_in_sample_order_around_the_earliest_member():
    # IoU(A, B) = IoU(B, C) = 3/4, IoU(A, C) = 2/4; at cluster_iou 0.6 only B bridges A and C
    a, b, c = m("1110 0000 0000 0000"), m("1111 0000 0000 0000"), m("0111 0000 0000 0000")
    result = aggregate_masks([b, a, c, c], [0.1, 0.9, 0.8, 0.8], cluster_iou=0.6)
    # the earliest sample (b) leads and takes everyone: one cluster, its best member a
    assert [cl["members"] for cl in result["clusters"]] == [[(0, 0), (1, 0), (2, 0), (3, 0)]]
    assert torch.equal(result["mask"], a) and result["sample"] == 1
    # led by score instead, a would lead {a, b} and c {c, c}: the tie in votes going to c's mean 0.8


def test_rule2_consensus_weights_members_by_score():
    # one cluster (IoU 4/5 >= 0.75): the extra pixel (0, 2) has weight 0.9 / 1.1 >= 0.5 (unweighted: 1/3)
    result = aggregate_masks([SQ_P, SQ, SQ], [0.9, 0.1, 0.1], cluster_iou=0.75, output="consensus")
    assert len(result["clusters"]) == 1 and torch.equal(result["mask"], SQ_P)
    low = aggregate_masks([SQ_P, SQ, SQ], [0.2, 0.3, 0.3], cluster_iou=0.75, output="consensus")
    assert torch.equal(low["mask"], SQ)  # 0.2 / 0.8 < 0.5
    # every score <= 0: uniform weights, 1/2 meets the threshold; consensus= moves it
    uniform = aggregate_masks([SQ_P, SQ], [0, -1], cluster_iou=0.75, output="consensus")
    assert torch.equal(uniform["mask"], SQ_P)
    assert torch.equal(aggregate_masks([SQ_P, SQ], [0, 0], cluster_iou=0.75, output="consensus",
                                       consensus=0.6)["mask"], SQ)


def test_rule3_an_empty_mask_is_a_candidate_not_a_no_object_vote():
    # two empty masks and two squares: no "no object" vote; empty masks do not cluster (IoU 0)
    result = aggregate_masks([EMPTY, SQ, SQ, EMPTY], [0.9, 0.5, 0.5, 0.9])
    assert not result["no_object"] and result["no_object_votes"] == 0
    assert [cl["members"] for cl in result["clusters"]] == [[(0, 0)], [(1, 0), (2, 0)], [(3, 0)]]
    assert torch.equal(result["mask"], SQ)  # as no-object votes the empties would make it 2 of 4: empty
    # an empty candidate can win; the answer is then an empty mask that is not "no object"
    result = aggregate_masks([EMPTY, SQ], [0.9, 0.1])
    assert not result["no_object"] and not result["mask"].any() and result["sample"] == 0


def test_rule4_a_sample_that_failed_to_parse_is_dropped_from_n():
    result = aggregate_masks([None, None, SQ, SQ, []], [0, 0, 0.5, 0.5, 0])
    assert (result["valid"], result["no_object_votes"]) == (3, 1)  # 1 of 3 < 0.5 (as votes: 3 of 5)
    assert not result["no_object"] and torch.equal(result["mask"], SQ)
    # the cluster shares are of N = 3 as well: FAR has 1/3 >= 0.3, 1/5 would not be
    result = aggregate_masks([None, None, SQ, SQ, FAR], [0, 0, 0.5, 0.5, 0.9], min_share=0.3)
    assert [cl["kept"] for cl in result["clusters"]] == [True, True]


def test_rule5_score_ties_go_to_the_larger_mask():
    result = aggregate_masks([SQ, SQ_P], [0.7, 0.7], cluster_iou=0.75)
    assert len(result["clusters"]) == 1 and torch.equal(result["mask"], SQ_P) and result["sample"] == 1
    # equal score and area: the earlier member
    assert aggregate_masks([SQ, SQ], [0.7, 0.7])["sample"] == 0


def test_rule6_objects_are_clustered_per_object_and_the_top_clusters_united():
    # per object: SQ has 3 votes, FAR 2, MID 1, TOP 1; K = 2 objects (three of four answers name two)
    samples = [[SQ, FAR], [SQ, MID], [SQ, TOP], [FAR]]
    scores = [[0.5, 0.5], [0.9, 0.9], [0.5, 0.5], 0.5]
    result = aggregate_masks(samples, scores)
    assert result["objects"] == 2
    assert [(cl["members"], cl["votes"]) for cl in result["clusters"]] == [
        ([(0, 0), (1, 0), (2, 0)], 3), ([(0, 1), (3, 0)], 2), ([(1, 1)], 1), ([(2, 1)], 1)]
    assert result["chosen"] == [0, 1] and torch.equal(result["mask"], SQ | FAR)
    # the answers united first would be four one-vote masks, SQ | MID winning on its score 0.9


def test_rule6_a_vote_is_a_distinct_sample():
    # sample 0 names SQ twice: two members but one vote, so FAR (two members, two votes) wins
    result = aggregate_masks([[SQ, SQ_P], [FAR], [FAR]], [[0.9, 0.9], 0.1, 0.1], cluster_iou=0.75)
    assert result["objects"] == 1
    assert [(len(cl["members"]), cl["votes"]) for cl in result["clusters"]] == [(2, 1), (2, 2)]
    assert torch.equal(result["mask"], FAR)


def test_object_count_ties_go_to_the_count_seen_first():
    # counts 1, 2, 2, 1: K = 1 (seen first), so only the SQ cluster is taken
    result = aggregate_masks([[SQ], [SQ, FAR], [SQ, FAR], [SQ]], [0.5, 0.5, 0.5, 0.5])
    assert result["objects"] == 1 and torch.equal(result["mask"], SQ)
    result = aggregate_masks([[SQ, FAR], [SQ], [SQ, FAR], [SQ]], [0.5, 0.5, 0.5, 0.5])
    assert result["objects"] == 2 and torch.equal(result["mask"], SQ | FAR)


def test_cluster_ranking_and_fallback_to_every_cluster():
    # equal votes: the higher mean score; equal votes and mean: the earlier-created cluster
    assert torch.equal(aggregate_masks([SQ, SQ, FAR, FAR], [0.875, 0.0625, 0.5, 0.5])["mask"], FAR)
    assert torch.equal(aggregate_masks([FAR, SQ, FAR, SQ], [0.5, 0.75, 0.25, 0.0])["mask"], FAR)
    # no cluster reaches min_share (1/2 < 0.6): every cluster stays in the race, the top K = 2 are taken
    result = aggregate_masks([[SQ, FAR], [MID, TOP]], [[0.9, 0.9], [0.1, 0.1]], min_share=0.6)
    assert all(cl["kept"] for cl in result["clusters"]) and result["chosen"] == [0, 1]
    assert torch.equal(result["mask"], SQ | FAR)


def test_cluster_iou_threshold_is_inclusive():
    assert len(aggregate_masks([SQ, SQ_P], [0.9, 0.1], cluster_iou=0.8)["clusters"]) == 1  # 4/5 >= 0.8
    assert len(aggregate_masks([SQ, SQ_P], [0.9, 0.1], cluster_iou=0.81)["clusters"]) == 2


def test_aggregate_batch_matches_per_question_calls():
    masks = torch.stack([torch.stack([SQ, SQ, FAR, SQ]), torch.stack([FAR, EMPTY, SQ, FAR])])
    scores = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.4, 0.5, 0.6, 0.7]])
    valid = torch.tensor([[True, True, True, False], [True, True, False, True]])
    found = torch.tensor([[True, True, True, True], [False, True, True, False]])
    results = aggregate_batch(masks, scores, valid, found)
    first = aggregate_masks([SQ, SQ, FAR, None], scores[0].tolist())
    second = aggregate_masks([[], EMPTY, None, []], scores[1].tolist())
    for got, want in zip(results, (first, second)):
        assert {k: v for k, v in got.items() if k != "mask"} == {k: v for k, v in want.items() if k != "mask"}
        assert torch.equal(got["mask"], want["mask"])
    assert torch.equal(results[0]["mask"], SQ) and results[1]["no_object"]  # 2 of 3 valid say no object


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="output"):
        aggregate_masks([SQ], [0.1], output="vote")
    with pytest.raises(ValueError, match="consensus"):
        aggregate_masks([SQ], [0.1], consensus=1.5)
    with pytest.raises(ValueError, match="2 objects but has 1 scores"):
        aggregate_masks([[SQ, FAR]], [[0.1]])
    with pytest.raises(ValueError, match="finite"):
        aggregate_masks([SQ], [float("nan")])
    with pytest.raises(ValueError, match="2 scores for 1 samples"):
        aggregate_masks([SQ], [0.1, 0.2])
    with pytest.raises(ValueError, match="one shape"):
        aggregate_masks([SQ, torch.zeros(3, 3, dtype=torch.bool)], [0.1, 0.2])
    with pytest.raises(TypeError):
        aggregate_masks([torch.randn(4, 4)], [0.1])
