"""Policies trained by RL: a sample's prompt and completion as token ids, and their log-probabilities.

A :class:`Trajectory` is one prompt with what the policy wrote after it and which of
those tokens it wrote (image tokens of crops appended by an environment are not its
own). :class:`TrajectoryPolicy` gives a VLM family the shared forward over
trajectories: the embeddings (the image's features at its image tokens, each crop's
after it), the logits predicting every completion token, their log-probabilities
(for GRPO) and the text the policy wrote. A family supplies ``rollout`` (and
``encode_crops`` if its trajectories hold crops).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmreason.rl.grpo import token_log_probs


@dataclass
class Trajectory:
    """One prompt and its completion as token ids; the image tokens of crops are in ``completion``."""

    image_index: int  # row of the image batch
    prompt: list[int]
    completion: list[int] = field(default_factory=list)
    policy_mask: list[bool] = field(default_factory=list)  # completion tokens the policy wrote
    crops: list[list[int]] = field(default_factory=list)  # clamped boxes whose tokens were appended
    actions: list[list[float] | None] = field(default_factory=list)  # every action as parsed (None: malformed)
    action_spans: list[tuple[int, int]] = field(default_factory=list)  # completion [start, end) of each action
    done: bool = False

    def extend(self, tokens: list[int], written_by_policy: bool) -> None:
        self.completion += tokens
        self.policy_mask += [written_by_policy] * len(tokens)


class TrajectoryPolicy:
    """Mixin for a :class:`~mmreason.models.baseline.VisionLanguageModel` subclass."""

    def reward_columns(self, trajectories: list[Trajectory], records: list, batch: dict,
                       images: torch.Tensor) -> dict[str, list]:
        """Reward inputs only the model can compute, one value per trajectory (e.g. its masks' IoU)."""
        return {}

    def trajectory_embeddings(self, images: torch.Tensor, trajectories: list[Trajectory],
                              left: bool) -> dict[str, torch.Tensor]:
        """Padded input embeddings and attention mask of prompt + completion per trajectory: the
        image's features at its first image tokens, each crop's features at the image tokens after it."""
        rows = [t.prompt + t.completion for t in trajectories]
        padded = self.processor.pad(rows, left=left)
        ids = padded["input_ids"].to(images.device)
        embeds = self.lm.get_input_embeddings()(ids)
        image_features = self.project_patches(self.vision(images))
        boxes = [box for t in trajectories for box in t.crops]
        crop_features = iter(self.encode_crops(images, [t.image_index for t in trajectories for _ in t.crops], boxes)
                             if boxes else [])
        for row, trajectory in enumerate(trajectories):
            parts = [image_features[trajectory.image_index]] + [next(crop_features) for _ in trajectory.crops]
            at = ids[row] == self.image_token_id
            features = torch.cat(parts)
            if len(features) != int(at.sum()):
                raise ValueError(f"trajectory {row} holds {int(at.sum())} image tokens for {len(features)} "
                                 "image and crop features; image tokens belong to the image and its crops only")
            embeds[row, at] = features.to(embeds.dtype)
        return {"inputs_embeds": embeds, "attention_mask": padded["attention_mask"].to(images.device)}

    def completion_logits(self, images: torch.Tensor, trajectories: list[Trajectory]
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(R, T, V) logits predicting each completion token, the (R, T) tokens and the (R, T)
        policy mask, right-padded (mask False on padding and on crop image tokens)."""
        inputs = self.trajectory_embeddings(images, trajectories, left=False)
        logits = self.lm(**inputs).logits
        width = max(len(t.completion) for t in trajectories)
        tokens = torch.full((len(trajectories), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(trajectories), width), dtype=torch.bool)
        positions = torch.zeros((len(trajectories), width), dtype=torch.long)
        for row, t in enumerate(trajectories):
            n, start = len(t.completion), len(t.prompt)
            tokens[row, :n] = torch.tensor(t.completion)
            mask[row, :n] = torch.tensor(t.policy_mask)
            positions[row, :n] = torch.arange(start - 1, start - 1 + n)  # the logits predicting each token
        device = logits.device
        gathered = logits.gather(1, positions.to(device)[..., None].expand(-1, -1, logits.shape[-1]))
        return gathered, tokens.to(device), mask.to(device)

    def completion_log_probs(self, images: torch.Tensor, trajectories: list[Trajectory]
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, T) log-probabilities of the completion tokens and the (R, T) policy mask."""
        logits, tokens, mask = self.completion_logits(images, trajectories)
        return token_log_probs(logits, tokens), mask

    def completion_text(self, trajectory: Trajectory) -> str:
        """What the policy wrote (crop image tokens and EOS dropped)."""
        written = [t for t, mine in zip(trajectory.completion, trajectory.policy_mask) if mine]
        return self.clean_output(self.tokenizer.decode(written, skip_special_tokens=False))
