"""The GRPO objective as plain tensor functions: advantages, clipped surrogate, KL, aggregation.

No model lives here: a trainer computes log-probabilities with :func:`token_log_probs`,
rewards with :mod:`mmreason.rl.rewards`, and hands tensors to :func:`grpo_loss`.
The formulas are those of GRPO (Shao et al. 2024, as TRL implements it, with the DAPO and
Dr.GRPO switches). Shapes: B completions (prompts × group), T completion tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_group_size(group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}: with one completion per prompt "
                         "every advantage is zero and there is nothing to learn")


def nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased standard deviation of the values that are not NaN (TRL's ``nanstd``)."""
    valid = ~values.isnan()
    mean = values.nanmean() if dim is None else values.nanmean(dim, keepdim=True)
    squares = torch.where(valid, (values - mean) ** 2, torch.zeros_like(values))
    count = valid.sum() if dim is None else valid.sum(dim)
    total = squares.sum() if dim is None else squares.sum(dim)
    return (total / (count - 1)).sqrt()


def rewards_of_every_rank(rewards: torch.Tensor) -> torch.Tensor:
    """This rank's rewards and every other rank's, concatenated in rank order (TRL gathers the rewards
    before it scales them by the batch std); this rank's alone outside a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rewards
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, rewards.detach().cpu())  # sizes may differ between ranks
    return torch.cat(parts).to(rewards.device)


def group_advantages(rewards: torch.Tensor | Sequence[float], group_size: int, scale_rewards: str = "group",
                     eps: float = 1e-4, batch_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Rewards (B·G,) or (B, G), grouped by prompt, → advantages (B·G,).

    A_i = (r_i − mean_G r) / (std + eps), std over the group ("group"), over the
    whole batch ("batch", TRL; ``batch_rewards``, e.g. :func:`rewards_of_every_rank`, is that
    batch when it is larger than these rewards), or no division ("none", Dr.GRPO: dividing by
    the group std up-weights prompts that are nearly always right or wrong). The std is
    unbiased, as in TRL, so numbers match upstream logs. A NaN reward is left out of every mean
    and std and gets advantage 0 (TRL's nan-aware statistics; :func:`~mmreason.rl.rewards.weighted_sum`
    already drops rewards that do not apply, so training totals are never NaN).
    """
    _check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    _check_group_size(group_size)
    rewards = torch.as_tensor(rewards)
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    if rewards.dim() == 2 and rewards.shape[1] != group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} hold groups of {rewards.shape[1]}, "
                         f"but group_size is {group_size}")
    rewards = rewards.reshape(-1)
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}; "
                         "pass group_size completions per prompt, grouped consecutively")
    grouped = rewards.view(-1, group_size)
    advantages = (grouped - grouped.nanmean(1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        advantages = advantages / (nanstd(grouped, 1).repeat_interleave(group_size) + eps)
    elif scale_rewards == "batch":
        advantages = advantages / (nanstd(rewards if batch_rewards is None else batch_rewards) + eps)
    return advantages.nan_to_num(nan=0.0)


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V) and the tokens they predict (B, T) → log p(token) (B, T), in float32.

    Computed as gathered logit − logsumexp, which never materialises a (B, T, V)
    log-softmax; float32 because bf16 log-probs make the ratio ρ noisy.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not align with tokens {tuple(tokens.shape)}; "
                         "pass the logits that predict each token (logits[:, :-1] against tokens[:, 1:])")
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      epsilon_low: float = 0.2, epsilon_high: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) with ρ = exp(logp − old_logp).

    ``advantages`` (B,) apply to every token of a completion; (B, T) allows per-token
    credit (step rewards added on top of the outcome advantage). ε_high defaults to
    ε_low; DAPO raises it (0.28) so unlikely tokens can grow. Returns the loss (B, T)
    and a bool mask of tokens where the clipped term won (its gradient is zero there).
    With one update per rollout pass ``old_logp = logp.detach()``: ρ = 1, nothing clips.
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_ref): exp(ref − logp) − (ref − logp) − 1, ≥ 0, unbiased."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str = "grpo",
              max_length: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) over the active tokens of ``mask`` (B, T) to a scalar.

    "grpo": mean over sequences of each sequence's token mean (long answers weigh
    less per token); "dapo": Σ tokens / number of active tokens (every token equal);
    "dr_grpo": Σ tokens / (B · max_length), a constant denominator (no length bias): pass the
    generation budget (TRL's ``max_completion_length``); it defaults to T, the batch's padded width,
    which is not constant. A sequence without active tokens adds 0, never NaN.
    """
    _check_choice("loss_type", mode, LOSS_TYPES)
    if mask.shape != per_token_loss.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of the loss {tuple(per_token_loss.shape)}")
    mask = mask.to(per_token_loss.dtype)
    if mode == "dapo":
        return _masked_mean(per_token_loss, mask)
    total = per_token_loss * mask
    if mode == "grpo":
        return (total.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    return total.sum() / (per_token_loss.shape[0] * (max_length or per_token_loss.shape[1]))


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, beta: float = 0.0, epsilon_low: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo",
              max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The GRPO loss and its metrics: ``{"loss", "clip_fraction", "kl"}``.

    Per token: clipped surrogate + β·k3 KL to the frozen reference, reduced by
    :func:`aggregate`. β = 0 (current TRL default) needs no reference model, so
    ``ref_logp`` may be ``None``. ``clip_fraction`` and ``kl`` are detached means
    over the active tokens; ``kl`` is 0 when it is not computed.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} weighs a KL to the reference policy, but ref_logp is None; "
                         "pass the reference model's token log-probs or set beta=0")
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, epsilon_low, epsilon_high)
    mask = mask.to(per_token.dtype)
    kl = torch.zeros((), device=per_token.device)
    if beta > 0:
        token_kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * token_kl
        kl = _masked_mean(token_kl.detach(), mask)
    return {
        "loss": aggregate(per_token, mask, loss_type, max_length),
        "clip_fraction": _masked_mean(clipped.to(mask.dtype), mask),
        "kl": kl,
    }


@dataclass
class GRPOConfig:
    """GRPO hyper-parameters (Shao et al. 2024; TRL's names); ``num_iterations`` μ = policy updates per rollout batch.

    With μ = 1 the policy that sampled is the one being updated (ρ = 1); μ > 1
    reuses the rollout, and the clip keeps the later updates near the sampler.
    """

    group_size: int = 8
    scale_rewards: str = "group"
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    loss_type: str = "grpo"
    num_iterations: int = 1

    def __post_init__(self) -> None:
        _check_group_size(self.group_size)
        _check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        if not 0 < self.epsilon_low < 1:
            raise ValueError(f"epsilon_low must be in (0, 1), got {self.epsilon_low}")
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon_low
        if self.epsilon_high <= 0:
            raise ValueError(f"epsilon_high must be > 0 (or None for epsilon_low), got {self.epsilon_high}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0 (0 = no reference model), got {self.beta}")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1 policy update per rollout, got {self.num_iterations}")
