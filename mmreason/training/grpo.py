"""GRPO fine-tuning of a crop-action policy with Lightning (GRPO as in DeepSeekMath, Shao et al. 2024; crop actions after ViRL).

Every step: G sampled rollouts per prompt (crop actions included), rewards summed
with the recipe's weights, group-relative advantages, optional step-level credit
added to the tokens of each crop action, then μ policy updates on the clipped
surrogate (+ β·k3 KL to a frozen copy of the starting policy when β > 0; β = 0
never builds it). Validation and test decode greedily and report accuracy and crop
quality (mean IoU with the ground-truth rationale boxes, action shares).
"""

from __future__ import annotations

import copy
import functools
import math

import lightning as L
import torch

from mmreason.build import create_model
from mmreason.eval.crops import CropReport, record_boxes
from mmreason.models.base import CROPS, POLICY
from mmreason.rl.grpo import GRPOConfig, group_advantages, grpo_loss, rewards_of_every_rank
from mmreason.rl.rewards import accuracy_reward, format_reward, weighted_sum
from mmreason.rl.step_credit import action_rewards
from mmreason.seg.rewards import box_point_format_reward, mask_iou_reward
from mmreason.training.evaluation import Evaluation
from mmreason.training.schedule import warmup_cosine
from mmreason.training.sft import ModelHooks

REWARDS = {"format": format_reward, "accuracy": accuracy_reward, "box_format": box_point_format_reward,
           "mask_iou": mask_iou_reward}
STEP_CREDIT_DEFAULTS = {"tau": 0.5, "r_correct": 0.5, "r_redundant": 0.0, "r_erroneous": 0.5}


class GRPOModule(ModelHooks, Evaluation, L.LightningModule):
    """Args:
    init: ``{from: EXPORT}`` (optionally ``frozen: [parts]``), the supervised policy's export to train on:
        a crop-action policy (``virl``) or a segmentation policy answering boxes and points (``star``
        with ``segmentation.answer: box``).
    rewards: ``{name: weight}`` over the built-in rewards: ``format``, ``accuracy`` (answers),
        ``box_format``, ``mask_iou`` (StAR's tiered mask IoU, Hungarian-matched; segmentation).
    step_credit: ``{tau, r_correct, r_redundant, r_erroneous}`` to add each crop action's credit to
        its tokens (magnitudes: correct +, redundant −, erroneous −), or None for outcome rewards only.
    group_size, scale_rewards, epsilon_low, epsilon_high, beta, loss_type, num_iterations: GRPO (μ =
        num_iterations policy updates per rollout batch).
    rollouts_per_prompt: StAR's rollout-expanded selective tuning: sample this many rollouts per
        prompt and keep the group_size/2 best and group_size/2 worst by reward (None: sample group_size).
    temperature, top_p, max_new_tokens: rollout sampling.
    lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with warm-up + cosine over optimizer steps.

    ``trainer.max_steps`` counts optimizer steps, as Lightning does: μ per rollout batch.
    """

    def __init__(self, init: dict, rewards: dict[str, float] | None = None, step_credit: dict | None = None,
                 group_size: int = 8, scale_rewards: str = "group", epsilon_low: float = 0.2,
                 epsilon_high: float | None = None, beta: float = 0.0, loss_type: str = "dapo",
                 num_iterations: int = 1, rollouts_per_prompt: int | None = None, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 128,
                 lr: float = 1e-5, weight_decay: float = 0.0, warmup_steps: int = 0, min_lr_ratio: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.config = GRPOConfig(group_size, scale_rewards, epsilon_low, epsilon_high, beta, loss_type,
                                 num_iterations)
        rewards = rewards if rewards is not None else {"format": 0.5, "accuracy": 1.0}
        unknown = sorted(set(rewards) - set(REWARDS))
        if unknown:
            raise ValueError(f"unknown rewards {unknown}; built-in rewards are {sorted(REWARDS)}")
        self.reward_fns = {name: (REWARDS[name], float(weight)) for name, weight in rewards.items()}
        self.step_credit = None if step_credit is None else {**STEP_CREDIT_DEFAULTS, **step_credit}
        if isinstance(init, dict) and init.get("parts"):
            raise ValueError("GRPO trains a whole policy export: init: {from: EXPORT} without parts")
        self.model = create_model(init=init)
        if not self.model.can(POLICY):
            raise ValueError(f"GRPO needs a policy export (family 'virl' or 'star'); {init['from']} holds a "
                             f"{self.model.family!r} model")
        self.crops = self.model.can(CROPS)
        if self.step_credit is not None and not self.crops:
            raise ValueError("step_credit rewards crop actions; this policy takes none (set step_credit: null)")
        if rollouts_per_prompt is not None and (rollouts_per_prompt < group_size or group_size % 2):
            raise ValueError(f"rollouts_per_prompt ({rollouts_per_prompt}) keeps group_size/2 best and worst: it "
                             f"must be >= group_size ({group_size}), an even number")
        self.reference = None
        if self.config.beta > 0:  # a frozen copy of the starting policy
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.last_metrics: dict[str, float] = {}

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay, betas=(0.9, 0.99))
        total = int(self.trainer.estimated_stepping_batches)  # max_steps counts optimizer steps: μ per batch
        schedule = functools.partial(warmup_cosine, warmup_steps=self.hparams.warmup_steps, total_steps=total,
                                     min_ratio=self.hparams.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)}

    # ---- one GRPO step ------------------------------------------------------------------------
    def rewards(self, trajectories, batch) -> tuple[torch.Tensor, dict[str, list[float]], CropReport | None, list]:
        """Summed outcome rewards (R,), their components, and for a crop policy the crop report and
        each rollout's action labels."""
        images, records = batch["images"], batch["records"]
        texts = [self.model.completion_text(t) for t in trajectories]
        prompts = [records[t.image_index].question for t in trajectories]
        columns = {"answer": [records[t.image_index].answer for t in trajectories]}
        columns.update(self.model.reward_columns(trajectories, records, batch, images))  # e.g. its masks' IoU
        totals, components = weighted_sum(self.reward_fns, prompts, texts, **columns)
        if not self.crops:
            return torch.tensor(totals), components, None, [[] for _ in trajectories]
        crops = CropReport((self.step_credit or STEP_CREDIT_DEFAULTS)["tau"])
        labels = [crops.add(t.actions, record_boxes(records[t.image_index], images.shape[-1], images.shape[-2]))
                  for t in trajectories]
        return torch.tensor(totals), components, crops, labels

    def select(self, trajectories, rewards: torch.Tensor, *rest) -> tuple:
        """Rollout-expanded selective tuning: per prompt, the group_size/2 best and worst rollouts
        (ties by sampling order); everything else drops out of this step. Applied to the
        trajectories, rewards and each list in ``rest`` alike."""
        n, keep = self.hparams.rollouts_per_prompt, self.config.group_size // 2
        chosen = []
        for start in range(0, len(trajectories), n):
            order = sorted(range(start, start + n), key=lambda i: (-float(rewards[i]), i))
            chosen += sorted(order[:keep] + order[-keep:])
        pick = [trajectories[i] for i in chosen], rewards[chosen]
        return pick + tuple([items[i] for i in chosen] for items in rest)

    def token_advantages(self, advantages: torch.Tensor, trajectories, labels, width: int) -> torch.Tensor:
        """(R, T): each rollout's outcome advantage on every token, plus its actions' step credit."""
        out = advantages[:, None].expand(-1, width).clone()
        if self.step_credit is None:
            return out
        credit = {k: self.step_credit[k] for k in ("r_correct", "r_redundant", "r_erroneous")}
        for row, (trajectory, row_labels) in enumerate(zip(trajectories, labels)):
            for (start, end), reward in zip(trajectory.action_spans, action_rewards(row_labels, **credit)):
                out[row, start:end] += reward
        return out

    def batch_processor(self) -> None:
        """Rollouts tokenise their own prompts; the loader has nothing to prepare."""
        return None

    def training_step(self, batch, batch_idx):
        images, records = batch["images"], batch["records"]
        hp, model = self.hparams, self.model
        trajectories = model.rollout(images, records, samples=hp.rollouts_per_prompt or self.config.group_size,
                                     max_new_tokens=hp.max_new_tokens, do_sample=True,
                                     temperature=hp.temperature, top_p=hp.top_p)
        rewards, components, crops, labels = self.rewards(trajectories, batch)
        sampled_reward = rewards.mean()
        if hp.rollouts_per_prompt:
            trajectories, rewards, labels = self.select(trajectories, rewards, labels)
        all_rank_rewards = rewards_of_every_rank(rewards) if self.config.scale_rewards == "batch" else None
        advantages = group_advantages(rewards, self.config.group_size, self.config.scale_rewards,
                                      batch_rewards=all_rank_rewards)
        with torch.no_grad():
            old_logp = model.completion_log_probs(images, trajectories)[0] if self.config.num_iterations > 1 else None
            ref_logp = (self.reference.completion_log_probs(images, trajectories)[0]
                        if self.reference is not None else None)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        for _ in range(self.config.num_iterations):
            logp, mask = model.completion_log_probs(images, trajectories)
            token_adv = self.token_advantages(advantages.to(logp.device), trajectories, labels, logp.shape[1])
            out = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, token_adv, mask, ref_logp,
                            self.config.beta, self.config.epsilon_low, self.config.epsilon_high,
                            self.config.loss_type, max_length=hp.max_new_tokens)
            optimizer.zero_grad()
            self.manual_backward(out["loss"])
            self.clip_gradients(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
            optimizer.step()
            scheduler.step()
        self._log_step(sampled_reward, components, crops, out, mask)
        return out["loss"]

    def _log_step(self, reward, components, crops: CropReport | None, out, mask) -> None:
        """Rewards are the means over every sampled rollout (before any selection); a reward's mean
        leaves out the rollouts it does not apply to."""
        metrics = {"train/reward": reward, "train/loss": out["loss"].detach(), "train/kl": out["kl"],
                   "train/clip_fraction": out["clip_fraction"],
                   "train/response_length": mask.sum(1).float().mean(),
                   **{f"train/reward_{k}": torch.tensor(v).nanmean() for k, v in components.items()
                      if not all(math.isnan(x) for x in v)}}
        if crops is not None:
            metrics.update({f"train/{k}": v for k, v in crops.to_dict().items() if v is not None})
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False)
        self.log("reward", float(reward), prog_bar=True, logger=False)
