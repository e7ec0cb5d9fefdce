"""GRPO core: advantages per scaling mode, clipped surrogate, k3 KL, aggregation, the loss and its config."""

from __future__ import annotations

import math

import pytest
import torch

from mmreason.rl.grpo import (
    GRPOConfig,
    aggregate,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    nanstd,
    rewards_of_every_rank,
    token_log_probs,
)

EPS = 1e-4
REWARDS = torch.tensor([1.0, 3.0, 2.0, 6.0])  # two prompts, G = 2: groups [1, 3] and [2, 6]


def test_group_scaling_divides_by_each_group_unbiased_std():
    expected = torch.tensor([-1 / (math.sqrt(2) + EPS), 1 / (math.sqrt(2) + EPS),
                             -2 / (math.sqrt(8) + EPS), 2 / (math.sqrt(8) + EPS)])
    torch.testing.assert_close(group_advantages(REWARDS, 2), expected)
    torch.testing.assert_close(group_advantages(REWARDS.view(2, 2), 2), expected)  # (B, G) input alike


def test_batch_scaling_divides_by_the_std_of_all_rewards():
    # deviations from the batch mean 3: -2, 0, -1, 3 → unbiased variance 14/3
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (math.sqrt(14 / 3) + EPS)
    torch.testing.assert_close(group_advantages(REWARDS, 2, scale_rewards="batch"), expected)


def test_no_scaling_is_dr_grpo_and_a_constant_group_gives_zero_not_nan():
    torch.testing.assert_close(group_advantages(REWARDS, 2, scale_rewards="none"), torch.tensor([-1.0, 1, -2, 2]))
    expected = torch.tensor([0.0, 0.0, -0.5, 0.5]) / (math.sqrt(0.5) + EPS)  # group [0, 1]: mean 0.5, std √0.5
    torch.testing.assert_close(group_advantages([1, 1, 0, 1], 2), expected)


def test_a_nan_reward_is_left_out_of_its_group_and_gets_advantage_zero():
    rewards = torch.tensor([1.0, math.nan, 3.0, 2.0, 6.0, 4.0])  # G = 3; the NaN's group is [1, 3]
    expected = torch.tensor([-1 / (math.sqrt(2) + EPS), 0.0, 1 / (math.sqrt(2) + EPS), -2 / (2 + EPS),
                             2 / (2 + EPS), 0.0])
    torch.testing.assert_close(group_advantages(rewards, 3), expected)
    # batch scaling: the std of the five rewards that apply
    batch = torch.tensor([-1.0, 0.0, 1.0, -2.0, 2.0, 0.0]) / (nanstd(rewards) + EPS)
    torch.testing.assert_close(group_advantages(rewards, 3, scale_rewards="batch"), batch)
    torch.testing.assert_close(nanstd(rewards), torch.tensor([1.0, 3.0, 2.0, 6.0, 4.0]).std())
    assert group_advantages(torch.full((4,), math.nan), 2).tolist() == [0.0] * 4


def test_batch_scaling_takes_the_std_of_the_batch_it_is_given():
    everyone = torch.tensor([1.0, 3.0, 2.0, 6.0, 0.0, 0.0, 10.0, 10.0])  # this rank's rewards, then another's
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (everyone.std() + EPS)
    torch.testing.assert_close(group_advantages(REWARDS, 2, "batch", batch_rewards=everyone), expected)
    assert torch.equal(rewards_of_every_rank(REWARDS), REWARDS)  # no process group: this rank's alone


def _gather_on_rank(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        rewards = torch.tensor([1.0, 3.0, 2.0, 6.0]) if rank == 0 else torch.tensor([0.0, 0.0, 10.0, 10.0])
        advantages = group_advantages(rewards, 2, "batch", batch_rewards=rewards_of_every_rank(rewards))
        torch.save(advantages, f"{out}-{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_batch_scaling_gathers_the_rewards_of_every_rank(tmp_path):
    """Two CPU ranks (gloo): each scales by the std of both ranks' rewards, as TRL does."""
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_gather_on_rank, args=(2, init, str(tmp_path / "adv")), nprocs=2)
    std = torch.tensor([1.0, 3.0, 2.0, 6.0, 0.0, 0.0, 10.0, 10.0]).std()
    torch.testing.assert_close(torch.load(tmp_path / "adv-0.pt"), torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (std + EPS))
    torch.testing.assert_close(torch.load(tmp_path / "adv-1.pt"), torch.tensor([0.0, 0.0, 0.0, 0.0]))


def test_group_advantages_reject_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="5 rewards do not split into groups of 2"):
        group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="hold groups of 3, but group_size is 2"):
        group_advantages(torch.ones(2, 3), 2)
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        group_advantages(REWARDS, 2, scale_rewards="std")
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        group_advantages(REWARDS, 1)


def test_token_log_probs_by_hand_in_float32():
    logits = torch.tensor([[[0.0, math.log(3), 0.0], [0.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    out = token_log_probs(logits, torch.tensor([[1, 2]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[math.log(3 / 5), math.log(1 / 3)]]), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="do not align with tokens"):
        token_log_probs(logits, torch.tensor([[1, 2, 0]]))


def test_one_update_per_rollout_gives_ratio_one_no_clip_and_minus_mean_advantage():
    logp = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    advantages, mask = torch.tensor([1.0, -0.5]), torch.ones(2, 3)
    out = grpo_loss(logp, logp.detach(), advantages, mask)
    torch.testing.assert_close(out["loss"], torch.tensor(-0.25))
    assert out["clip_fraction"].item() == 0.0 and out["kl"].item() == 0.0
    out["loss"].backward()  # d(−ρA)/dlogp = −A at ρ = 1, each token weighted 1/(B·T)
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 6] * 3, [0.5 / 6] * 3]))


def test_clipping_by_hand_with_per_token_advantages():
    # ρ = 1.5 / 0.5 / 1.5 / 0.5 against A = +1 / −1 / −1 / +1, ε = 0.2
    old = torch.zeros(1, 4)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.5)]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([[1.0, -1.0, -1.0, 1.0]]))
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.8, 1.5, -0.5]]))
    assert clipped.tolist() == [[True, True, False, False]]
    loss.sum().backward()  # the clipped term is constant in ρ: no gradient through clipped tokens
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 1.5, -0.5]]))


def test_dapo_asymmetric_epsilon_raises_only_the_upper_bound():
    old = torch.zeros(2, 1)
    logp = torch.tensor([[math.log(1.25)], [math.log(0.75)]])
    advantages = torch.tensor([1.0, -1.0])
    loss, clipped = clipped_surrogate(logp, old, advantages, epsilon_low=0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2], [0.8]]))
    assert clipped.tolist() == [[True], [True]]
    loss, clipped = clipped_surrogate(logp, old, advantages, epsilon_low=0.2, epsilon_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.25], [0.8]]))
    assert clipped.tolist() == [[False], [True]]


def test_k3_kl_by_hand_and_zero_on_the_reference():
    logp = torch.tensor([0.0, 0.0])
    ref = torch.tensor([math.log(2), -1.0])
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([1 - math.log(2), math.exp(-1)]))
    torch.testing.assert_close(k3_kl(ref, ref), torch.zeros(2))


def test_three_aggregations_on_a_2x3_mask_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(aggregate(loss, mask, "grpo"), torch.tensor((1.5 + 4) / 2))
    torch.testing.assert_close(aggregate(loss, mask, "dapo"), torch.tensor(7 / 3))
    torch.testing.assert_close(aggregate(loss, mask, "dr_grpo"), torch.tensor(7 / 6))
    torch.testing.assert_close(aggregate(loss, mask, "dr_grpo", max_length=7), torch.tensor(0.5))
    with pytest.raises(ValueError, match="loss_type must be one of"):
        aggregate(loss, mask, "bnpo")


def test_sequences_without_active_tokens_give_no_nan():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    empty_row = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(aggregate(loss, empty_row, "grpo"), torch.tensor(0.75))
    for mode in ("grpo", "dapo", "dr_grpo"):
        assert aggregate(loss, torch.zeros(2, 3), mode).item() == 0.0


def test_kl_term_needs_a_reference_only_when_beta_is_positive():
    logp = torch.zeros(1, 3, requires_grad=True)
    ref = torch.tensor([[math.log(2), math.log(2), 5.0]])  # the last token is masked out
    mask, advantages = torch.tensor([[1, 1, 0]]), torch.zeros(1)
    assert grpo_loss(logp, logp.detach(), advantages, mask, beta=0.0)["loss"].item() == 0.0
    with pytest.raises(ValueError, match="ref_logp is None"):
        grpo_loss(logp, logp.detach(), advantages, mask, beta=0.04)
    out = grpo_loss(logp, logp.detach(), advantages, mask, ref_logp=ref, beta=0.04)
    torch.testing.assert_close(out["kl"], torch.tensor(1 - math.log(2)))
    torch.testing.assert_close(out["loss"], torch.tensor(0.04 * (1 - math.log(2))))
    out["loss"].backward()
    assert logp.grad[0, :2].abs().min() > 0 and logp.grad[0, 2] == 0


def test_config_defaults_and_errors_name_the_field():
    config = GRPOConfig(epsilon_high=None, loss_type="dapo")
    assert config.epsilon_high == config.epsilon_low == 0.2 and config.num_iterations == 1
    for kwargs, message in [({"scale_rewards": "std"}, "scale_rewards must be one of"),
                            ({"loss_type": "ppo"}, "loss_type must be one of"),
                            ({"group_size": 1}, "group_size must be at least 2"),
                            ({"epsilon_low": 1.5}, "epsilon_low must be in"),
                            ({"epsilon_high": 0.0}, "epsilon_high must be > 0"),
                            ({"beta": -0.1}, "beta must be >= 0"),
                            ({"num_iterations": 0}, "num_iterations must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            GRPOConfig(**kwargs)
