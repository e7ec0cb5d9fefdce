"""GRPO fine-tuning of a crop-action policy with Lightning (papers.md §3).

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

import lightning as L
import torch

from mmreason.eval.accuracy import AccuracyReport
from mmreason.eval.crops import CropReport, record_boxes
from mmreason.export import load_export
from mmreason.rl.grpo import GRPOConfig, group_advantages, grpo_loss
from mmreason.rl.rewards import accuracy_reward, format_reward, weighted_sum
from mmreason.rl.step_credit import action_rewards
from mmreason.training.schedule import warmup_cosine
from mmreason.training.sft import AnswerEvaluation, gather_report

REWARDS = {"format": format_reward, "accuracy": accuracy_reward}
STEP_CREDIT_DEFAULTS = {"tau": 0.5, "r_correct": 0.5, "r_redundant": 0.0, "r_erroneous": 0.5}


class GRPOModule(AnswerEvaluation, L.LightningModule):
    """Args:
    init_from: the supervised policy's export (family ``virl``).
    rewards: ``{name: weight}`` over the built-in rewards (``format``, ``accuracy``).
    step_credit: ``{tau, r_correct, r_redundant, r_erroneous}`` to add each crop action's credit to
        its tokens (magnitudes: correct +, redundant −, erroneous −), or None for outcome rewards only.
    group_size, scale_rewards, epsilon_low, epsilon_high, beta, loss_type, num_iterations: GRPO (μ =
        num_iterations policy updates per rollout batch).
    temperature, top_p, max_new_tokens: rollout sampling.
    lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with warm-up + cosine over optimizer steps.

    ``trainer.max_steps`` counts optimizer steps, as Lightning does: μ per rollout batch.
    """

    def __init__(self, init_from: str, rewards: dict[str, float] | None = None, step_credit: dict | None = None,
                 group_size: int = 8, scale_rewards: str = "group", epsilon_low: float = 0.2,
                 epsilon_high: float | None = None, beta: float = 0.0, loss_type: str = "dapo",
                 num_iterations: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128,
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
        self.model = load_export(init_from).train()
        if not hasattr(self.model, "rollout"):
            raise ValueError(f"GRPO needs a crop-action policy export (family 'virl'); {init_from} holds a "
                             f"{self.model.family!r} model")
        self.reference = None
        if self.config.beta > 0:  # a frozen copy of the starting policy
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.reports: dict[str, AccuracyReport | CropReport] = {}
        self.last_metrics: dict[str, float] = {}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "preprocess"):
            for key in ("image_size", "mean", "std"):
                setattr(datamodule.preprocess, key, getattr(self.model.preprocess, key))

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        batch["images"] = self.model.preprocess.normalize(batch.pop("pixels"))
        return batch

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mmreason_module"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay, betas=(0.9, 0.99))
        total = int(self.trainer.estimated_stepping_batches)  # max_steps counts optimizer steps: μ per batch
        schedule = functools.partial(warmup_cosine, warmup_steps=self.hparams.warmup_steps, total_steps=total,
                                     min_ratio=self.hparams.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)}

    # ---- one GRPO step ------------------------------------------------------------------------
    def rewards(self, trajectories, records, images) -> tuple[torch.Tensor, dict[str, list[float]], CropReport, list]:
        """Summed outcome rewards (R,), their components, the crop report and each rollout's action labels."""
        texts = [self.model.completion_text(t) for t in trajectories]
        prompts = [records[t.image_index].question for t in trajectories]
        answers = [records[t.image_index].answer for t in trajectories]
        totals, components = weighted_sum(self.reward_fns, prompts, texts, answer=answers)
        crops = CropReport((self.step_credit or STEP_CREDIT_DEFAULTS)["tau"])
        labels = [crops.add(t.actions, record_boxes(records[t.image_index], images.shape[-1], images.shape[-2]))
                  for t in trajectories]
        return torch.tensor(totals), components, crops, labels

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

    def training_step(self, batch, batch_idx):
        images, records = batch["images"], batch["records"]
        hp, model = self.hparams, self.model
        trajectories = model.rollout(images, records, samples=self.config.group_size,
                                     max_new_tokens=hp.max_new_tokens, do_sample=True,
                                     temperature=hp.temperature, top_p=hp.top_p)
        rewards, components, crops, labels = self.rewards(trajectories, records, images)
        advantages = group_advantages(rewards, self.config.group_size, self.config.scale_rewards)
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
                            self.config.loss_type)
            optimizer.zero_grad()
            self.manual_backward(out["loss"])
            self.clip_gradients(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
            optimizer.step()
            scheduler.step()
        self._log_step(rewards, components, crops, out, mask)
        return out["loss"]

    def _log_step(self, rewards, components, crops: CropReport, out, mask) -> None:
        metrics = {"train/reward": rewards.mean(), "train/loss": out["loss"].detach(), "train/kl": out["kl"],
                   "train/clip_fraction": out["clip_fraction"],
                   "train/response_length": mask.sum(1).float().mean(),
                   **{f"train/reward_{k}": sum(v) / len(v) for k, v in components.items()},
                   **{f"train/{k}": v for k, v in crops.to_dict().items() if v is not None}}
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False)
        self.log("reward", float(rewards.mean()), prog_bar=True, logger=False)

    # ---- evaluation: answers (AnswerEvaluation) and where the policy looked -------------------
    def _eval_step(self, batch, stage: str):
        texts = super()._eval_step(batch, stage)
        crops = self.reports.setdefault(f"{stage}/crops", CropReport())
        crops.add_many(texts, batch["records"], self.model.preprocess.image_size)

    def _eval_epoch_end(self, stage: str):
        super()._eval_epoch_end(stage)
        crops = gather_report(self.reports.pop(f"{stage}/crops", CropReport())).to_dict()
        self.log_metrics({f"{stage}/{k}": v for k, v in crops.items() if v is not None})
