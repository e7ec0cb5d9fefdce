"""ViRL-style policy: the baseline VLM that can crop its image while it reasons.

While writing its ``<think>`` part the policy may emit ``<crop> x0 , y0 , x1 , y1 </crop>``
(pixel coordinates of the model's input image). Generation then pauses; the box is
parsed, clamped to the image and to ``crop.min_size``, the crop is resized to the
input size, encoded by the same vision encoder, pooled to ``crop.tokens`` tokens,
projected, and appended to the context as that many ``<image>`` tokens; generation
continues (multi-turn, at most ``crop.max_actions`` actions, after which ``<crop>`` is
suppressed). Appended image tokens are never trained on (``policy_mask`` is False there).

The supervised stage writes the benchmark's ground-truth visual rationale this way:
for each rationale step, its box as a crop action (with the crop's image tokens),
then the step's text; then the answer. Everything is a :class:`Trajectory` (prompt,
completion, which completion tokens the policy wrote, crop boxes), so supervised
loss, GRPO log-probabilities and generation share one embedding path.
(Design ours, after ViRL's description of visual rationales as crop actions.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmreason.data.schema import Record
from mmreason.eval.crops import record_boxes
from mmreason.eval.voting import per_record
from mmreason.models.base import ANSWERS, CROPS, POLICY
from mmreason.models.baseline import TINY_CONFIG as BASELINE_TINY
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.config_schema import LEAF, VLM
from mmreason.models.policy import Trajectory, TrajectoryPolicy
from mmreason.models.processor import refuse_turns
from mmreason.rl.crop import (
    CROP_CLOSE,
    CROP_OPEN,
    clamp_box,
    crop_and_resize,
    crop_segments,
    crop_text,
    parse_box,
)
from mmreason.rl.grpo import token_log_probs
from mmreason.text.prompts import answer_tag, thinking
from mmreason.zoo import merge_config, register_family, register_model

DEFAULT_CROP = {"max_actions": 3, "min_size": 8, "tokens": 16}
TINY_CONFIG = merge_config(BASELINE_TINY, {"crop": DEFAULT_CROP})


@register_family("virl")
class VirlPolicy(TrajectoryPolicy, VisionLanguageModel):
    """Extra config: ``crop`` = {max_actions, min_size (px), tokens (per crop, a square number)}."""

    capabilities = frozenset({ANSWERS, CROPS, POLICY})
    response_options = ()
    config_schema = {**VLM, "crop": dict.fromkeys(("tokens", "max_actions", "min_size"), LEAF)}

    def __init__(self, config: dict, tokenizer=None):
        super().__init__(config, tokenizer)
        if self.preprocess.resize != "squash":
            raise ValueError(f"preprocess.resize {self.preprocess.resize!r}: rationale boxes map onto the image as it "
                             "is resized only with 'squash'; use resize: squash")
        spec = merge_config(DEFAULT_CROP, config.get("crop", {}))
        self.max_actions, self.min_size = int(spec["max_actions"]), int(spec["min_size"])
        self.crop_tokens = int(spec["tokens"])
        side = round(self.crop_tokens ** 0.5)
        if side * side != self.crop_tokens or self.crop_tokens > self.num_image_tokens:
            raise ValueError(f"crop.tokens must be a square number ≤ the image's {self.num_image_tokens} tokens, "
                             f"got {self.crop_tokens}")
        self.crop_open_id, self.crop_close_id = self.tokenizer.convert_tokens_to_ids([CROP_OPEN, CROP_CLOSE])

    # ---- crops --------------------------------------------------------------------------------
    def encode_crops(self, images: torch.Tensor, image_index: list[int], boxes: list[list[int]]) -> torch.Tensor:
        """(n, crop.tokens, backbone width): each box of ``images[image_index[i]]`` cropped, resized to
        the input size, encoded, average-pooled on the patch grid and projected."""
        size = images.shape[-1]
        crops = crop_and_resize(images[image_index], boxes, size)
        patches = self.vision(crops)
        grid = round(patches.shape[1] ** 0.5)
        side = round(self.crop_tokens ** 0.5)
        pooled = F.adaptive_avg_pool2d(patches.transpose(1, 2).unflatten(2, (grid, grid)), side)
        return self.projector(pooled.flatten(2).transpose(1, 2))

    def _clamp(self, box: list[float], images: torch.Tensor) -> list[int]:
        return clamp_box(box, images.shape[-1], images.shape[-2], self.min_size)

    # ---- trajectories ---------------------------------------------------------------------------
    def gold_trajectory(self, record: Record, image_index: int, images: torch.Tensor) -> Trajectory | None:
        """The ground-truth visual rationale: per step, its crop action (when it has a box) then its
        text; then the answer and EOS. None when the prompt does not fit ``max_length``."""
        prompt = self.processor.prompt_ids([record], skip_too_long=True)[0]
        if prompt is None:
            return None
        trajectory = Trajectory(image_index, prompt)
        trajectory.extend(self.tokenizer.convert_tokens_to_ids(["<think>"]), True)
        boxes = iter(record_boxes(record, images.shape[-1], images.shape[-2]))
        for step in record.steps or []:
            box = next(boxes) if step.box is not None else None
            if box is not None and len(trajectory.crops) < self.max_actions:
                box = self._clamp(box, images)
                start = len(trajectory.completion)
                trajectory.extend(self._ids(crop_text(box)), True)
                self._act(trajectory, start, box, box)
            trajectory.extend(self._ids(step.text), True)
        if not record.steps and record.rationale:
            trajectory.extend(self._ids(record.rationale), True)
        trajectory.extend(self._ids(f"</think> {answer_tag(record.answer)}") + [self.tokenizer.eos_token_id], True)
        if len(prompt) + len(trajectory.completion) > self.max_length:
            return None
        return trajectory

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _act(self, trajectory: Trajectory, start: int, parsed: list[float] | None, box: list[int] | None) -> None:
        """Record the action written at ``completion[start:]``; a valid box appends its image tokens."""
        trajectory.action_spans.append((start, len(trajectory.completion)))
        trajectory.actions.append(parsed)
        if box is not None:
            trajectory.crops.append(box)
            trajectory.extend([self.image_token_id] * self.crop_tokens, False)

    def batch_processor(self) -> None:
        """Gold trajectories are built here, not in the loader: their crops are clamped to the image."""
        return None

    def batch_loss(self, images: torch.Tensor, records: list[Record]) -> dict[str, torch.Tensor]:
        """Supervised loss on the gold visual rationales (crop image tokens excluded); samples over
        ``max_length`` are skipped and counted."""
        refuse_turns(records, "virl")  # a visual rationale answers one question about the image
        trajectories = [self.gold_trajectory(r, i, images) for i, r in enumerate(records)]
        kept = [t for t in trajectories if t is not None]
        if not kept:
            raise ValueError(f"every sample of the batch exceeds max_length={self.max_length}")
        logits, tokens, mask = self.completion_logits(images, kept)
        n_tokens = mask.sum()
        loss = -(token_log_probs(logits, tokens) * mask).sum() / n_tokens.clamp(min=1)
        accuracy = ((logits.argmax(-1) == tokens) & mask).sum() / n_tokens.clamp(min=1)
        return {"loss": loss, "token_accuracy": accuracy, "target_tokens": n_tokens,
                "tokens": torch.tensor(sum(len(t.prompt) + len(t.completion) for t in kept)),
                "skipped": len(records) - len(kept)}

    # ---- generation with crop actions ----------------------------------------------------------
    @torch.no_grad()
    def rollout(self, images: torch.Tensor, records: list[Record], samples: int = 1, max_new_tokens: int = 128,
                do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                start: list[Trajectory] | None = None) -> list[Trajectory]:
        """``samples`` trajectories per record (adjacent), generated together: every turn generates
        until EOS or ``</crop>`` for all unfinished rows at once, then crops, encodes and goes on.
        ``start``: trajectories to go on from instead (one per record; their tokens count in the budget)."""
        if start is None:
            prompts = self.processor.prompt_ids(records)
            trajectories = [Trajectory(i, prompts[i]) for i in range(len(records)) for _ in range(samples)]
        else:
            trajectories = start
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {
            "do_sample": False}
        for turn in range(self.max_actions + 1):
            active = [t for t in trajectories if not t.done]
            budget = max_new_tokens - min(len(t.completion) for t in active) if active else 0
            if budget <= 0:
                break
            suppress = [self.image_token_id, self.tokenizer.pad_token_id, self.tokenizer.bos_token_id]
            may_crop = [turn < self.max_actions and len(t.actions) < self.max_actions for t in active]
            for allowed in (True, False):  # rows out of actions (here, or in a forced start) cannot open a crop
                group = [t for t, ok in zip(active, may_crop) if ok == allowed]
                if not group:
                    continue
                inputs = self.trajectory_embeddings(images, group, left=True)
                output = self.lm.generate(**inputs, max_new_tokens=budget,
                                          suppress_tokens=suppress + ([] if allowed else [self.crop_open_id]),
                                          eos_token_id=[self.tokenizer.eos_token_id, self.crop_close_id],
                                          pad_token_id=self.tokenizer.pad_token_id, **sampling)
                for trajectory, row in zip(group, output.tolist()):
                    self._continue(trajectory, row, images, max_new_tokens)
        return trajectories

    def _continue(self, trajectory: Trajectory, generated: list[int], images: torch.Tensor,
                  max_new_tokens: int) -> None:
        """Append one turn's tokens; a closed crop action becomes image tokens, anything else ends."""
        room = max_new_tokens - sum(trajectory.policy_mask)
        tokens = []
        for token in generated[:room]:
            tokens.append(token)
            if token in (self.tokenizer.eos_token_id, self.crop_close_id):
                break
        trajectory.extend(tokens, True)
        if not tokens or tokens[-1] != self.crop_close_id or len(trajectory.actions) >= self.max_actions:
            trajectory.done = True
            return
        since = trajectory.action_spans[-1][1] if trajectory.action_spans else 0
        opened = _last_index(trajectory.completion, self.crop_open_id, since)
        start = len(trajectory.completion) - 1 if opened is None else opened
        parsed = None if opened is None else parse_box(self.tokenizer.decode(trajectory.completion[opened + 1 : -1]))
        self._act(trajectory, start, parsed, None if parsed is None else self._clamp(parsed, images))

    def generate(self, images: torch.Tensor, records: list[Record], max_new_tokens: int = 128,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 num_return_sequences: int = 1, **extra) -> list[str]:
        if extra:
            raise ValueError(f"the crop-action policy does not take generation options {sorted(extra)}")
        trajectories = self.rollout(images, records, num_return_sequences, max_new_tokens, do_sample,
                                    temperature, top_p)
        return [self.completion_text(t) for t in trajectories]

    def respond(self, images: torch.Tensor, records: list[Record], max_new_tokens: int | None = None,
                **options) -> list[dict]:
        """Per record the answer's ``text`` and its ``crops`` (boxes in the model input's pixels)."""
        budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        trajectories = self.rollout(images, records, **budget, **options)
        return [{"text": self.clean_output(self.completion_text(t)), "crops": t.crops} for t in trajectories]

    def describe(self, response: dict) -> dict:
        return {**super().describe(response), "input_size": self.preprocess.image_size}

    # ---- rationale probes (mmreason.diagnostics): forced text may hold crop actions --------------
    def forced_trajectory(self, record: Record, image_index: int, images: torch.Tensor, text: str) -> Trajectory:
        """The prompt, then ``text`` as if the policy had written it: each crop action in it is taken (its
        crop's image tokens follow it), as in the policy's own rollouts."""
        trajectory = Trajectory(image_index, self.processor.prompt_ids([record])[0])
        for piece, box in crop_segments(text):
            start = len(trajectory.completion)
            trajectory.extend(self._ids(piece), True)
            if box is not False and len(trajectory.actions) < self.max_actions:
                self._act(trajectory, start, box, None if box is None else self._clamp(box, images))
        return trajectory

    def answers_after(self, images: torch.Tensor, records: list[Record], evidence: list[str],
                      max_new_tokens: int = 96) -> list[dict]:
        """Each record's ``evidence`` (crop actions taken) forced as the start of its rationale; the policy
        writes the rest, cropping as it likes. Described responses."""
        start = [self.forced_trajectory(r, i, images, thinking(e)) for i, (r, e) in enumerate(zip(records, evidence))]
        budget = max(len(t.completion) for t in start) + max_new_tokens  # crops' image tokens count in rollout's
        done = self.rollout(images, records, max_new_tokens=budget, start=start)
        return [self.describe({"text": self.clean_output(self.completion_text(t)), "crops": t.crops}) for t in done]

    @torch.no_grad()
    def answer_entropies(self, images: torch.Tensor, records: list[Record], rationales: list[str]
                         ) -> tuple[torch.Tensor, list[str]]:
        """As the baseline's, with each (partial) rationale's crop actions taken before the answer is read."""
        k = per_record(len(rationales), len(records))
        trajectories = [self.forced_trajectory(records[j // k], j // k, images, thinking(q, answer_next=True))
                        for j, q in enumerate(rationales)]
        inputs = self.trajectory_embeddings(images, trajectories, left=True)
        return self.next_token_entropy(inputs["inputs_embeds"], inputs["attention_mask"])


def _last_index(items: list[int], value: int, since: int = 0) -> int | None:
    for i in range(len(items) - 1, since - 1, -1):
        if items[i] == value:
            return i
    return None


register_model("virl-tiny", "virl", TINY_CONFIG,
               "the tiny VLM as a policy that crops its image while reasoning (<crop> actions, CPU-sized)",
               recipe="recipes/virl/synth-tiny-sft.yaml")
