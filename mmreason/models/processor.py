"""Records → token tensors, kept apart from the model's weights so loader workers can do it.

A family's processor holds its tokenizer and the few numbers its prompts need. It is
small and picklable: the training loader runs it on every batch in its worker processes
(``batch["inputs"]``, overlapping tokenisation and padding with the model's step), and
the model runs the same object for generation and for batches that arrive without
``inputs``. The model's forward takes the tensors.
"""

from __future__ import annotations

import torch

from mmreason.data.schema import Record
from mmreason.text.prompts import OUTPUT_FORMATS, PROMPT, check_prompt, target_text, user_prompt

IGNORE_INDEX = -100


class PromptTooLong(ValueError):
    """The prompt (image tokens included) does not fit ``max_length``."""


def pad_rows(rows: list[list[int]], pad_id: int, labels: list[list[int]] | None = None,
             left: bool = False) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of rows padded with ``pad_id`` on the right (or left), and
    ``labels`` padded with -100 when given."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    padded_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
        if labels is not None:
            padded_labels[i, span] = torch.tensor(labels[i], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = padded_labels
    return out


class BatchProcessor:
    """What a loader worker runs on a training batch: ``inputs`` = :meth:`training_inputs` of its records,
    samples that cannot be trained on dropped (``inputs["rows"]`` names the ones kept)."""

    def training_inputs(self, records: list[Record], skip_too_long: bool = False) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        batch["inputs"] = self.training_inputs(batch["records"], skip_too_long=True)
        return batch

    def reseed(self, stream: str) -> None:
        """Called by each loader worker's stream (``stream`` names rank, worker and epoch): a processor that
        draws at random reseeds here, so workers and epochs do not repeat one another's draws."""


class PromptProcessor(BatchProcessor):
    """The decoder VLM's tensors: ``<s>`` + the user prompt (``prompt``, a template, see
    :func:`~mmreason.text.prompts.user_prompt`) with ``<image>`` expanded to the image's tokens,
    then the target and EOS; labels are -100 everywhere but the target (and EOS)."""

    def __init__(self, tokenizer, num_image_tokens: int, max_length: int, output_format: str = "cot",
                 prompt: str = PROMPT):
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        self.tokenizer, self.num_image_tokens, self.max_length = tokenizer, num_image_tokens, max_length
        self.output_format, self.prompt = output_format, check_prompt(prompt)
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")

    def target_text(self, record: Record) -> str:
        """What the model learns to write for ``record`` (families add their own tokens)."""
        return target_text(record, self.output_format)

    def prompt_ids(self, records: list[Record], skip_too_long: bool = False) -> list[list[int] | None]:
        """Prompt ids with the image tokens expanded; a prompt over ``max_length`` raises, or is None
        when ``skip_too_long`` (training streams skip such samples instead of stopping)."""
        prompts = [user_prompt(r.question, r.choices, self.prompt) for r in records]
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        out: list[list[int] | None] = []
        for ids in encoded:
            at = ids.index(self.image_token_id)
            ids = [self.tokenizer.bos_token_id, *ids[:at], *[self.image_token_id] * self.num_image_tokens,
                   *ids[at + 1 :]]
            if len(ids) > self.max_length and skip_too_long:
                out.append(None)
                continue
            if len(ids) > self.max_length:
                raise PromptTooLong(
                    f"prompt needs {len(ids)} tokens ({self.num_image_tokens} image tokens + "
                    f"{len(ids) - self.num_image_tokens} text tokens) but max_length is {self.max_length}; "
                    "raise max_length or shorten the question"
                )
            out.append(ids)
        return out

    def training_inputs(self, records: list[Record], skip_too_long: bool = False) -> dict[str, torch.Tensor]:
        """Right-padded prompt+target ids and labels; ``rows`` holds the indices of the records kept
        (all of them unless ``skip_too_long``; none, and no tensors, when every prompt is too long)."""
        prompts = self.prompt_ids(records, skip_too_long)
        kept = [i for i, p in enumerate(prompts) if p is not None]
        if not kept:  # every prompt too long: nothing to train on in this batch
            return {"rows": torch.zeros(0, dtype=torch.long)}
        targets = self.tokenizer([self.target_text(records[i]) for i in kept],
                                 add_special_tokens=False)["input_ids"]
        rows, labels = [], []
        for i, t in zip(kept, targets):
            p = prompts[i]
            t = [*t, self.tokenizer.eos_token_id][: self.max_length - len(p)]
            rows.append(p + t)
            labels.append([IGNORE_INDEX] * len(p) + t)
        return {**self.pad(rows, labels), "rows": torch.tensor(kept)}

    def generation_inputs(self, records: list[Record]) -> dict[str, torch.Tensor]:
        return self.pad(self.prompt_ids(records), left=True)

    def pad(self, rows: list[list[int]], labels: list[list[int]] | None = None,
            left: bool = False) -> dict[str, torch.Tensor]:
        return pad_rows(rows, self.tokenizer.pad_token_id, labels, left)
