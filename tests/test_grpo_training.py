"""GRPO on the crop-action policy: step credit on action tokens, a Lightning run that updates the policy."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import make_record, write_shards
from test_virl import VIRL_TEST_CONFIG

from mmreason.data.datamodule import ShardDataModule
from mmreason.data.schema import validate_record
from mmreason.export import save_export
from mmreason.models.policy import Trajectory
from mmreason.models.virl import VirlPolicy
from mmreason.rl.grpo import grpo_loss
from mmreason.text.prompts import TEMPLATE_WORDS
from mmreason.text.tokenizer import word_tokenizer
from mmreason.training import grpo as grpo_training
from mmreason.training.grpo import GRPOModule

WORDS = ("is there a red blue circle square yes no how many shapes the at left right ? . i see one two it shows look , "
         "0 1 2 3 4 5 6 7 8 9").split()


@pytest.fixture(scope="module")
def policy_export(tmp_path_factory):
    torch.manual_seed(0)
    policy = VirlPolicy(VIRL_TEST_CONFIG, tokenizer=word_tokenizer([*TEMPLATE_WORDS, *WORDS]))
    return str(save_export(policy, tmp_path_factory.mktemp("policy") / "export"))


def test_step_credit_is_added_to_the_tokens_of_each_action(policy_export):
    module = GRPOModule({"from": str(policy_export)}, step_credit={"tau": 0.5, "r_correct": 0.5, "r_erroneous": 0.25},
                        group_size=2)
    trajectory = Trajectory(0, [1], completion=list(range(12)), policy_mask=[True] * 12,
                            actions=[[1, 1, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]],
                            action_spans=[(1, 3), (5, 7), (9, 11)])
    labels = [["correct", "redundant", "erroneous"], []]
    plain = Trajectory(0, [1], completion=list(range(12)), policy_mask=[True] * 12)
    out = module.token_advantages(torch.tensor([1.0, -1.0]), [trajectory, plain], labels, width=12)
    expected = torch.ones(12)
    expected[1:3] += 0.5
    expected[9:11] -= 0.25
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], -torch.ones(12))
    outcome_only = GRPOModule({"from": str(policy_export)}, group_size=2)
    torch.testing.assert_close(outcome_only.token_advantages(torch.tensor([1.0, -1.0]), [trajectory, plain],
                                                             labels, width=12)[0], torch.ones(12))


def test_rewards_and_action_labels_of_a_group(policy_export):
    module = GRPOModule({"from": str(policy_export)}, group_size=2, rewards={"format": 0.5, "accuracy": 1.0})
    record = validate_record({**make_record(0), "steps": [{"text": "look", "box": [2, 2, 12, 12]}]})
    tokenizer = module.model.tokenizer
    good = tokenizer("<think> <crop> 2 , 2 , 1 2 , 1 2 </crop> </think> <answer> yes </answer>",
                     add_special_tokens=False)["input_ids"]
    bad = tokenizer("<answer> no </answer>", add_special_tokens=False)["input_ids"]
    trajectories = [Trajectory(0, [1], good, [True] * len(good), actions=[[2.0, 2.0, 12.0, 12.0]],
                               action_spans=[(1, 12)]),
                    Trajectory(0, [1], bad, [True] * len(bad), actions=[None], action_spans=[(0, 1)])]
    batch = {"images": torch.zeros(1, 3, 32, 32), "records": [record]}
    rewards, components, crops, labels = module.rewards(trajectories, batch)
    assert rewards.tolist() == [1.5, 0.0] and components == {"format": [1.0, 0.0], "accuracy": [1.0, 0.0]}
    assert labels == [["correct"], ["erroneous"]]
    assert crops.to_dict()["mean_crop_iou"] == pytest.approx(1.0) and crops.to_dict()["correct_share"] == 0.5


def test_grpo_fit_updates_the_policy_and_logs_its_signals(policy_export, tmp_path, monkeypatch):
    budgets = []
    monkeypatch.setattr(grpo_training, "grpo_loss",
                        lambda *args, **kwargs: budgets.append(kwargs["max_length"]) or grpo_loss(*args, **kwargs))
    write_shards(tmp_path / "data", "train", [4])
    write_shards(tmp_path / "data", "val", [2])
    data = ShardDataModule(train=str(tmp_path / "data" / "train0-000000.tar"),
                           val=str(tmp_path / "data" / "val0-000000.tar"), batch_size=2, num_workers=0)
    module = GRPOModule({"from": str(policy_export)}, group_size=4, max_new_tokens=10, lr=1e-2, num_iterations=2, beta=0.1,
                        step_credit={}, loss_type="dr_grpo")
    assert module.reference is not None and not any(p.requires_grad for p in module.reference.parameters())
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=1, num_sanity_val_steps=0,
                        val_check_interval=2, default_root_dir=tmp_path)  # 2 rollout batches
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2
    metrics = trainer.callback_metrics
    for key in ("train/reward", "train/kl", "train/clip_fraction", "train/response_length", "train/reward_format",
                "train/reward_accuracy", "val/accuracy"):
        assert key in metrics, key
    assert float(metrics["train/response_length"]) > 0
    assert any(not torch.equal(p, before[n]) for n, p in module.model.named_parameters())
    assert budgets == [10] * 4  # dr_grpo's constant is the generation budget, as TRL's max_completion_length


def test_bad_grpo_settings_name_the_problem(policy_export, tmp_path):
    with pytest.raises(ValueError, match=r"unknown rewards \['iou'\]; built-in rewards are \['accuracy', 'box_format'"):
        GRPOModule({"from": str(policy_export)}, rewards={"iou": 1.0})
    with pytest.raises(ValueError, match="loss_type"):
        GRPOModule({"from": str(policy_export)}, loss_type="ppo")
    assert GRPOModule({"from": str(policy_export)}).reference is None  # β = 0: no reference model at all
