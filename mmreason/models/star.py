"""Reasoning segmentation (LISA, with StAR's parallel test-time scaling): a `<seg>` token → mask.

The baseline VLM learns to put a ``<seg>`` token in its answer for segmentation
questions (task ``seg``): ``<answer> the small red circle <seg> </answer>``. The
backbone's last-layer state that predicts ``<seg>`` (LISA takes the position
before the token) goes through an MLP (h → h → d) and prompts a SAM-style mask
decoder (:mod:`mmreason.layers.mask_decoder`) over the shared vision encoder's
patch tokens (projected to d); the decoder's logits are resized to the input.
Several ``<seg>`` in one answer give several masks (each reads its sample's image).

Loss (LISA, Lai et al., CVPR 2024) = w_text·CE(text) + w_bce·BCE(mask) + w_dice·Dice(mask), BCE
averaged over each mask's pixels, Dice = 1 − (2Σσ(x)t + 1)/(Σσ(x) + Σt + 1), both
averaged over masks; a sample's target is its mask (255 = object in the shards).
At inference the text is generated, then one forward pass over prompt + text
reads the ``<seg>`` states. ``segment(samples=N)`` samples N answers at a
temperature and aggregates their masks (:mod:`mmreason.seg.tts`); an answer
without ``<seg>`` votes "no object".

``segmentation.image_encoder`` gives the decoder an image encoder of its own with its own view
of the image (LISA: SAM's ViT at 1024 px beside the VLM's CLIP): ``predict`` makes that view
from the original image and returns the mask at the original size, as LISA's post-processing
(upscale, crop the padding, resize); batch evaluation and training resize the model's input
view to the encoder's instead (one image tensor per batch), and masks stay in the input view.
``segmentation.seg_token`` names the mask token (``[SEG]`` in LISA's checkpoints).

``segmentation.answer: box`` is the RL path's policy (Seg-Zero / StAR): the answer
names each object by a box and a point (:mod:`mmreason.seg.answers`), and the
same decoder, prompted by them (a promptable segmenter), draws the masks. Its
supervised stage learns the box and point of each target mask and trains the
decoder on the gold prompts; GRPO (:mod:`mmreason.training.grpo`) then rewards the
masks its answers produce. Both answers make a :class:`TrajectoryPolicy`.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn.functional as F
from torch import nn

from mmreason.data.preprocess import Preprocess, longest_side_shape
from mmreason.data.schema import Record
from mmreason.eval.answers import extract_answer_span
from mmreason.layers.language import splice_image_features
from mmreason.layers.mask_decoder import MaskDecoder, PromptEncoder, sam_postprocess_masks
from mmreason.layers.vision import build_vision_tower
from mmreason.models.base import ANSWERS, POLICY, SEGMENTS, nothing_to_learn
from mmreason.models.baseline import TINY_CONFIG as BASELINE_TINY
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.config_schema import ANY, LEAF, PREPROCESS, VLM
from mmreason.models.policy import Trajectory, TrajectoryPolicy
from mmreason.models.processor import PromptProcessor
from mmreason.seg.answers import format_box_point, mask_box_point, parse_box_points
from mmreason.seg.rewards import matched_ious
from mmreason.seg.tts import aggregate_masks
from mmreason.text.prompts import PROMPT, answer_tag, query_record, target_text
from mmreason.zoo import merge_config, register_family, register_model

SEG_TOKEN = "<seg>"
SEG_TASK = "seg"
ANSWER_KINDS = ("seg", "box")
DEFAULT_SEGMENTATION = {"answer": "seg", "embed_dim": 64, "num_heads": 4, "depth": 2, "upscale": 4,
                        "loss_weights": {"text": 1.0, "bce": 2.0, "dice": 0.5}, "seg_token": SEG_TOKEN,
                        "image_encoder": None}  # or {vision: a vision tower spec, preprocess: its view}
TINY_CONFIG = merge_config(BASELINE_TINY, {"output_format": "answer", "segmentation": DEFAULT_SEGMENTATION})


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over masks (M, H, W) of 1 − (2Σσ(x)t + ε)/(Σσ(x) + Σt + ε)."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    return (1 - (2 * (probs * targets).sum(1) + eps) / (probs.sum(1) + targets.sum(1) + eps)).mean()


class StarProcessor(PromptProcessor):
    """The VLM's tensors, segmentation answers ending in ``<seg>`` or naming the target mask's box and
    point (``box`` answers: read off the batch's masks, so the loader workers do it too)."""

    single_turn_family = "star"  # its masks and boxes answer one question about the image

    def __init__(self, tokenizer, num_image_tokens: int, max_length: int, output_format: str, answer_kind: str,
                 prompt: str = PROMPT, seg_token: str = SEG_TOKEN):
        if answer_kind not in ANSWER_KINDS:
            raise ValueError(f"segmentation.answer must be one of {ANSWER_KINDS}, got {answer_kind!r}")
        super().__init__(tokenizer, num_image_tokens, max_length, output_format, prompt)
        self.answer_kind, self.seg_token = answer_kind, seg_token

    def target_text(self, record: Record) -> str:
        """A segmentation question's answer ends with ``<seg>`` (the mask is part of the answer), or
        is the target's box and point (``meta["box_point"]``) in ``box`` answers."""
        text = target_text(record, self.output_format)
        if record.task != SEG_TASK:
            return text
        if self.output_format == "plain" and self.answer_kind == "seg":  # LISA's answers: "Sure, it is [SEG]."
            return f"{text} {self.seg_token}".strip()
        if self.answer_kind == "box":
            prompt = (record.meta or {}).get("box_point")
            answer = answer_tag(format_box_point(*prompt) if prompt else "")
        else:
            answer = answer_tag(f"{record.answer.strip()} {self.seg_token}".strip())
        return text[: text.rindex("<answer>")] + answer

    def segmentation_inputs(self, records: list[Record], masks) -> dict[str, torch.Tensor]:
        """:meth:`training_inputs` of the records, ``box`` answers taking each target's box and point
        from its mask (uint8, 255 = object; None: no mask)."""
        if self.answer_kind == "box" and masks is not None:
            records = [_with_box_point(r, m) for r, m in zip(records, masks)]
        return self.training_inputs(records, skip_too_long=True)

    def __call__(self, batch: dict) -> dict:
        batch["inputs"] = self.segmentation_inputs(batch["records"], batch.get("masks"))
        return batch


def _with_box_point(record: Record, mask: torch.Tensor | None) -> Record:
    """The record with its target's box and point in ``meta["box_point"]`` (what a ``box`` answer says)."""
    pair = None if mask is None or record.task != SEG_TASK else mask_box_point(mask.cpu() == 255)
    return record if pair is None else dataclasses.replace(record, meta={**(record.meta or {}), "box_point": pair})


@register_family("star")
class StarSegmenter(TrajectoryPolicy, VisionLanguageModel):
    """Extra config ``segmentation``: answer (seg | box), embed_dim (decoder width), num_heads, depth,
    upscale, loss_weights."""

    config_schema = {**VLM, "segmentation": {
        **dict.fromkeys(("answer", "embed_dim", "num_heads", "depth", "upscale", "seg_token"), LEAF),
        "loss_weights": dict.fromkeys(("text", "bce", "dice"), LEAF), "image_encoder": {"vision": ANY, "preprocess": PREPROCESS}}}
    response_options = ("samples", "temperature")
    probes_rationales = False  # its output is a mask

    def __init__(self, config: dict, tokenizer=None):
        super().__init__(config, tokenizer)
        spec = merge_config(DEFAULT_SEGMENTATION, config.get("segmentation", {}))
        encoder = spec["image_encoder"]
        if self.preprocess.resize != "squash" and encoder is None:
            raise ValueError(f"preprocess.resize {self.preprocess.resize!r}: segmentation masks are resized as the "
                             "image is only with 'squash'; use resize: squash")
        self.loss_weights = spec["loss_weights"]
        width, dim = self.lm.config.hidden_size, int(spec["embed_dim"])
        self.seg_token_id = self.tokenizer.convert_tokens_to_ids(self.processor.seg_token)
        if self.seg_token_id in (None, self.tokenizer.unk_token_id):
            raise ValueError(f"segmentation.seg_token {self.processor.seg_token!r} is not a token of the tokenizer")
        self.seg_projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))
        if encoder is None:
            self.segmentation_encoder = self.segmentation_preprocess = None
            decoder_size, tokens, in_width = self.preprocess.image_size, self.num_image_tokens, self.vision.width
            self.image_to_decoder = nn.Linear(in_width, dim)
        else:
            if self.answer_kind != "seg":
                raise ValueError("segmentation.image_encoder reads <seg> prompts (LISA); use answer: seg with it")
            self.segmentation_encoder = build_vision_tower(encoder["vision"])
            self.segmentation_preprocess = Preprocess.from_dict({**Preprocess().to_dict(), **encoder.get("preprocess", {})})
            decoder_size = self.segmentation_preprocess.image_size
            tokens, in_width = self.segmentation_encoder.num_tokens(decoder_size), self.segmentation_encoder.width
            self.image_to_decoder = nn.Identity() if in_width == dim else nn.Linear(in_width, dim)
        grid = round(tokens ** 0.5)
        if grid * grid != tokens:
            raise ValueError(f"the mask decoder needs a square grid of image tokens, got {tokens}")
        self.prompt_encoder = PromptEncoder(dim, decoder_size, grid)
        self.mask_decoder = MaskDecoder(dim, spec["num_heads"], spec["depth"], upscale=spec["upscale"],
                                        iou_head_hidden_dim=dim)

    @property
    def answer_kind(self) -> str:
        """``seg`` or ``box``: what the answer names (its processor holds it)."""
        return self.processor.answer_kind

    def build_processor(self, config: dict) -> StarProcessor:
        spec = merge_config(DEFAULT_SEGMENTATION, config.get("segmentation", {}))
        return StarProcessor(self.tokenizer, self.num_image_tokens, int(config.get("max_length", 512)),
                             config.get("output_format", "answer"), spec["answer"], config.get("prompt", PROMPT),
                             spec["seg_token"])

    # ---- masks from prompts ------------------------------------------------------------------
    def decoder_features(self, images: torch.Tensor, patches: torch.Tensor,
                         view: dict | None = None) -> torch.Tensor:
        """(B, g², d): the image tokens the mask decoder reads — the VLM's patches, or the segmentation
        encoder's over ``view["images"]`` (its own view of the originals) or else over ``images`` resized."""
        if self.segmentation_encoder is None:
            return self.image_to_decoder(patches)
        pixels = view["images"] if view is not None else self._encoder_view(images)
        return self.image_to_decoder(self.segmentation_encoder(pixels.to(images.device, images.dtype)))

    def _encoder_view(self, images: torch.Tensor) -> torch.Tensor:
        """The segmentation encoder's input made from the model's input view: back to [0, 1], resized
        (antialiased) to the encoder's size, normalised as it expects."""
        ours, theirs = self.preprocess, self.segmentation_preprocess
        def stats(p: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.tensor(p.mean, device=images.device).view(1, 3, 1, 1),
                    torch.tensor(p.std, device=images.device).view(1, 3, 1, 1))
        (mean, std), (their_mean, their_std) = stats(ours), stats(theirs)
        size = (theirs.image_size, theirs.image_size)
        pixels = F.interpolate(images.float() * std + mean, size=size, mode="bilinear", antialias=True)
        return ((pixels - their_mean) / their_std).to(images.dtype)

    def decode_masks(self, features: torch.Tensor, image_index: torch.Tensor, states: torch.Tensor | None = None,
                     boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                     view: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, S, S) mask logits in the input view's pixels (or, given the segmentation encoder's ``view``,
        (M, H, W) at the original image's size) and (M,) predicted IoU for M prompts reading
        ``features[image_index]`` (:meth:`decoder_features`): `<seg>` states (M, h), or boxes (M, 4)
        with points (M, 2) in input pixels."""
        sparse, dense = self.prompt_encoder(sparse=None if states is None else self.seg_projection(states)[:, None],
                                            boxes=boxes, points=points)
        size = None if view is not None else self.preprocess.image_size
        logits, iou = self.mask_decoder(features, self.prompt_encoder.image_pe(), sparse, dense, output_size=size,
                                        image_index=image_index)
        if view is not None:
            logits = sam_postprocess_masks(logits, self.segmentation_preprocess.image_size, view["valid"],
                                           view["original"])
        return logits, iou

    def _seg_states(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The states predicting each `<seg>` (one position earlier, as LISA) and their rows."""
        before = F.pad(input_ids[:, 1:] == self.seg_token_id, (0, 1))
        rows = torch.nonzero(before)[:, 0]
        return hidden[before], rows

    def capability_set(self) -> frozenset[str]:
        """A box answer names no object, so only the ``<seg>`` path is scored as text answers."""
        return frozenset({SEGMENTS, POLICY} | ({ANSWERS} if self.answer_kind == "seg" else set()))

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.batch_loss(batch["images"], batch["records"], masks=batch.get("masks"), inputs=batch.get("inputs"))

    def batch_loss(self, images: torch.Tensor, records: list[Record], masks=None,
                   inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Text CE + mask BCE and Dice. ``seg`` answers: masks from the `<seg>` states; ``box`` answers:
        the target's box and point are the text, and the decoder learns from those gold prompts.
        A sample without a mask gets no mask loss."""
        targets = _mask_targets(masks, len(records), images)
        if inputs is None:
            inputs = self.processor.segmentation_inputs(records, masks)
        inputs = {k: v.to(images.device) for k, v in inputs.items()}
        rows = inputs.pop("rows")
        if not len(rows):
            return nothing_to_learn(self, len(records))
        images, targets = images[rows], [targets[r] for r in rows.tolist()]
        patches = self.vision(images)
        embeds = splice_image_features(self.lm.get_input_embeddings()(inputs["input_ids"]), inputs["input_ids"],
                                       self.image_token_id, self.project_patches(patches))
        out = self.lm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["labels"],
                      output_hidden_states=self.answer_kind == "seg")
        if self.answer_kind == "seg":
            states, prompt_rows = self._seg_states(out.hidden_states[-1], inputs["input_ids"])
            keep = [i for i, r in enumerate(prompt_rows.tolist()) if targets[r] is not None]
            prompts = {"states": states[keep]}
        else:
            prompt_rows = torch.tensor([r for r, t in enumerate(targets) if t is not None], dtype=torch.long)
            pairs = [mask_box_point(targets[r] > 0) for r in prompt_rows.tolist()]
            keep = [i for i, pair in enumerate(pairs) if pair is not None]
            prompts = {"boxes": torch.tensor([pairs[i][0] for i in keep], dtype=torch.float32),
                       "points": torch.tensor([pairs[i][1] for i in keep], dtype=torch.float32)}
        prompt_rows = prompt_rows[keep].to(images.device)
        loss, bce, dice = self.loss_weights["text"] * out.loss, out.loss.new_zeros(()), out.loss.new_zeros(())
        if len(prompt_rows):
            logits, _ = self.decode_masks(self.decoder_features(images, patches), prompt_rows,
                                          **{k: v.to(images.device) for k, v in prompts.items()})
            target = torch.stack([targets[r] for r in prompt_rows.tolist()]).to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, target)
            dice = dice_loss(logits, target)
            loss = loss + self.loss_weights["bce"] * bce + self.loss_weights["dice"] * dice
        labels = inputs["labels"][:, 1:]
        valid = labels != -100
        accuracy = ((out.logits[:, :-1].argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1)
        return {"loss": loss, "token_accuracy": accuracy, "target_tokens": valid.sum(),
                "tokens": inputs["attention_mask"].sum(), "skipped": len(records) - len(rows),
                "mask_bce": bce.detach(), "mask_dice": dice.detach()}

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, images: torch.Tensor, records: list[Record], samples: int = 1, max_new_tokens: int = 32,
                do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[Trajectory]:
        """``samples`` answers per record (adjacent) as trajectories, through EOS when written."""
        generated = self.generate_ids(images, records, max_new_tokens, do_sample=do_sample, temperature=temperature,
                                      top_p=top_p, num_return_sequences=samples,
                                      suppress_tokens=[self.image_token_id])  # image tokens come from images
        prompts = self.processor.prompt_ids(records)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        out = []
        for i, ids in enumerate(generated.tolist()):
            written = _until_eos(ids, eos, pad)
            written += [eos] if len(written) < len(ids) and ids[len(written)] == eos else []
            out.append(Trajectory(i // samples, prompts[i // samples], written, [True] * len(written), done=True))
        return out

    @torch.no_grad()
    def trajectory_masks(self, images: torch.Tensor, trajectories: list[Trajectory], view: dict | None = None
                         ) -> tuple[list[list[torch.Tensor]], list[list[float]]]:
        """Per trajectory, the masks its answer makes (``seg``: one per `<seg>`; ``box``: one per box and
        point) and their predicted IoUs; ``view``: the segmentation encoder's view (:meth:`predict`)."""
        patches = self.vision(images)
        if self.answer_kind == "seg":
            inputs = self.trajectory_embeddings(images, trajectories, left=False)
            hidden = self.lm(**inputs, output_hidden_states=True).hidden_states[-1]
            ids = self.processor.pad([t.prompt + t.completion for t in trajectories])["input_ids"]
            states, rows = self._seg_states(hidden, ids.to(hidden.device))
            prompts = {"states": states}
        else:
            pairs = [(row, box, point) for row, t in enumerate(trajectories)
                     for box, point in parse_box_points(extract_answer_span(self.completion_text(t)))]
            rows = torch.tensor([row for row, _, _ in pairs], dtype=torch.long)
            prompts = {"boxes": torch.tensor([b for _, b, _ in pairs], dtype=torch.float32).view(-1, 4),
                       "points": torch.tensor([p for _, _, p in pairs], dtype=torch.float32).view(-1, 2)}
        masks: list[list[torch.Tensor]] = [[] for _ in trajectories]
        scores: list[list[float]] = [[] for _ in trajectories]
        if len(rows):
            image_index = torch.tensor([trajectories[r].image_index for r in rows.tolist()], device=images.device)
            logits, iou = self.decode_masks(self.decoder_features(images, patches, view), image_index, view=view,
                                            **{k: v.to(images.device) for k, v in prompts.items()})
            for row, mask_logits, score in zip(rows.tolist(), logits, iou.tolist()):
                masks[row].append((mask_logits > 0).cpu())
                scores[row].append(score)
        return masks, scores

    @torch.no_grad()
    def segment(self, images: torch.Tensor, records: list[Record], samples: int = 1, temperature: float = 1.0,
                max_new_tokens: int = 32, output: str = "best", view: dict | None = None) -> list[dict]:
        """Per record: {text, answer, mask (S, S) bool, found, votes, parsed (the answers that parsed)}. ``samples`` > 1 samples that
        many answers at ``temperature`` and votes their object masks into one (StAR); 1 decodes
        greedily and votes that one answer. A ``box`` answer naming something but no well-formed
        box failed to parse and is left out of the vote; an answer naming no object votes "no object"."""
        trajectories = self.rollout(images, records, samples, max_new_tokens, do_sample=samples > 1,
                                    temperature=temperature)
        texts = [self.completion_text(t) for t in trajectories]
        object_masks, scores = self.trajectory_masks(images, trajectories, view)
        if self.answer_kind == "box":
            object_masks = [None if not masks and not _names_no_object(text) else masks
                            for masks, text in zip(object_masks, texts)]
        shape = view["original"] if view is not None else (self.preprocess.image_size,) * 2
        out = []
        for i in range(len(records)):
            group = slice(i * samples, (i + 1) * samples)
            result = aggregate_masks(object_masks[group], scores[group], output=output, shape=tuple(shape))
            text = texts[group][max(result["sample"], 0)]  # the answer the mask stands for (or the first)
            out.append({"text": text, "answer": self.strip_seg(extract_answer_span(text)), "mask": result["mask"],
                        "found": not result["no_object"], "votes": samples, "parsed": result["valid"]})
        return out

    def reward_columns(self, trajectories: list[Trajectory], records: list[Record], batch: dict,
                       images: torch.Tensor) -> dict[str, list]:
        """``mask_ious``: per rollout, the IoU of each target object with the answer's mask matched to it."""
        object_masks, _ = self.trajectory_masks(images, trajectories)
        targets = _mask_targets(batch.get("masks"), len(records), images)
        return {"mask_ious": [matched_ious(masks, [] if targets[t.image_index] is None
                                           else [targets[t.image_index].cpu() > 0])
                              for t, masks in zip(trajectories, object_masks)]}

    def respond(self, images: torch.Tensor, records: list[Record], max_new_tokens: int | None = None,
                samples: int = 1, temperature: float = 1.0, view: dict | None = None) -> list[dict]:
        """:meth:`segment`'s results with texts to score as answers: the `<seg>` token is the mask's
        place, not a word of the answer."""
        budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        results = self.segment(images, records, samples=samples, temperature=temperature, view=view, **budget)
        return [{**r, "text": self.strip_seg(r["text"])} for r in results]

    def strip_seg(self, text: str | None) -> str | None:
        return None if text is None else " ".join(text.replace(self.processor.seg_token, " ").split())

    @torch.no_grad()
    def predict(self, image, question: str | None = None, choices: list[str] | None = None,
                max_new_tokens: int | None = None, **options) -> dict:
        """With a segmentation encoder, it reads its own view of the original image and the mask comes
        back at the original size (LISA's inference)."""
        if self.segmentation_encoder is None:
            return super().predict(image, question, choices, max_new_tokens, **options)
        picture = self.preprocess.open_rgb(image)
        size = self.segmentation_preprocess.image_size
        view = {"images": self.segmentation_preprocess(picture)[None], "original": (picture.height, picture.width),
                "valid": (longest_side_shape(picture.height, picture.width, size)
                          if self.segmentation_preprocess.resize == "longest" else (size, size))}
        return super().predict(picture, question, choices, max_new_tokens, view=view, **options)

    def answer_batch(self, images: torch.Tensor, records: list[Record], max_new_tokens: int = 32) -> list[str]:
        return [r["text"] for r in self.respond(images, records, max_new_tokens)]

    def query(self, question: str | None, choices: list[str] | None) -> Record:
        return query_record(question, choices, SEG_TASK)

    def describe(self, response: dict) -> dict:
        """{text, answer, mask (S×S bool, the model input's pixels; with a segmentation encoder H×W, the
        original's), found, votes, input_size}."""
        return {**response, "rationale": None, "input_size": self.preprocess.image_size}


NO_OBJECT_ANSWER = re.compile(r"<answer>\s*(?:\[\s*(?:\{\s*\}\s*)?\])?\s*</answer>")


def _names_no_object(text: str) -> bool:
    """An empty answer (as the targets without a box write it) or an empty list, as StAR's parser reads
    ``[]`` and ``[{}]``; no closed answer at all (truncated) failed to parse instead."""
    return NO_OBJECT_ANSWER.search(text) is not None


def _until_eos(ids: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for token in ids:
        if token in (eos, pad):
            break
        out.append(token)
    return out


def _mask_targets(masks, count: int, images: torch.Tensor) -> list[torch.Tensor | None]:
    """Per sample, the float {0, 1} target at the input size (object = 255 in the shards), or None."""
    if masks is None:
        return [None] * count
    return [None if masks[i] is None else (masks[i].to(images.device) == 255).float() for i in range(count)]


register_model("star-tiny", "star", TINY_CONFIG,
               "the tiny VLM answering segmentation questions with a <seg> token and a SAM-style mask decoder "
               "(LISA; StAR test-time scaling)", recipe="recipes/star/synth-tiny.yaml")
