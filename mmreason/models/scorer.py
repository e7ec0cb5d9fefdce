"""A rationale scorer: the probability that a rationale for a question about an image is right.

Rationale Ranking (Hartill et al., RR/RATD) trains a cross-encoder on right and wrong rationales so
that a reader can weigh, or pass over, the rationales it is given; QCRD-style pipelines use such a
score to choose among a model's sampled rationales. This family is that cross-encoder for images:
the vision tower's patch tokens, the question and one rationale go through a small BERT
(:class:`~mmreason.layers.rationale_scorer.RationaleScorer`) to one logit. It answers no question,
so it declares no capability and ``predict``/``eval`` refuse it; :meth:`ScorerModel.score` is what
it does, :func:`mmreason.diagnostics.scorer_eval.evaluate_scorer` how it is measured. Its training pairs
(gold, corrupted, sampled) come from :mod:`mmreason.models.scorer_processor`.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from mmreason.data.preprocess import Preprocess
from mmreason.data.schema import Record
from mmreason.layers.rationale_scorer import DecoderRationaleScorer, RationaleScorer
from mmreason.layers.vision import build_vision_tower
from mmreason.models.base import ZooModel, freeze, nothing_to_learn
from mmreason.models.baseline import TINY_CONFIG as BASELINE_TINY
from mmreason.models.config_schema import ANY, LANGUAGE, LEAF, PREPROCESS, VISION
from mmreason.models.scorer_processor import ScorerProcessor
from mmreason.text.tokenizer import build_tokenizer
from mmreason.zoo import register_family, register_model

log = logging.getLogger(__name__)

PAIR_OPTIONS = {"corruptions": 1, "candidates": 2, "seed": 0}  # ScorerProcessor's pair settings, per record
TINY_CONFIG = {
    "vision": BASELINE_TINY["vision"],
    "projector": "mlp2x_gelu",
    "text_encoder": {"config": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                                "intermediate_size": 512, "max_position_embeddings": 320,
                                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
    "tokenizer": "synth-word",
    "preprocess": BASELINE_TINY["preprocess"],
    "max_length": 320,
    "pairs": PAIR_OPTIONS,
}


class AnswersNothing(ValueError):
    """A scorer was asked to answer a question."""


def balanced_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy in which right and wrong rationales weigh half each when a batch holds both,
    so a batch rich in one kind does not teach the scorer a prior."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    right = labels > 0.5
    parts = [losses[side].mean() for side in (right, ~right) if side.any()]
    return sum(parts) / len(parts)


@register_family("scorer")
class ScorerModel(ZooModel):
    """Vision tower → :class:`RationaleScorer`; ``config["vision"]["frozen"]`` keeps the tower fixed
    (as recipes start it, from the scene encoder's export)."""

    capabilities = frozenset()
    config_schema = {"vision": VISION, "projector": LEAF, "text_encoder": {"config": ANY}, "language": LANGUAGE,
                     "tokenizer": LEAF,
                     "preprocess": PREPROCESS, "max_length": LEAF, "pairs": dict.fromkeys(PAIR_OPTIONS, LEAF)}
    init_parts = ("vision", "projector", "language")
    fine_tune_options = ("pairs",)

    def __init__(self, config: dict, tokenizer=None):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.preprocess = Preprocess.from_dict({**Preprocess().to_dict(), **config.get("preprocess", {})})
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(config.get("tokenizer", "synth-word"))
        self.vision = build_vision_tower(config["vision"])
        if config["vision"].get("frozen"):
            freeze(self.vision)
        projector = config.get("projector", "mlp2x_gelu")
        if ("language" in config) == ("text_encoder" in config):
            raise ValueError("a scorer reads with either text_encoder (a BERT config) or language (a decoder "
                             "language model, e.g. a VLM's); give exactly one")
        if "language" in config:
            self.scorer = DecoderRationaleScorer(self.vision.width, config["language"]["config"],
                                                 len(self.tokenizer), projector)
        else:
            self.scorer = RationaleScorer(self.vision.width, config["text_encoder"]["config"], len(self.tokenizer),
                                          projector)
        self.processor = ScorerProcessor(self.tokenizer, self.vision.num_tokens(self.preprocess.image_size),
                                         self.scorer.max_positions, **{**PAIR_OPTIONS, **config.get("pairs", {})},
                                         layout="prompt" if "language" in config else "pair")
        self.max_length = config.get("max_length", self.scorer.max_positions)  # checked against those positions

    @property
    def max_length(self) -> int:
        return self.processor.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        value = int(value)
        if not self.processor.num_image_tokens < value <= self.scorer.max_positions:
            raise ValueError(f"a scorer's max_length must exceed its {self.processor.num_image_tokens} image tokens "
                             f"and fit its text encoder's {self.scorer.max_positions} positions, got {value}")
        self.processor.max_length = value

    @property
    def pairs(self) -> dict:
        """How many corrupted and sampled rationales each training record gives (see ScorerProcessor)."""
        return {name: getattr(self.processor, name) for name in PAIR_OPTIONS}

    @pairs.setter
    def pairs(self, value: dict) -> None:
        self.processor = ScorerProcessor(self.tokenizer, self.processor.num_image_tokens, self.max_length,
                                         **{**self.pairs, **value}, layout=self.processor.layout)

    def batch_processor(self) -> ScorerProcessor:
        return self.processor

    def part_modules(self, part: str) -> list[nn.Module]:
        """``vision``; with a decoder reader also a VLM's ``projector`` and ``language`` model."""
        modules = {"vision": self.vision}
        if isinstance(self.scorer, DecoderRationaleScorer):
            modules.update(projector=self.scorer.projector, language=self.scorer.lm)
        return [modules[part]] if part in modules else super().part_modules(part)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One logit per pair; each image goes through the vision tower once, ``rows`` naming each pair's."""
        return self.scorer(self.vision(images), input_ids, attention_mask, token_type_ids, rows)

    def batch_loss(self, images: torch.Tensor, records: list[Record],
                   inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """:func:`balanced_bce` over the records' pairs, the pairs' accuracy (as ``token_accuracy``, the name
        training logs), the pairs (``target_tokens``), the tokens read and the records left without a pair
        (``skipped``: no rationale, no candidates, or every pair over max_length)."""
        if inputs is None:
            inputs = self.processor.training_inputs(records, skip_too_long=True)
        inputs = {k: v.to(images.device) for k, v in inputs.items()}
        rows = inputs.pop("rows")
        skipped = len(records) - len(rows.unique())
        if skipped:
            log.warning("%d record(s) gave no pair to score (no rationale or candidates, or over max_length=%d)",
                        skipped, self.max_length)
        if not len(rows):
            return nothing_to_learn(self, skipped)
        labels = inputs.pop("labels")
        logits = self(images, rows=rows, **inputs)
        accuracy = ((logits > 0) == (labels > 0.5)).float().mean()
        tokens = inputs["attention_mask"].sum() + len(rows) * self.processor.num_image_tokens
        return {"loss": balanced_bce(logits, labels), "token_accuracy": accuracy, "target_tokens": len(rows),
                "tokens": tokens, "skipped": skipped}

    @torch.no_grad()
    def score(self, images: torch.Tensor, records: list[Record], rationales: list[str],
              rows: list[int] | None = None, skip_too_long: bool = False) -> torch.Tensor:
        """The probability that each rationale is right for its record and image: (len(rationales),) float.

        ``images``: the records' preprocessed images (B, 3, S, S). Without ``rows`` a record's rationales are
        adjacent, K = len(rationales) / len(records) of them each (as sampled votes come); ``rows`` names
        each rationale's record otherwise. Each image is encoded once. A pair over ``max_length`` raises, or
        with ``skip_too_long`` scores NaN (a long run of generations should not stop on one rambling sample).
        """
        if len(images) != len(records):
            raise ValueError(f"got {len(images)} images for {len(records)} records; pass one image per record")
        if rows is None:
            if not records or len(rationales) % len(records):
                raise ValueError(f"got {len(rationales)} rationales for {len(records)} records; pass K per record "
                                 "(a record's K adjacent) or rows= naming each rationale's record")
            rows = [i for i in range(len(records)) for _ in range(len(rationales) // len(records))]
        if len(rows) != len(rationales) or not all(0 <= r < len(records) for r in rows):
            raise ValueError(f"rows must name a record (0..{len(records) - 1}) for each of the {len(rationales)} "
                             f"rationales, got {len(rows)} rows from {min(rows, default=None)} to {max(rows, default=None)}")
        if not rationales:
            return torch.zeros(0)
        if skip_too_long:
            encoded = self.processor.encode([records[r] for r in rows], rationales)
            fits = [j for j, (ids, _) in enumerate(encoded) if self.processor.fits(ids)]
            out = torch.full((len(rationales),), float("nan"))
            if fits:
                out[fits] = self.score(images, records, [rationales[j] for j in fits], [rows[j] for j in fits])
            return out
        weights = next(self.parameters())
        inputs = self.processor.scoring_inputs([records[r] for r in rows], rationales)
        was_training = self.training
        self.eval()
        try:
            logits = self(images.to(weights.device, weights.dtype), rows=torch.tensor(rows, device=weights.device),
                          **{k: v.to(weights.device) for k, v in inputs.items()})
        finally:
            self.train(was_training)
        return logits.sigmoid().float().cpu()

    def refuse(self) -> AnswersNothing:
        return AnswersNothing(f"a {self.family} model answers no questions: it scores rationales; call "
                              "model.score(images, records, rationales) or evaluate it with "
                              "mmreason.diagnostics.scorer_eval.evaluate_scorer")

    def respond(self, images: torch.Tensor, records: list, max_new_tokens: int | None = None, **options):
        raise self.refuse()

    def predict(self, image, question: str | None = None, choices: list[str] | None = None,
                max_new_tokens: int | None = None, **options):
        raise self.refuse()


VLM_TINY_CONFIG = {**{k: v for k, v in TINY_CONFIG.items() if k != "text_encoder"},
                   "language": BASELINE_TINY["language"], "max_length": 512}

register_model("scorer-tiny", "scorer", TINY_CONFIG,
               "0.7M-parameter cross-encoder over the tiny ViT: image + question + rationale -> the probability "
               "that the rationale is right (answers no questions; CPU-sized)", recipe="recipes/scorer/synth-tiny.yaml")
register_model("scorer-tiny-vlm", "scorer", VLM_TINY_CONFIG,
               "the scorer reading with the tiny VLM's projector and decoder (start it from a baseline export; "
               "answers no questions)", recipe="recipes/scorer/synth-tiny-vlm.yaml")
