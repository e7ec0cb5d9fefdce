"""MM-CoT's token tensors: each stage's encoder input (QCM, or QCM + rationale) and decoder target.

The rationale stage reads ``question : … options : …`` and writes ``solution : {rationale}``;
the answer stage reads the same plus a rationale (gold in training) and writes the answer
sentence; the direct stage answers from QCM alone. Encoder inputs end in EOS and keep their
first ``max_length`` tokens; targets end in EOS, keep ``max_target_length`` and pad with -100.
``templates`` picks the zoo's wording or MM-CoT's own (:mod:`mmreason.text.prompts`).
"""

from __future__ import annotations

import torch

from mmreason.data.schema import Record
from mmreason.models.processor import IGNORE_INDEX, BatchProcessor, pad_rows, refuse_turns
from mmreason.text.prompts import answer_sentence, check_templates, qcm_input, rationale_target

LEARNS_FROM_RATIONALES = ("rationale", "answer")  # stages whose training samples need a gold rationale


class MCCoTProcessor(BatchProcessor):
    """``train_stage`` is the stage :meth:`training_inputs` prepares (the stage a run trains)."""

    def __init__(self, tokenizer, max_length: int, max_target_length: int, train_stage: str,
                 templates: str = "zoo"):
        self.tokenizer, self.max_length, self.max_target_length = tokenizer, max_length, max_target_length
        self.train_stage, self.templates = train_stage, check_templates(templates)

    def encoder_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded encoder ``input_ids`` ending in EOS, and their ``attention_mask``."""
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows = [ids[: self.max_length - 1] + [self.tokenizer.eos_token_id] for ids in encoded]
        return pad_rows(rows, self.tokenizer.pad_token_id)

    def labels(self, texts: list[str]) -> torch.Tensor:
        """Target ids + EOS, padded with -100 so padding never counts in the loss."""
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows = [(ids + [self.tokenizer.eos_token_id])[: self.max_target_length] for ids in encoded]
        return pad_rows(rows, IGNORE_INDEX)["input_ids"]

    def stage_inputs(self, stage: str, records: list[Record], rationales: list[str] | None = None) -> list[str]:
        """Encoder inputs of a stage; the answer stage reads ``rationales`` (gold by default)."""
        refuse_turns(records, "mccot")  # QCM inputs hold one question
        if stage != "answer":
            return [qcm_input(r, templates=self.templates) for r in records]
        rationales = rationales if rationales is not None else [r.rationale or "" for r in records]
        return [qcm_input(r, q, self.templates) for r, q in zip(records, rationales)]

    def stage_targets(self, stage: str, records: list[Record]) -> list[str]:
        if stage == "rationale":
            return [rationale_target(r.rationale or "", self.templates) for r in records]
        return [answer_sentence(r, self.templates) for r in records]

    def stage_tensors(self, stage: str, records: list[Record]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` of ``stage`` on the records' gold targets."""
        return {**self.encoder_inputs(self.stage_inputs(stage, records)),
                "labels": self.labels(self.stage_targets(stage, records))}

    def training_inputs(self, records: list[Record], skip_too_long: bool = False) -> dict[str, torch.Tensor]:
        """The training stage's tensors; stages that learn from gold rationales keep only records with
        one (``rows``; empty when none has one, and then the tensors are every record's). No sample is
        too long here (inputs and targets are cut), so ``skip_too_long`` changes nothing."""
        if self.train_stage in LEARNS_FROM_RATIONALES:
            kept = [i for i, r in enumerate(records) if r.rationale]
        else:
            kept = list(range(len(records)))
        chosen = [records[i] for i in kept] if kept else records
        return {**self.stage_tensors(self.train_stage, chosen), "rows": torch.tensor(kept, dtype=torch.long)}
