"""Reasoning segmentation (LISA, with StAR's parallel test-time scaling): a `<seg>` token → mask.

The baseline VLM learns to put a ``<seg>`` token in its answer for segmentation
questions (task ``seg``): ``<answer> the small red circle <seg> </answer>``. The
backbone's last-layer state that predicts ``<seg>`` (LISA takes the position
before the token) goes through an MLP (h → h → d) and prompts a SAM-style mask
decoder (:mod:`mmreason.layers.mask_decoder`) over the shared vision encoder's
patch tokens (projected to d); the decoder's logits are resized to the input.
Several ``<seg>`` in one answer give several masks (each reads its sample's image).

Loss (papers.md §4) = w_text·CE(text) + w_bce·BCE(mask) + w_dice·Dice(mask), BCE
averaged over each mask's pixels, Dice = 1 − (2Σσ(x)t + 1)/(Σσ(x) + Σt + 1), both
averaged over masks; a sample's target is its mask (255 = object in the shards).
At inference the text is generated, then one forward pass over prompt + text
reads the ``<seg>`` states. ``segment(samples=N)`` samples N answers at a
temperature and aggregates their masks (:mod:`mmreason.seg.tts`); an answer
without ``<seg>`` votes "no object".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmreason.data.schema import Record
from mmreason.eval.answers import extract_answer_span
from mmreason.layers.language import splice_image_features
from mmreason.layers.mask_decoder import MaskDecoder, PromptEncoder
from mmreason.models.baseline import TINY_CONFIG as BASELINE_TINY
from mmreason.models.baseline import VisionLanguageModel
from mmreason.seg.tts import aggregate_masks
from mmreason.text.prompts import answer_tag, target_text
from mmreason.zoo import merge_config

SEG_TOKEN = "<seg>"
SEG_TASK = "seg"
DEFAULT_SEGMENTATION = {"embed_dim": 64, "num_heads": 4, "depth": 2, "upscale": 4,
                        "loss_weights": {"text": 1.0, "bce": 2.0, "dice": 0.5}}
TINY_CONFIG = merge_config(BASELINE_TINY, {"output_format": "answer", "segmentation": DEFAULT_SEGMENTATION})


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over masks (M, H, W) of 1 − (2Σσ(x)t + ε)/(Σσ(x) + Σt + ε)."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    return (1 - (2 * (probs * targets).sum(1) + eps) / (probs.sum(1) + targets.sum(1) + eps)).mean()


class ReasoningSegmenter(VisionLanguageModel):
    """Extra config ``segmentation``: embed_dim (decoder width), num_heads, depth, upscale, loss_weights."""

    family = "star"
    uses_masks = True

    def __init__(self, config: dict, tokenizer=None):
        super().__init__(config, tokenizer)
        spec = merge_config(DEFAULT_SEGMENTATION, config.get("segmentation", {}))
        self.loss_weights = spec["loss_weights"]
        width, dim = self.lm.config.hidden_size, int(spec["embed_dim"])
        self.seg_token_id = self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        self.seg_projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))
        self.image_to_decoder = nn.Linear(self.vision.width, dim)
        grid = round(self.num_image_tokens ** 0.5)
        if grid * grid != self.num_image_tokens:
            raise ValueError(f"the mask decoder needs a square grid of image tokens, got {self.num_image_tokens}")
        self.prompt_encoder = PromptEncoder(dim, self.preprocess.image_size, grid)
        self.mask_decoder = MaskDecoder(dim, spec["num_heads"], spec["depth"], upscale=spec["upscale"])

    def target_text(self, record: Record) -> str:
        """A segmentation question's answer ends with ``<seg>``: the mask is part of the answer."""
        text = target_text(record, self.output_format)
        if record.task != SEG_TASK:
            return text
        answer = answer_tag(f"{record.answer.strip()} {SEG_TOKEN}".strip())
        return text[: text.rindex("<answer>")] + answer

    # ---- masks from <seg> states -------------------------------------------------------------
    def masks_from_states(self, patches: torch.Tensor, states: torch.Tensor, image_index: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, S, S) mask logits and (M,) predicted IoU for M `<seg>` states reading ``patches[image_index]``."""
        sparse = self.prompt_encoder(sparse=self.seg_projection(states)[:, None])
        return self.mask_decoder(self.image_to_decoder(patches), self.prompt_encoder.image_pe(), sparse,
                                 output_size=self.preprocess.image_size, image_index=image_index)

    def _seg_states(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The states predicting each `<seg>` (one position earlier, as LISA) and their rows."""
        before = F.pad(input_ids[:, 1:] == self.seg_token_id, (0, 1))
        rows = torch.nonzero(before)[:, 0]
        return hidden[before], rows

    def batch_loss(self, images: torch.Tensor, records: list[Record], masks=None) -> dict[str, torch.Tensor]:
        """Text CE + mask BCE and Dice; a `<seg>` of a sample without a mask gets no mask loss."""
        inputs = {k: v.to(images.device) for k, v in self.training_inputs(records, skip_too_long=True).items()}
        rows = inputs.pop("rows")
        skipped = len(records) - len(rows)
        images = images[rows]
        patches = self.vision(images)
        embeds = self.lm.get_input_embeddings()(inputs["input_ids"])
        embeds = splice_image_features(embeds, inputs["input_ids"], self.image_token_id, self.project_patches(patches))
        out = self.lm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["labels"],
                      output_hidden_states=True)
        states, seg_rows = self._seg_states(out.hidden_states[-1], inputs["input_ids"])
        targets = _mask_targets(masks, rows.tolist(), images)
        has_mask = torch.tensor([targets[r] is not None for r in seg_rows.tolist()], dtype=torch.bool)
        loss, bce, dice = self.loss_weights["text"] * out.loss, out.loss.new_zeros(()), out.loss.new_zeros(())
        if bool(has_mask.any()):
            logits, _ = self.masks_from_states(patches, states[has_mask], seg_rows[has_mask])
            target = torch.stack([targets[r] for r in seg_rows[has_mask].tolist()]).to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, target)
            dice = dice_loss(logits, target)
            loss = loss + self.loss_weights["bce"] * bce + self.loss_weights["dice"] * dice
        labels = inputs["labels"][:, 1:]
        valid = labels != -100
        accuracy = ((out.logits[:, :-1].argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1)
        return {"loss": loss, "token_accuracy": accuracy, "target_tokens": valid.sum(),
                "tokens": inputs["attention_mask"].sum(), "skipped": skipped, "mask_bce": bce.detach(),
                "mask_dice": dice.detach()}

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, images: torch.Tensor, records: list[Record], samples: int = 1, temperature: float = 1.0,
                max_new_tokens: int = 32, output: str = "best") -> list[dict]:
        """Per record: {text, answer, mask (S, S) bool, votes}; ``samples`` > 1 samples that many answers at
        ``temperature`` and aggregates their masks (StAR); 1 decodes greedily."""
        generated = self.generate_ids(images, records, max_new_tokens, do_sample=samples > 1,
                                      temperature=temperature, num_return_sequences=samples,
                                      suppress_tokens=[self.image_token_id])  # image tokens come from images
        prompts = self._prompt_ids(records)
        texts, rows = [], []
        for i, ids in enumerate(generated.tolist()):
            ids = _until_eos(ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
            texts.append(self.clean_output(self.tokenizer.decode(ids)))
            rows.append(prompts[i // samples] + ids)
        padded = {k: v.to(images.device) for k, v in self._pad(rows, None, left=False).items()}
        image_index = torch.arange(len(records), device=images.device).repeat_interleave(samples)
        patches = self.vision(images)
        embeds = self.embed(images[image_index], padded["input_ids"])
        hidden = self.lm(inputs_embeds=embeds, attention_mask=padded["attention_mask"],
                         output_hidden_states=True).hidden_states[-1]
        states, seg_rows = self._seg_states(hidden, padded["input_ids"])
        size = self.preprocess.image_size
        masks: list[torch.Tensor | None] = [None] * len(rows)
        scores = torch.zeros(len(rows))
        if len(seg_rows):
            logits, iou = self.masks_from_states(patches, states, image_index[seg_rows])
            for row, mask_logits, score in zip(seg_rows.tolist(), logits, iou):
                if masks[row] is None:  # the first <seg> of an answer is its mask
                    masks[row], scores[row] = mask_logits > 0, float(score)
        out = []
        for i in range(len(records)):
            group = slice(i * samples, (i + 1) * samples)
            if samples == 1:
                mask = masks[i] if masks[i] is not None else torch.zeros(size, size, dtype=torch.bool)
                out.append({"text": texts[i], "answer": strip_seg(extract_answer_span(texts[i])), "mask": mask.cpu(),
                            "found": masks[i] is not None, "votes": 1})
                continue
            group_masks = [m.cpu() if m is not None else None for m in masks[group]]
            result = aggregate_masks(group_masks, scores[group], output=output, shape=(size, size))
            text = texts[group][max(result["sample"], 0)]  # the chosen mask's answer (or the first)
            out.append({"text": text, "answer": strip_seg(extract_answer_span(text)), "mask": result["mask"],
                        "found": not result["no_object"], "votes": samples})
        return out

    def answer_batch(self, images: torch.Tensor, records: list[Record], max_new_tokens: int = 32,
                     **generate_kwargs) -> list[str]:
        """Texts to score as answers: the `<seg>` token is the mask's place, not a word of the answer."""
        return [strip_seg(r["text"]) for r in self.segment(images, records, max_new_tokens=max_new_tokens)]

    @torch.no_grad()
    def predict(self, image, question: str, choices: list[str] | None = None, max_new_tokens: int = 32,
                samples: int = 1, temperature: float = 1.0) -> dict:
        """{text, answer, mask (S×S bool, the model input's pixels), found, input_size}."""
        was_training = self.training
        self.eval()
        pixels = self.preprocess(image).unsqueeze(0).to(next(self.parameters()).device)
        result = self.segment(pixels, [Record(question=question, answer="", choices=choices, task=SEG_TASK)],
                              samples=samples, temperature=temperature, max_new_tokens=max_new_tokens)[0]
        self.train(was_training)
        return {**result, "rationale": None, "input_size": self.preprocess.image_size}


def strip_seg(text: str | None) -> str | None:
    return None if text is None else " ".join(text.replace(SEG_TOKEN, " ").split())


def _until_eos(ids: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for token in ids:
        if token in (eos, pad):
            break
        out.append(token)
    return out


def _mask_targets(masks, rows: list[int], images: torch.Tensor) -> list[torch.Tensor | None]:
    """Per kept row, the float {0, 1} target at the input size (object = 255 in the shards), or None."""
    if masks is None:
        return [None] * len(rows)
    out = []
    for row in rows:
        mask = masks[row]
        out.append(None if mask is None else (mask.to(images.device) == 255).float())
    return out
