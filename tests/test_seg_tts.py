import pytest
import torch

from mmreason.seg.tts import aggregate_batch, aggregate_masks, mask_iou_matrix

H = W = 10


def square(top, left, size=5, extra=()):
    """A size×size square at (top, left), plus any ``extra`` (row, col) pixels."""
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[top:top + size, left:left + size] = True
    for r, c in extra:
        mask[r, c] = True
    return mask


EMPTY = torch.zeros(H, W, dtype=torch.bool)


def test_iou_matrix_by_hand_including_empty_masks():
    a = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    c = torch.tensor([[1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    e = torch.zeros(2, 3, dtype=torch.bool)
    iou = mask_iou_matrix(torch.stack([a, b, c, e, e]))
    expected = torch.tensor([
        [1, 1 / 3, 2 / 6, 0, 0],
        [1 / 3, 1, 2 / 6, 0, 0],
        [2 / 6, 2 / 6, 1, 0, 0],
        [0, 0, 0, 1, 1],  # empty vs empty = 1.0
        [0, 0, 0, 1, 1],
    ], dtype=torch.float64)
    torch.testing.assert_close(iou, expected, rtol=0, atol=0)  # float64 quotients of exact counts
    # leading batch dims: one matmul per question, same numbers
    batched = mask_iou_matrix(torch.stack([torch.stack([a, b, c, e, e]), torch.stack([e, e, c, b, a])]))
    torch.testing.assert_close(batched[0], expected)
    torch.testing.assert_close(batched[1], expected.flip(0).flip(1))


def test_majority_no_object_gives_empty_mask():
    # 3 of 4 vote no object (None twice, an empty mask once): 0.75 >= 0.5
    result = aggregate_masks([None, EMPTY, square(0, 0), None], [0.9, 0.8, 0.7, 0.6])
    assert result["no_object"] and result["no_object_votes"] == 3
    assert result["mask"].shape == (H, W) and not result["mask"].any()
    assert (result["chosen"], result["sample"], result["clusters"]) == (-1, -1, [])
    # exactly half votes no object: still empty (>=)
    assert aggregate_masks([None, EMPTY, square(0, 0), square(0, 0)], [0.1] * 4)["no_object"]
    # a quarter: an object is predicted
    result = aggregate_masks([None, square(0, 0), square(0, 0), square(0, 0)], [0.1] * 4)
    assert not result["no_object"] and torch.equal(result["mask"], square(0, 0))
    # a tensor input: empty masks are the no-object votes; all-None needs shape=
    assert aggregate_masks(torch.stack([EMPTY, EMPTY, square(0, 0)]), [1, 1, 1])["no_object"]
    result = aggregate_masks([None, None], [0.5, 0.5], shape=(H, W))
    assert result["no_object"] and result["mask"].shape == (H, W)
    with pytest.raises(ValueError, match="shape"):
        aggregate_masks([None, None], [0.5, 0.5])


def test_five_near_identical_masks_beat_three_higher_scored_others():
    # samples 0, 2, 4, 6, 7: the top-left square with one extra pixel each (pairwise IoU >= 25/27)
    near = {0: square(0, 0, extra=[(5, 0)]), 2: square(0, 0, extra=[(5, 1)]), 4: square(0, 0),
            6: square(0, 0, extra=[(0, 5)]), 7: square(0, 0, extra=[(1, 5)])}
    other = {1: square(5, 5), 3: square(5, 5), 5: square(5, 5, extra=[(4, 9)])}
    masks = [near.get(i, other.get(i)) for i in range(8)]
    scores = [0.5, 0.9, 0.4, 0.95, 0.45, 0.9, 0.3, 0.35]
    result = aggregate_masks(masks, scores)
    assert not result["no_object"]
    # clusters in creation order: the higher-scored "other" cluster first (leader = sample 3)
    assert [c["members"] for c in result["clusters"]] == [[3, 1, 5], [0, 4, 2, 7, 6]]
    assert [c["votes"] for c in result["clusters"]] == [3, 5]
    assert result["clusters"][1]["mean_score"] == pytest.approx((0.5 + 0.4 + 0.45 + 0.3 + 0.35) / 5)
    assert result["chosen"] == 1 and result["sample"] == 0
    assert torch.equal(result["mask"], near[0])


def test_vote_tie_broken_by_mean_score():
    # cluster A holds the single best sample but a lower mean: 0.9, 0.2, 0.2 (mean 0.433)
    # cluster B: 0.5, 0.5, 0.5 (mean 0.5) -> B wins
    a, b = square(0, 0), square(5, 5)
    result = aggregate_masks([a, a, a, b, b, b], [0.9, 0.2, 0.2, 0.5, 0.5, 0.5])
    assert [c["votes"] for c in result["clusters"]] == [3, 3]
    assert result["chosen"] == 1 and torch.equal(result["mask"], b)
    assert result["sample"] == 3  # equal scores: the lowest sample index leads
    # equal votes and equal mean score: the earlier-created cluster (higher-scoring leader) wins
    result = aggregate_masks([a, b, a, b], [0.6, 0.7, 0.4, 0.3])
    assert result["chosen"] == 0 and torch.equal(result["mask"], b)


def test_min_share_filtering():
    a, b, c = square(0, 0), square(5, 5), square(0, 5)
    # 6 samples: votes 3 (0.5), 2 (0.33), 1 (0.17 < 0.2)
    result = aggregate_masks([a, a, a, b, b, c], [0.1, 0.1, 0.1, 0.2, 0.2, 0.99])
    assert [(c["votes"], c["kept"]) for c in result["clusters"]] == [(1, False), (2, True), (3, True)]
    assert torch.equal(result["mask"], a)
    # the share is of all N samples, no-object votes included; 1 of 5 = 0.2 meets 0.2
    result = aggregate_masks([a, b, None, None, c], [0.3, 0.2, 0, 0, 0.1])
    assert [cl["kept"] for cl in result["clusters"]] == [True, True, True]
    # 10 samples: 4 no object (0.4 < 0.5), 6 distinct masks at 0.1 each: none qualifies, the largest
    # is kept (all one vote -> the best mean score)
    masks = [None] * 4 + [square(r, s, size=3) for r, s in ((0, 0), (0, 3), (0, 6), (3, 0), (3, 3), (3, 6))]
    scores = [0.0] * 4 + [0.2, 0.6, 0.4, 0.8, 0.1, 0.3]
    result = aggregate_masks(masks, scores)
    assert not result["no_object"]
    assert [cl["kept"] for cl in result["clusters"]] == [True] + [False] * 5
    assert result["sample"] == 7 and torch.equal(result["mask"], square(3, 0, size=3))
    # with min_share = 0.1 all six are kept and the same one is chosen
    result = aggregate_masks(masks, scores, min_share=0.1)
    assert all(cl["kept"] for cl in result["clusters"]) and result["sample"] == 7


def test_consensus_differs_from_best():
    best = square(0, 0, extra=[(5, 0), (5, 1)])  # IoU with the plain square 25/27 >= 0.85
    masks = [square(0, 0), best, square(0, 0, extra=[(5, 0)])]
    scores = [0.5, 0.9, 0.4]
    out_best = aggregate_masks(masks, scores, output="best")
    out_consensus = aggregate_masks(masks, scores, output="consensus")
    assert out_best["clusters"] == out_consensus["clusters"] and out_best["clusters"][0]["votes"] == 3
    assert torch.equal(out_best["mask"], best)
    # (5, 0) is on in 2 of 3 members (kept), (5, 1) in 1 of 3 (dropped)
    assert torch.equal(out_consensus["mask"], square(0, 0, extra=[(5, 0)]))
    # exactly half the members is enough (mean >= 0.5)
    pair = aggregate_masks([square(0, 0), square(0, 0, extra=[(5, 0)])], [0.9, 0.1], output="consensus")
    assert torch.equal(pair["mask"], square(0, 0, extra=[(5, 0)]))


def test_cluster_iou_threshold_is_inclusive_and_configurable():
    # IoU(square, square + 1 px) = 25/26 ~ 0.96; (square, square + 5 px) = 25/30 ~ 0.83
    masks = [square(0, 0), square(0, 0, extra=[(5, c) for c in range(5)])]
    assert len(aggregate_masks(masks, [0.9, 0.1])["clusters"]) == 2
    assert len(aggregate_masks(masks, [0.9, 0.1], cluster_iou=25 / 30)["clusters"]) == 1


def test_aggregate_batch_matches_per_question_calls():
    a, b = square(0, 0), square(5, 5)
    masks = torch.stack([torch.stack([a, a, b, a]), torch.stack([b, EMPTY, a, b])])
    scores = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.4, 0.5, 0.6, 0.7]])
    valid = torch.tensor([[True, True, True, False], [False, True, False, True]])
    results = aggregate_batch(masks, scores, valid)
    assert len(results) == 2
    first = aggregate_masks([a, a, b, None], scores[0])
    second = aggregate_masks([None, EMPTY, None, b], scores[1])
    for got, want in zip(results, (first, second)):
        assert {k: v for k, v in got.items() if k != "mask"} == {k: v for k, v in want.items() if k != "mask"}
        assert torch.equal(got["mask"], want["mask"])
    assert not results[0]["no_object"] and torch.equal(results[0]["mask"], a)
    assert results[1]["no_object"]  # 3 of 4: two invalid, one empty
    assert len(aggregate_batch(masks, scores, output="consensus")) == 2
    with pytest.raises(ValueError, match="output"):
        aggregate_batch(masks, scores, output="vote")
    with pytest.raises(TypeError):
        aggregate_masks(torch.randn(2, H, W), [0.1, 0.2])
