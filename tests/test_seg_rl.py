"""The RL segmentation path: box-and-point answers, tiered mask-IoU rewards, selective tuning, GRPO."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import make_image, make_record, model_images, train_steps
from PIL import Image
from test_star import STAR_TEST_CONFIG, square_masks

from mmreason.data.datamodule import ShardDataModule
from mmreason.data.schema import validate_record
from mmreason.data.writer import ShardSetWriter
from mmreason.export import save_export
from mmreason.models.policy import Trajectory
from mmreason.models.star import StarSegmenter
from mmreason.seg.answers import format_box_point, mask_box_point, parse_box_points
from mmreason.seg.rewards import box_point_format_reward, iou_tier, mask_iou_reward, matched_ious
from mmreason.training.grpo import GRPOModule
from mmreason.zoo import merge_config

BOX_CONFIG = merge_config(STAR_TEST_CONFIG, {"segmentation": {"answer": "box"}})


def test_box_point_answers_round_trip_in_both_forms():
    text = format_box_point([25, 6, 34, 25], [29, 10])
    assert text == "object 2 5 , 6 , 3 4 , 2 5 at 2 9 , 1 0"
    assert parse_box_points(text + " and " + format_box_point([1, 2, 3, 4], [2, 3])) == [
        ([25.0, 6.0, 34.0, 25.0], [29.0, 10.0]), ([1.0, 2.0, 3.0, 4.0], [2.0, 3.0])]
    assert parse_box_points('[{"bbox_2d": [1, 2, 30, 40], "point_2d": [5, 6]}]') == [([1.0, 2.0, 30.0, 40.0],
                                                                                      [5.0, 6.0])]
    assert parse_box_points("object 3 , 3 , 1 , 1 at 2 , 2") == []  # an empty box
    assert parse_box_points("object 1 , 1 , 9 , 9 at 2") == [] and parse_box_points(None) == []


def test_the_gold_box_and_point_of_a_mask():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 1:7] = True
    mask[2, 3] = False  # centroid (60/17, 52/17) ≈ (3.53, 3.06): nearest object pixel (4, 3)
    assert mask_box_point(mask) == ([1, 2, 7, 5], [4, 3])
    ring = torch.zeros(9, 9, dtype=torch.bool)
    ring[1:8, 1:8] = True
    ring[2:7, 2:7] = False  # centroid in the hole: the point is the nearest object pixel
    box, (x, y) = mask_box_point(ring)
    assert box == [1, 1, 8, 8] and bool(ring[y, x])
    assert mask_box_point(torch.zeros(4, 4, dtype=torch.bool)) is None


def test_tiers_hungarian_matching_and_rewards_by_hand():
    assert [iou_tier(v) for v in (0.29, 0.3, 0.5, 0.69, 0.7, 0.8, 0.9, 0.91)] == [0, 1, 2, 2, 3, 4, 4, 5]
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True  # 8 px
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[2:] = True  # 8 px
    half_a = torch.zeros(4, 4, dtype=torch.bool)
    half_a[0] = True  # 4 px inside a: IoU 0.5 with a
    # greedy by order would give a to half_a (0.5) and leave b 0; Hungarian maximises the total
    assert matched_ious([half_a, b], [a, b]) == [0.5, 1.0]
    assert matched_ious([b], [a, b]) == [0.0, 1.0] and matched_ious([], [a]) == [0.0] and matched_ious([a], []) == []
    assert mask_iou_reward(None, ["x", "y", "z"], mask_ious=[[0.5, 1.0], [], [0.95]]) == [3.5, 0.0, 5.0]
    with pytest.raises(ValueError, match="column 'mask_ious' has 1 values for 2 completions"):
        mask_iou_reward(None, ["x", "y"], mask_ious=[[1.0]])
    completions = ["<answer> object 1 , 1 , 9 , 9 at 2 , 2 </answer>", "<answer> object 1 , 1 </answer>"]
    assert box_point_format_reward(None, completions) == [1.0, 0.0]


def _seg_record(i: int):
    return validate_record({**make_record(i), "task": "seg", "answer": ""})


def test_box_answers_learn_the_target_and_its_promptable_mask(tiny_tokenizer):
    torch.manual_seed(0)
    model = StarSegmenter(BOX_CONFIG, tokenizer=tiny_tokenizer)
    images, records, masks = model_images(model, 2), [_seg_record(0), _seg_record(1)], square_masks(2)
    inputs = model.processor.training_inputs([r for r in records])  # without masks, no box to say yet
    assert "object" not in model.tokenizer.decode(inputs["labels"][0][inputs["labels"][0] >= 0])
    losses, out = train_steps(model, images, records, steps=80, lr=5e-3, masks=masks)
    assert losses[-1] < 0.2 * losses[0] and float(out["mask_dice"]) < 0.3
    model.eval()
    trajectories = model.rollout(images, records)
    texts = [model.completion_text(t) for t in trajectories]
    assert texts[0] == "<answer> object 6, 4, 2 0, 1 6 at 1 2, 9 </answer>"  # the mask's box and point
    assert parse_box_points(texts[0][len("<answer>"):-len("</answer>")]) == [([6, 4, 20, 16], [12, 9])]
    for result, mask in zip(model.segment(images, records), masks):
        target = mask == 255
        assert result["found"] and (result["mask"] & target).sum() / (result["mask"] | target).sum() > 0.7
    columns = model.reward_columns(trajectories, records, {"masks": masks}, images)
    assert all(len(ious) == 1 and ious[0] > 0.7 for ious in columns["mask_ious"])


def test_box_answers_that_fail_to_parse_are_left_out_of_the_vote(tiny_tokenizer, monkeypatch):
    torch.manual_seed(0)
    model = StarSegmenter(BOX_CONFIG, tokenizer=tiny_tokenizer).eval()
    images, records, tok = model_images(model, 1), [_seg_record(0)], model.tokenizer
    good = "<answer> object 4 , 4 , 2 0 , 1 6 at 1 2 , 9 </answer>"
    broken = "<answer> object 4 , 4 at 1 2 </answer>"  # names an object, no well-formed box: unparseable
    empty = "<answer> </answer>"  # names no object: a "no object" vote

    def answering(*texts):
        rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
        width = max(map(len, rows))
        padded = torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in rows])
        return lambda images, records, max_new_tokens, num_return_sequences=1, **kwargs: padded

    monkeypatch.setattr(model, "generate_ids", answering(broken, broken, good))
    result = model.segment(images, records, samples=3)[0]  # N = 1 (as "no object" votes: 2 of 3, empty)
    assert result["found"] and parse_box_points(result["answer"]) == [([4.0, 4.0, 20.0, 16.0], [12.0, 9.0])]
    monkeypatch.setattr(model, "generate_ids", answering(empty, empty, good))
    result = model.segment(images, records, samples=3)[0]
    assert not result["found"] and not result["mask"].any() and not result["answer"]  # a no-object answer
    truncated = "<think> object 4 , 4"  # cut off before any answer: unparseable, not a "no object" vote
    monkeypatch.setattr(model, "generate_ids", answering(truncated, truncated, good))
    result = model.segment(images, records, samples=3)[0]
    assert result["found"] and parse_box_points(result["answer"]) == [([4.0, 4.0, 20.0, 16.0], [12.0, 9.0])]
    monkeypatch.setattr(model, "generate_ids", answering(broken, broken, broken))
    result = model.segment(images, records, samples=3)[0]  # nothing parsed: N = 0, empty
    assert not result["found"] and not result["mask"].any() and result["mask"].shape == (32, 32)


def test_selective_tuning_keeps_the_best_and_worst_of_each_prompt(tiny_tokenizer, tmp_path):
    folder = save_export(StarSegmenter(BOX_CONFIG, tokenizer=tiny_tokenizer), tmp_path / "policy")
    module = GRPOModule({"from": str(folder)}, rewards={"mask_iou": 1.0}, group_size=2, rollouts_per_prompt=4)
    trajectories = [Trajectory(i // 4, [1], [i]) for i in range(8)]
    rewards = torch.tensor([1.0, 5.0, 3.0, 0.0, 2.0, 2.0, 2.0, 4.0])
    kept, kept_rewards, labels = module.select(trajectories, rewards, list("abcdefgh"))
    assert [t.completion[0] for t in kept] == [1, 3, 6, 7] and labels == list("bdgh")  # ties: the later is worse
    assert kept_rewards.tolist() == [5.0, 0.0, 2.0, 4.0]  # kept in sampling order
    with pytest.raises(ValueError, match="step_credit rewards crop actions"):
        GRPOModule({"from": str(folder)}, rewards={"mask_iou": 1.0}, step_credit={})
    with pytest.raises(ValueError, match="rollouts_per_prompt"):
        GRPOModule({"from": str(folder)}, rewards={"mask_iou": 1.0}, group_size=4, rollouts_per_prompt=3)


def test_grpo_on_a_segmentation_policy_runs_and_reportssquare_masks(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    policy = StarSegmenter(BOX_CONFIG, tokenizer=tiny_tokenizer)  # half-trained: its rewards vary
    train_steps(policy, model_images(policy, 2), [_seg_record(0), _seg_record(1)], steps=50, lr=5e-3,
                masks=square_masks(2))
    folder = save_export(policy, tmp_path / "policy")
    for split, count in (("train", 4), ("val", 2)):
        writer = ShardSetWriter(tmp_path / "data", split, samples_per_shard=10)
        for i in range(count):
            mask = Image.fromarray(square_masks(2)[i % 2].numpy())
            writer.write(f"{split}{i}", make_image(i), {**make_record(i), "task": "seg", "answer": ""}, mask)
        writer.close()
    data = ShardDataModule(train=str(tmp_path / "data"), val=str(tmp_path / "data"), batch_size=2, num_workers=0)
    module = GRPOModule({"from": str(folder)}, rewards={"box_format": 0.5, "mask_iou": 1.0}, group_size=2,
                        rollouts_per_prompt=4, max_new_tokens=24, lr=1e-2)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=1, num_sanity_val_steps=0,
                        val_check_interval=2, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    for key in ("train/reward", "train/reward_mask_iou", "train/reward_box_format", "val/giou", "val/ciou"):
        assert key in metrics, key
    assert "val/accuracy" not in metrics  # a box answer names no object: nothing to score as text
    assert any(not torch.equal(p, before[n]) for n, p in module.model.named_parameters())
