"""The contract every family keeps, and what each can do — declared, not probed.

A family is one ``nn.Module`` subclass of :class:`ZooModel`, registered by
name in its own file (``@register_family``) with the config keys it reads
(``config_schema``, see :mod:`mmreason.models.config_schema`). Trainers,
evaluators and the CLI ask ``model.can(CAPABILITY)`` instead of guessing from
method names, and train through one entry point, :meth:`ZooModel.loss`, that
takes the loader's batch as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from mmreason.eval.answers import extract_answer_span, split_rationale
from mmreason.text.prompts import query_record

ANSWERS = "answers"  # its generations answer the records' questions (accuracy applies)
PIPELINE = "pipeline"  # ``run``: rationale, then answer; inference voting
SEGMENTS = "segments"  # ``segment``: a mask per question
CROPS = "crops"  # its actions are crops of the image
POLICY = "policy"  # ``rollout``: sampled trajectories GRPO can train
PERCEIVES = "perceives"  # ``perceive``: the objects in each image (a vision encoder)
CACHED_FEATURES = "cached_features"  # trains on vision features cached in the shards
REASONS = "reasons"  # writes a rationale, then answers: ``answers_after`` and ``answer_entropies`` probe it
CAPABILITIES = (ANSWERS, PIPELINE, SEGMENTS, CROPS, POLICY, PERCEIVES, CACHED_FEATURES, REASONS)


class ZooModel(nn.Module):
    """Base of every family.

    Subclasses set ``family`` (by registering), ``config_schema``, ``capabilities`` (a class default;
    override :meth:`capability_set` when the config decides), ``fine_tune_options`` (config keys a
    fine-tuning run may still change), ``init_parts``/:meth:`part_modules` (what can start from an
    export) and ``response_options`` (what :meth:`respond` takes beyond ``max_new_tokens``), and
    implement ``batch_loss``, ``predict``, :meth:`respond` when they do not answer by ``answer_batch``,
    and their capabilities' methods. Records become tensors in :meth:`batch_processor`'s object (in
    the loader workers when training), not in the model's forward.
    """

    family: str = ""
    config_schema: dict = {}
    capabilities: frozenset[str] = frozenset({ANSWERS})
    fine_tune_options: tuple[str, ...] = ()
    init_parts: tuple[str, ...] = ()  # the parts ``init: {from: EXPORT, parts: [...]}`` can start
    response_options: tuple[str, ...] = ()  # e.g. ``votes``: evaluation options :meth:`respond` takes

    @property
    def max_length(self) -> int:
        """The longest input the model takes, in tokens; its processor holds it, so a fine-tuning override
        (``model_config: {max_length: …}``) reaches the loader workers too."""
        return self.processor.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.processor.max_length = int(value)

    def part_modules(self, part: str) -> list[nn.Module]:
        """The modules holding ``part`` (one of :attr:`init_parts`); several when the part is repeated."""
        raise ValueError(f"a {self.family} model has no part {part!r}; its parts: {self.init_parts}")

    def checkpoint_activations(self) -> None:
        """Recompute activations in backward instead of keeping them, trading compute for memory."""
        raise ValueError(f"a {self.family} model has no layers whose activations can be recomputed")

    def capability_set(self) -> frozenset[str]:
        return self.capabilities

    def can(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {CAPABILITIES}")
        return capability in self.capability_set()

    def respond(self, images: torch.Tensor, records: list, max_new_tokens: int | None = None,
                **options) -> list[dict]:
        """What evaluation scores, one dict per record: ``text`` (the answer as generated), plus
        ``rationale``, ``confidence``, ``mask`` or ``objects`` where the family makes them."""
        budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        return [{"text": text} for text in self.answer_batch(images, records, **budget, **options)]

    @torch.no_grad()
    def predict(self, image, question: str | None = None, choices: list[str] | None = None,
                max_new_tokens: int | None = None, **options) -> dict:
        """One image (path, bytes or PIL) and question, answered as evaluation answers a batch
        (:meth:`respond`) and read out by :meth:`describe`: at least ``answer`` and ``rationale``."""
        record = self.query(question, choices)
        was_training = self.training
        self.eval()
        try:
            weights = next(self.parameters())
            pixels = self.preprocess(image).unsqueeze(0).to(weights.device, weights.dtype)
            response = self.respond(pixels, [record], max_new_tokens, **options)[0]
        finally:
            self.train(was_training)
        return self.describe(response)

    def query(self, question: str | None, choices: list[str] | None):
        """The record a user's question becomes (checked: a non-empty question, sensible choices)."""
        return query_record(question, choices)

    def describe(self, response: dict) -> dict:
        """What :meth:`predict` returns for one response: its text read as rationale and answer."""
        return {**response, "rationale": split_rationale(response["text"]),
                "answer": extract_answer_span(response["text"])}

    def writes_rationales(self) -> bool:
        """Whether :meth:`respond` returns a generated ``rationale`` to score apart from the answer."""
        return False

    def batch_processor(self):
        """What turns a training batch's records into this model's tensors in the loader workers
        (a picklable :class:`~mmreason.models.processor.BatchProcessor`), or None when the model
        prepares them itself (e.g. from the images, as the crop policy's gold trajectories)."""
        return None

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training loss and its metrics on a loader batch (``images`` already on the model's device;
        ``inputs``, where a loader worker ran :meth:`batch_processor`, the records' tensors)."""
        if "inputs" in batch:
            return self.batch_loss(batch["images"], batch["records"], inputs=batch["inputs"])
        return self.batch_loss(batch["images"], batch["records"])


def nothing_to_learn(model: nn.Module, skipped: int) -> dict[str, torch.Tensor]:
    """A batch whose every sample was skipped: a zero loss still connected to every trainable weight, so
    the step runs (and distributed ranks stay in lockstep), with the samples counted as skipped."""
    zero = sum((p.sum() * 0 for p in model.parameters() if p.requires_grad), torch.zeros(()))
    return {"loss": zero, "token_accuracy": torch.zeros(()), "target_tokens": torch.zeros((), dtype=torch.long),
            "tokens": torch.zeros((), dtype=torch.long), "skipped": skipped}


def freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
