"""Meteor's token tensors: the backbone's prompt with N `<tor>` after ``<s>``, and the embedder's.

The embedder reads image, question (and choices), the rationale cue, then either the
rationale with N `<tor>` placed in it (traversal pre-training, step 1) or N bare `<tor>`
(answering, and every generation)::

    embedder:  <image>×K question : {question} [choices : …] solution : {rationale with <tor>×N | <tor>×N}
    backbone:  <s> <tor>×N <image>×K question : {question} [choices : …] answer :
"""

from __future__ import annotations

import logging
import random

import torch

from mmreason.data.schema import Record
from mmreason.models.processor import PromptProcessor, PromptTooLong, refuse_turns
from mmreason.text.prompts import PROMPT, RATIONALE_CUE, format_choices
from mmreason.text.tor import TOR_TOKEN, RationaleTooShort, bare_tor, insert_tor

log = logging.getLogger(__name__)


def traversal_prompt(record: Record, tor_text: str) -> str:
    """What the embedder reads: image, question (and choices), then the cue and the `<tor>`-bearing text."""
    return f"<image> question : {record.question.strip()}{format_choices(record.choices)} {RATIONALE_CUE} {tor_text}"


class MeteorProcessor(PromptProcessor):
    """``traversal`` False gives the baseline's tensors (the "no Mamba" ablation); ``read_rationale``
    (step 1) places the `<tor>` in each training rationale, drawing ``random`` placements from
    ``seed``."""

    single_turn_family = "meteor"  # the embedder reads one question and its rationale

    def __init__(self, tokenizer, num_image_tokens: int, max_length: int, output_format: str, traversal: bool,
                 num_tor: int, placement: str, seed: int = 0, read_rationale: bool = True, prompt: str = PROMPT):
        super().__init__(tokenizer, num_image_tokens, max_length, output_format, prompt)
        self.traversal, self.num_tor, self.placement = traversal, num_tor, placement
        self.read_rationale, self.seed = read_rationale, seed
        self.placement_rng = random.Random(seed)
        self.tor_token_id = tokenizer.convert_tokens_to_ids(TOR_TOKEN)

    def reseed(self, stream: str) -> None:
        """``random`` placements: each worker and epoch draws its own sequence, from ``seed``."""
        self.placement_rng = random.Random(f"{self.seed}-{stream}")

    # ---- the embedder's inputs --------------------------------------------------------------
    def _traversal_text(self, record: Record, with_rationale: bool, skip_too_short: bool) -> str | None:
        """The embedder's prompt text; None when the rationale is too short and ``skip_too_short``."""
        if not with_rationale:
            return traversal_prompt(record, bare_tor(self.num_tor))
        try:
            return traversal_prompt(record, insert_tor(record.rationale or "", self.num_tor, self.placement,
                                                       self.placement_rng))
        except RationaleTooShort:
            if skip_too_short:
                return None
            raise

    def _traversal_ids(self, records: list[Record], with_rationale: bool,
                       skip_too_short: bool = False) -> list[list[int] | None]:
        """Embedder prompt ids (image tokens expanded); None where a too-short rationale was skipped."""
        refuse_turns(records, self.single_turn_family)
        texts = [self._traversal_text(r, with_rationale, skip_too_short) for r in records]
        present = [t for t in texts if t is not None]
        encoded = iter(self.tokenizer(present, add_special_tokens=False)["input_ids"] if present else [])
        out: list[list[int] | None] = []
        for text in texts:
            ids = None if text is None else next(encoded)
            if ids is not None:
                at = ids.index(self.image_token_id)
                ids = [*ids[:at], *[self.image_token_id] * self.num_image_tokens, *ids[at + 1 :]]
            out.append(ids)
        return out

    def traversal_inputs(self, records: list[Record], with_rationale: bool) -> dict[str, torch.Tensor]:
        """Right-padded embedder prompts: ``traversal_ids`` and ``traversal_mask``.

        ``with_rationale`` places the `<tor>` in each rationale (raises RationaleTooShort
        when one does not fit); otherwise the embedder reads N bare `<tor>`."""
        padded = self.pad(self._traversal_ids(records, with_rationale))
        return {"traversal_ids": padded["input_ids"], "traversal_mask": padded["attention_mask"]}

    # ---- the backbone's inputs --------------------------------------------------------------
    def prompt_ids(self, records: list[Record], skip_too_long: bool = False) -> list[list[int] | None]:
        """The baseline prompt with N `<tor>` after BOS; ``max_length`` counts them."""
        prompts = super().prompt_ids(records, skip_too_long)
        if not self.traversal:
            return prompts
        out: list[list[int] | None] = []
        for ids in prompts:
            if ids is not None:
                ids = [ids[0], *[self.tor_token_id] * self.num_tor, *ids[1:]]
            if ids is not None and len(ids) > self.max_length:
                if not skip_too_long:
                    raise PromptTooLong(f"prompt needs {len(ids)} tokens ({self.num_tor} {TOR_TOKEN} + "
                                        f"{self.num_image_tokens} image tokens + text) but max_length is "
                                        f"{self.max_length}; raise max_length or lower traversal.num_tor")
                ids = None
            out.append(ids)
        return out

    def training_inputs(self, records: list[Record], skip_too_long: bool = False) -> dict[str, torch.Tensor]:
        """The baseline's tensors (N `<tor>` in the prompt) plus the embedder's ``traversal_ids/mask``.

        Step 1 reads each rationale; with ``skip_too_long`` a rationale too short for the
        placement drops its sample (and ``rows`` says which were kept; none, and no tensors, when
        no sample is left), otherwise it raises.
        """
        if not self.traversal:
            return super().training_inputs(records, skip_too_long)
        traversal = self._traversal_ids(records, self.read_rationale, skip_too_short=skip_too_long)
        kept = [i for i, ids in enumerate(traversal) if ids is not None]
        if not kept:  # nothing to train on in this batch
            return {"rows": torch.zeros(0, dtype=torch.long)}
        if len(kept) < len(records):
            log.warning("skipped %d sample(s) whose rationale is too short for %d %s placed %r",
                        len(records) - len(kept), self.num_tor, TOR_TOKEN, self.placement)
        inputs = super().training_inputs([records[i] for i in kept], skip_too_long)
        rows = torch.tensor(kept)[inputs["rows"]]
        padded = self.pad([traversal[i] for i in rows.tolist()])
        return {**inputs, "traversal_ids": padded["input_ids"], "traversal_mask": padded["attention_mask"],
                "rows": rows}

    def generation_inputs(self, records: list[Record]) -> dict[str, torch.Tensor]:
        """The baseline's left-padded prompts plus the embedder's bare-`<tor>` inputs."""
        inputs = super().generation_inputs(records)
        if not self.traversal:
            return inputs
        return {**inputs, **self.traversal_inputs(records, with_rationale=False)}


class TemplatedMeteorProcessor(MeteorProcessor):
    """The embedder reads ``traversal_template`` (``<image>``, ``{question}``, ``{choices}``, ``{tor}``)
    instead of the zoo's prompt; bare `<tor>` are written without spaces, as released Meteor writes them."""

    def __init__(self, *args, traversal_template: str, **kwargs):
        super().__init__(*args, **kwargs)
        if traversal_template.count("<image>") != 1 or "{question}" not in traversal_template \
                or "{tor}" not in traversal_template:
            raise ValueError(f"traversal.prompt must contain '<image>' once, '{{question}}' and '{{tor}}', "
                             f"got {traversal_template!r}")
        self.traversal_template = traversal_template

    def _traversal_text(self, record: Record, with_rationale: bool, skip_too_short: bool) -> str | None:
        tor = TOR_TOKEN * self.num_tor
        if with_rationale:
            try:
                tor = insert_tor(record.rationale or "", self.num_tor, self.placement, self.placement_rng)
            except RationaleTooShort:
                if skip_too_short:
                    return None
                raise
        return self.traversal_template.format(question=record.question.strip(),
                                              choices=format_choices(record.choices), tor=tor)
