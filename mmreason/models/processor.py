"""Records → token tensors, kept apart from the model's weights so loader workers can do it.

A family's processor holds its tokenizer and the few numbers its prompts need. It is
small and picklable: the training loader runs it on every batch in its worker processes
(``batch["inputs"]``, overlapping tokenisation and padding with the model's step), and
the model runs the same object for generation and for batches that arrive without
``inputs``. The model's forward takes the tensors.

A record with earlier ``turns`` (a conversation) is one sequence, as LLaVA trains
them (haotian-liu/LLaVA ``preprocess_v1``): the first user turn with the image,
each reply and its EOS, the next user turn, and so on; every reply is a target and
every user turn is masked with -100. Families whose prompts hold one question
refuse such records rather than train on their last turn alone.
"""

from __future__ import annotations

import torch

from mmreason.data.schema import Record
from mmreason.text.prompts import (
    OUTPUT_FORMATS,
    PROMPT,
    check_prompt,
    follow_up_prompt,
    target_text,
    user_prompt,
)

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


def refuse_turns(records: list[Record], family: str) -> None:
    """Raise for the first record holding a conversation: ``family`` would drop its earlier turns."""
    for record in records:
        if record.turns:
            raise ValueError(
                f"the {family} family trains and answers single-turn records, but record "
                f"{record.meta.get('id', record.question[:40])!r} is a conversation of "
                f"{len(record.turns) + 1} turns; train conversations with a baseline-family model"
            )


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
    then the target and EOS; labels are -100 everywhere but the target (and EOS). A conversation's
    earlier turns come between the first prompt and the last question (see the module's docstring).

    A subclass whose prompt or target cannot hold earlier turns names its family in
    ``single_turn_family``, and records with turns are refused."""

    single_turn_family: str | None = None

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
        """Prompt ids with the image tokens expanded, a conversation's earlier turns (questions and
        replies) before its last question; a prompt over ``max_length`` raises, or is None when
        ``skip_too_long`` (training streams skip such samples instead of stopping)."""
        if self.single_turn_family is not None:
            refuse_turns(records, self.single_turn_family)
        prompts = [user_prompt(r.turns[0].question, None, self.prompt) if r.turns
                   else user_prompt(r.question, r.choices, self.prompt) for r in records]
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        out: list[list[int] | None] = []
        for record, ids in zip(records, encoded):
            at = ids.index(self.image_token_id)
            ids = [self.tokenizer.bos_token_id, *ids[:at], *[self.image_token_id] * self.num_image_tokens,
                   *ids[at + 1 :]]
            if record.turns:
                ids += self.later_turns(record)[0]
            if len(ids) > self.max_length and skip_too_long:
                out.append(None)
                continue
            if len(ids) > self.max_length:
                turns = f" over {len(record.turns) + 1} turns" if record.turns else ""
                raise PromptTooLong(
                    f"prompt needs {len(ids)} tokens{turns} ({self.num_image_tokens} image tokens + "
                    f"{len(ids) - self.num_image_tokens} text tokens) but max_length is {self.max_length}; "
                    "raise max_length or shorten the " + ("conversation" if record.turns else "question")
                )
            out.append(ids)
        return out

    def later_turns(self, record: Record) -> tuple[list[int], list[int]]:
        """What follows a conversation's first user prompt up to its last answer cue, and its labels:
        each earlier reply and its EOS are targets, the user turns after them are -100."""
        replies = [target_text(turn, self.output_format) for turn in record.turns]
        asks = [follow_up_prompt(turn.question, None, self.prompt) for turn in record.turns[1:]]
        asks.append(follow_up_prompt(record.question, record.choices, self.prompt))
        encoded = self.tokenizer(replies + asks, add_special_tokens=False)["input_ids"]
        ids, labels = [], []
        for reply, ask in zip(encoded[: len(replies)], encoded[len(replies) :]):
            reply = [*reply, self.tokenizer.eos_token_id]
            ids += reply + ask
            labels += reply + [IGNORE_INDEX] * len(ask)
        return ids, labels

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
            earlier = self.later_turns(records[i])[1] if records[i].turns else []
            rows.append(p + t)
            labels.append([IGNORE_INDEX] * (len(p) - len(earlier)) + earlier + t)
        return {**self.pad(rows, labels), "rows": torch.tensor(kept)}

    def generation_inputs(self, records: list[Record], continuations: list[str] | None = None
                          ) -> dict[str, torch.Tensor]:
        """Left-padded prompts; with ``continuations`` (one text per record), each prompt followed by its
        text, so generation goes on from words the caller wrote (a teacher-forced rationale)."""
        return self.pad(self.prompt_ids(records) if continuations is None
                        else self.prompt_and_text(records, continuations), left=True)

    def prompt_and_text(self, records: list[Record], texts: list[str]) -> list[list[int]]:
        """Each record's prompt ids followed by the ids of its text (one text per record)."""
        if len(texts) != len(records):
            raise ValueError(f"got {len(texts)} texts for {len(records)} records; pass one text per record")
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [p + t for p, t in zip(self.prompt_ids(records), encoded)]

    def pad(self, rows: list[list[int]], labels: list[list[int]] | None = None,
            left: bool = False) -> dict[str, torch.Tensor]:
        return pad_rows(rows, self.tokenizer.pad_token_id, labels, left)
