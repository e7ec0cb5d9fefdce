"""The crop-action policy: gold visual rationales, crop features in the context, multi-turn rollouts."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEST_CONFIG, WORDS, make_image, make_record, model_images, train_steps, write_shards
from PIL import Image

from mmreason.data.schema import validate_record
from mmreason.export import load_export, save_export
from mmreason.inference import evaluate
from mmreason.models.policy import Trajectory
from mmreason.models.virl import VirlPolicy
from mmreason.rl.crop import crop_text
from mmreason.text.prompts import TEMPLATE_WORDS
from mmreason.text.tokenizer import word_tokenizer
from mmreason.zoo import merge_config

CROP_TOKENS = 4
VIRL_TEST_CONFIG = merge_config(TINY_TEST_CONFIG, {"crop": {"max_actions": 2, "min_size": 8, "tokens": CROP_TOKENS}})


@pytest.fixture
def tokenizer():
    return word_tokenizer([*TEMPLATE_WORDS, *WORDS, *"0123456789", ",", "look", "then", "count"])


@pytest.fixture
def policy(tokenizer):
    torch.manual_seed(0)
    return VirlPolicy(VIRL_TEST_CONFIG, tokenizer=tokenizer)


def _record(i: int, boxes=((1, 1, 10, 10), (20, 4, 30, 12), (0, 20, 5, 22)), image_size=None):
    raw = make_record(i)
    raw["steps"] = [{"text": "look", "box": list(b)} for b in boxes] + [{"text": "then count", "box": None}]
    if image_size:
        raw["meta"]["image_size"] = image_size
    return validate_record(raw)


def test_gold_trajectory_writes_crops_then_step_texts(policy):
    images = model_images(policy, 1)
    trajectory = policy.gold_trajectory(_record(0), 0, images)
    # two of the three boxes (max_actions 2); the third step's text stays; the tiny box grows to min_size 8
    assert trajectory.crops == [[1, 1, 10, 10], [20, 4, 30, 12]]
    assert trajectory.actions == trajectory.crops
    text = policy.completion_text(trajectory)
    assert text == (f"<think> {crop_text([1, 1, 10, 10])} look {crop_text([20, 4, 30, 12])} look look then count "
                    "</think> <answer> yes </answer>").replace(" ,", ",")
    image_id = policy.image_token_id
    completion = torch.tensor(trajectory.completion)
    mask = torch.tensor(trajectory.policy_mask)
    assert torch.equal(completion == image_id, ~mask) and int((~mask).sum()) == 2 * CROP_TOKENS
    for start, end in trajectory.action_spans:  # each span is exactly <crop> … </crop>, image tokens after it
        assert trajectory.completion[start] == policy.crop_open_id and trajectory.completion[end - 1] == policy.crop_close_id
        assert trajectory.completion[end : end + CROP_TOKENS] == [image_id] * CROP_TOKENS


def test_gold_boxes_are_scaled_from_the_record_image_to_the_model_input(policy):
    images = model_images(policy, 1)  # 32 px
    trajectory = policy.gold_trajectory(_record(0, boxes=((8, 8, 40, 24),), image_size=[64, 128]), 0, images)
    assert trajectory.crops == [[4, 0, 20, 8]]  # x halved, y quartered to 2..6, grown to min_size 8 about 4


def test_crop_features_sit_at_the_image_tokens_after_each_crop(policy):
    images = model_images(policy, 2)
    trajectories = [policy.gold_trajectory(_record(i), i, images) for i in range(2)]
    embeds = policy.trajectory_embeddings(images, trajectories, left=False)["inputs_embeds"]
    main = policy.project_patches(policy.vision(images))
    for row, trajectory in enumerate(trajectories):
        ids = torch.tensor(trajectory.prompt + trajectory.completion)
        at = torch.nonzero(ids == policy.image_token_id).flatten()
        n = policy.num_image_tokens
        torch.testing.assert_close(embeds[row, at[:n]], main[row])
        crops = policy.encode_crops(images, [row, row], trajectory.crops)
        torch.testing.assert_close(embeds[row, at[n:]], crops.flatten(0, 1))
    broken = Trajectory(0, trajectories[0].prompt + [policy.image_token_id])
    with pytest.raises(ValueError, match="holds 17 image tokens for 16 image and crop features"):
        policy.trajectory_embeddings(images, [broken], left=False)


def test_encode_crops_reads_the_cropped_pixels(policy):
    images = model_images(policy, 1)
    whole = policy.encode_crops(images, [0], [[0, 0, 32, 32]])
    pooled = torch.nn.functional.adaptive_avg_pool2d(
        policy.vision(images).transpose(1, 2).unflatten(2, (4, 4)), 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(whole, policy.projector(pooled))  # the whole image: its own patches, pooled
    corner = policy.encode_crops(images, [0], [[0, 0, 16, 16]])
    assert corner.shape == (1, CROP_TOKENS, 48) and not torch.allclose(corner, whole)


def test_supervised_loss_falls_and_skips_crop_image_tokens(policy):
    images, records = model_images(policy, 2), [_record(0), _record(1)]
    losses, out = train_steps(policy, images, records, steps=15)
    assert losses[-1] < 0.5 * losses[0]
    trajectories = [policy.gold_trajectory(r, i, images) for i, r in enumerate(records)]
    assert int(out["target_tokens"]) == sum(sum(t.policy_mask) for t in trajectories)
    _, mask = policy.completion_log_probs(images, trajectories)
    assert int(mask.sum()) == int(out["target_tokens"]) and out["skipped"] == 0


def _turn(policy, trajectory, text, images):
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    policy._continue(trajectory, ids + [policy.tokenizer.pad_token_id] * 3, images, max_new_tokens=200)


def test_a_turn_ending_in_a_crop_appends_its_image_tokens_and_goes_on(policy):
    images = model_images(policy, 1)
    trajectory = Trajectory(0, [policy.tokenizer.bos_token_id])
    _turn(policy, trajectory, "<think> look <crop> 2 , 2 , 4 , 4 </crop>", images)
    assert not trajectory.done and trajectory.actions == [[2.0, 2.0, 4.0, 4.0]]
    assert trajectory.crops == [[0, 0, 8, 8]]  # grown to min_size 8 and kept inside the image
    assert trajectory.completion[-CROP_TOKENS:] == [policy.image_token_id] * CROP_TOKENS
    start, end = trajectory.action_spans[0]
    assert policy.tokenizer.decode(trajectory.completion[start:end]) == "<crop> 2, 2, 4, 4 </crop>"
    _turn(policy, trajectory, "look </crop>", images)  # no <crop> since the last action: malformed
    assert trajectory.actions[-1] is None and len(trajectory.crops) == 1 and not trajectory.done
    _turn(policy, trajectory, "<crop> 1 , 1 , 9 , 9 </crop>", images)  # max_actions (2) reached: it ends
    assert trajectory.done and len(trajectory.actions) == 2 and len(trajectory.crops) == 1
    assert policy.completion_text(trajectory) == ("<think> look <crop> 2, 2, 4, 4 </crop> look </crop> "
                                                  "<crop> 1, 1, 9, 9 </crop>")
    finished = Trajectory(0, [policy.tokenizer.bos_token_id])
    _turn(policy, finished, "<think> look </think> <answer> yes </answer> </s> look", images)
    assert finished.done and finished.completion[-1] == policy.tokenizer.eos_token_id and not finished.actions


def test_rollouts_are_batched_per_prompt_and_keep_the_invariants(policy):
    policy.eval()
    images = model_images(policy, 2)
    records = [_record(0), _record(1)]
    with torch.no_grad():  # make <crop> likely so that actions happen
        policy.lm.get_output_embeddings().weight[policy.crop_open_id] *= 3
    trajectories = policy.rollout(images, records, samples=3, max_new_tokens=40, do_sample=True)
    assert [t.image_index for t in trajectories] == [0, 0, 0, 1, 1, 1]
    for t in trajectories:
        assert t.done or sum(t.policy_mask) >= 40
        assert sum(t.policy_mask) <= 40 and len(t.actions) <= 2 and len(t.crops) <= len(t.actions)
        image_tokens = [tok == policy.image_token_id for tok in t.completion]
        assert [not m for m in t.policy_mask] == image_tokens and sum(image_tokens) == CROP_TOKENS * len(t.crops)
        assert "<image>" not in policy.completion_text(t)
    logp, mask = policy.completion_log_probs(images, trajectories)
    assert logp.shape[0] == 6 and bool((logp[mask] <= 0).all())
    assert mask.sum(1).tolist() == [sum(t.policy_mask) for t in trajectories]


def test_export_predict_with_an_overlay_and_eval_reports_crops(policy, tmp_path, capsys):
    from mmreason.cli import main

    policy.eval()
    folder = save_export(policy, tmp_path / "export")
    loaded = load_export(folder)
    assert isinstance(loaded, VirlPolicy) and loaded.crop_tokens == CROP_TOKENS
    make_image(0).save(tmp_path / "x.png")
    predictions = [m.predict(str(tmp_path / "x.png"), "is there a red circle?", max_new_tokens=12)
                   for m in (policy, loaded)]
    assert predictions[0] == predictions[1] and predictions[0]["input_size"] == 32
    predictions[0]["crops"] = [[2, 2, 12, 12]]
    from mmreason.overlay import draw_crops
    picture = draw_crops(Image.open(tmp_path / "x.png"), predictions[0]["crops"], 32, str(tmp_path / "o.png"))
    assert picture.width == 256 and picture.height > 256  # the upscaled picture, then its caption band
    assert picture.getpixel((16, 40)) != Image.open(tmp_path / "x.png").resize(
        (256, 256), Image.NEAREST).getpixel((16, 40))  # the box's left edge at x = 2·8
    main(["predict", "--model", str(folder), "--image", str(tmp_path / "x.png"), "--question",
          "is there a red circle?", "--max-new-tokens", "8", "--out", str(tmp_path / "cli.png"), "--json"])
    assert set(json.loads(capsys.readouterr().out.splitlines()[-1])) >= {"text", "answer", "crops"}
    assert Image.open(tmp_path / "cli.png").width == 256
    write_shards(tmp_path / "data", "test-", [3])
    result = evaluate(loaded, [str(p) for p in sorted((tmp_path / "data").glob("*.tar"))], batch_size=2,
                      max_new_tokens=8)
    crops = result["report"]["crops"]
    assert set(crops) == {"mean_crop_iou", "actions_per_rollout", "correct_share", "redundant_share",
                          "erroneous_share"} and crops["actions_per_rollout"] is not None
