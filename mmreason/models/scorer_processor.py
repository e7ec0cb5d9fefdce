"""The rationale scorer's pairs: which rationales of a record are right and which wrong, and their tensors.

A scorer learns from (record, rationale, label) pairs. Right: the record's gold rationale. Wrong,
made from it (:func:`corrupt`): an edit of one evidence step that changes the answer the evidence
implies (:func:`mmreason.data.rationale_edits.edit_rationale`, kept only when ``edit.matters``) followed
by the record's own concluding sentence, so evidence and image disagree while the conclusion still
names the gold answer; and the gold evidence with the conclusion's answer swapped for another of
its kind (``answer``: another digit, colour, shape, size, the opposite direction, yes↔no, another
option). Either way only the picture, or the evidence read against it, tells the pair is wrong.
Records may also carry a model's own sampled rationales, labelled by the scene graph, in
``meta["candidates"]`` (``[{"rationale": str, "correct": bool, ...}, ...]``, as
:func:`mmreason.diagnostics.candidates.candidate_samples` writes them).

Per record the processor takes the gold rationale, ``corruptions`` wrong ones (the kinds that apply
tried in random order, each giving at most one; an edit that leaves the implied answer alone gives
none) and up to ``candidates`` sampled ones (right and wrong taken in turn, so they come balanced
when both exist); the loss then weighs right and wrong pairs equally (:func:`~mmreason.models.scorer.
balanced_bce`). A record's draws are a function of the record and the loader stream
(:meth:`ScorerProcessor.reseed`: rank, worker and epoch), so every epoch draws afresh and a copy of
the processor makes the same pairs as the model's own.

A pair's tokens are ``<s> question [choices] </s> rationale </s>`` (the tokenizer's own BOS and EOS
serve as ``[CLS]`` and ``[SEP]``), token type 0 up to the first ``</s>`` and 1 after it; the image's
tokens go in after ``<s>`` (:class:`~mmreason.layers.rationale_scorer.RationaleScorer`). A scorer that reads
with a VLM's decoder takes the ``prompt`` layout instead: ``<s>``, that VLM's prompt without its image tag, and
``<think> rationale </think>``, as the VLM was trained to read them.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from itertools import zip_longest
from string import ascii_uppercase

import torch

from mmreason.data.rationale_edits import applicable_kinds, edit_rationale, split_steps
from mmreason.data.scenes import COLOURS, SHAPES, SIZES
from mmreason.data.schema import Record
from mmreason.models.processor import BatchProcessor, PromptTooLong, pad_rows
from mmreason.text.prompts import IMAGE_TAG, format_choices, thinking, user_prompt

log = logging.getLogger(__name__)

LAYOUTS = ("pair", "prompt")  # BERT's question [SEP] rationale, or a VLM's prompt and <think> part
ANSWER_SWAP = "answer"  # the corruption kind that swaps the conclusion's answer
YES_NO = ("yes", "no")
# words an answer may be swapped within: each for another of its group (directions for their opposite)
SWAP_GROUPS = (YES_NO, ("left", "right"), ("above", "below"), tuple(COLOURS), SHAPES, SIZES)
NEAR_COUNTS = 3  # a count answer is swapped for one at most this far from it


def answer_swaps(record: Record) -> list[str]:
    """Other answers of the record's kind: other option letters (or texts), counts near it, or the answer
    with one of its words (a colour, shape, size, direction, yes/no) swapped within its group."""
    answer = record.answer.strip()
    if record.choices:
        letters = ascii_uppercase[: len(record.choices)]
        return [c for c in letters if c != answer] if answer in letters else [c for c in record.choices if c != answer]
    if answer.isdigit():
        n = int(answer)
        return [str(k) for k in range(max(0, n - NEAR_COUNTS), n + NEAR_COUNTS + 1) if k != n]
    words, out = answer.split(), []
    for i, word in enumerate(words):
        group = next((g for g in SWAP_GROUPS if word in g), ())
        out += [" ".join([*words[:i], other, *words[i + 1 :]]) for other in group if other != word]
    return out


def swap_answer(record: Record, rng: random.Random) -> str | None:
    """The gold rationale with the answer in its concluding sentence replaced by another of its kind: every
    mention (so "the number of red shapes is 3" changes along), but only the last of a yes/no ("there is
    no red circle, so the answer is no"); None when the rationale has no conclusion naming the answer."""
    evidence, conclusion = split_steps(record.rationale or "")
    answer = record.answer.strip()
    swaps = answer_swaps(record)
    mentions = list(re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", conclusion or "")) if answer else []
    if not swaps or not mentions:
        return None
    if answer in YES_NO:  # also a word of the sentence
        mentions = mentions[-1:]
    other, pieces, at = rng.choice(swaps), [], 0
    for mention in mentions:
        pieces += [conclusion[at : mention.start()], other]
        at = mention.end()
    return " ".join([*evidence, "".join([*pieces, conclusion[at:]])])


def corruption_kinds(record: Record) -> tuple[str, ...]:
    """The ways :func:`corrupt` may try to make the record's rationale wrong."""
    return (*applicable_kinds(record), ANSWER_SWAP) if record.rationale else ()


def corrupt(record: Record, kind: str, rng: random.Random) -> str | None:
    """A wrong rationale for ``record`` made by ``kind`` (an edit kind or :data:`ANSWER_SWAP`); None when
    that kind cannot change what the rationale implies here."""
    if kind == ANSWER_SWAP:
        return swap_answer(record, rng)
    edit = edit_rationale(record.rationale, record, kind, rng)
    if edit is None or not edit.matters:
        return None
    conclusion = split_steps(record.rationale)[1]
    return edit.evidence if conclusion is None else f"{edit.evidence} {conclusion}"


def candidates_of(record: Record) -> list[tuple[str, bool]]:
    """The (rationale, correct) pairs of ``meta["candidates"]``; unlabelled entries (``correct`` null: no scene
    graph said) are passed over, malformed ones logged and passed over."""
    entries = record.meta.get("candidates") or []
    entries = entries if isinstance(entries, list) else [entries]
    entries = [c for c in entries if not (isinstance(c, dict) and "correct" in c and c["correct"] is None)]
    good = [(c["rationale"], c["correct"]) for c in entries  # an empty rationale is a sample too: a model wrote none
            if isinstance(c, dict) and isinstance(c.get("rationale"), str) and isinstance(c.get("correct"), bool)]
    if len(good) < len(entries):
        log.warning("record %r: %d meta.candidates entries are not {'rationale': text, 'correct': true/false}; "
                    "passed over", record.meta.get("id", record.question[:40]), len(entries) - len(good))
    return good


def _balanced(candidates: list[tuple[str, bool]], n: int, rng: random.Random) -> list[tuple[str, bool]]:
    """Up to ``n`` candidates, right and wrong in turn (which comes first drawn at random)."""
    right, wrong = [c for c in candidates if c[1]], [c for c in candidates if not c[1]]
    rng.shuffle(right), rng.shuffle(wrong)
    pools = (right, wrong) if rng.random() < 0.5 else (wrong, right)
    return [c for pair in zip_longest(*pools) for c in pair if c is not None][:n]


class ScorerProcessor(BatchProcessor):
    """Records → the scorer's pairs as tensors; see the module's docstring for what pairs are drawn."""

    def __init__(self, tokenizer, num_image_tokens: int, max_length: int, corruptions: int = 1,
                 candidates: int = 2, seed: int = 0, layout: str = "pair"):
        for name, value in (("corruptions", corruptions), ("candidates", candidates)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"pairs.{name} must be a whole number >= 0 (pairs per record), got {value!r}")
        self.tokenizer, self.num_image_tokens, self.max_length = tokenizer, num_image_tokens, max_length
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.corruptions, self.candidates, self.seed, self.layout = corruptions, candidates, seed, layout
        self.stream = ""

    def reseed(self, stream: str) -> None:
        self.stream = stream

    def record_rng(self, record: Record) -> random.Random:
        """The draws for one record: a function of the record, ``seed`` and the loader stream."""
        digest = hashlib.blake2b(f"{record.question}\0{record.rationale}".encode(), digest_size=8).hexdigest()
        return random.Random(f"{self.seed}/{self.stream}/{digest}")

    def training_pairs(self, record: Record) -> list[tuple[str, float]]:
        """(rationale, label) pairs of one record: gold 1, corruptions 0, sampled candidates as labelled."""
        rng, pairs = self.record_rng(record), []
        if record.rationale:
            pairs.append((record.rationale, 1.0))
            kinds = list(corruption_kinds(record))
            rng.shuffle(kinds)
            wrong = (corrupt(record, kind, rng) for kind in kinds)
            pairs += [(text, 0.0) for text, _ in zip((w for w in wrong if w is not None), range(self.corruptions))]
        pairs += [(text, float(ok)) for text, ok in _balanced(candidates_of(record), self.candidates, rng)]
        return pairs

    def encode(self, records: list[Record], rationales: list[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and token types of each pair ``(records[i], rationales[i])`` (image tokens not included)."""
        if self.layout == "prompt":
            texts = [f"{IMAGE_TAG.sub(' ', user_prompt(r.question, r.choices)).strip()} {thinking(q)} </think>"
                     for r, q in zip(records, rationales, strict=True)]
            rows = [[self.tokenizer.bos_token_id, *ids] for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            return [(ids, [0] * len(ids)) for ids in rows]
        questions = [record.question + format_choices(record.choices) for record in records]
        encoded = self.tokenizer([*questions, *rationales], add_special_tokens=False)["input_ids"]
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        return [([bos, *q, eos, *r, eos], [0] * (len(q) + 2) + [1] * (len(r) + 1))
                for q, r in zip(encoded[: len(records)], encoded[len(records) :], strict=True)]

    def fits(self, ids: list[int]) -> bool:
        return self.num_image_tokens + len(ids) <= self.max_length

    def too_long(self, ids: list[int]) -> PromptTooLong:
        return PromptTooLong(f"a question and rationale need {self.num_image_tokens + len(ids)} tokens "
                             f"({self.num_image_tokens} image tokens + {len(ids)} text tokens) but the scorer's "
                             f"max_length is {self.max_length}; shorten the rationale")

    def pack(self, encoded: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``token_type_ids`` of encoded pairs."""
        out = pad_rows([ids for ids, _ in encoded], self.tokenizer.pad_token_id)
        out["token_type_ids"] = pad_rows([types for _, types in encoded], 0)["input_ids"]
        return out

    def scoring_inputs(self, records: list[Record], rationales: list[str]) -> dict[str, torch.Tensor]:
        """The tensors of ``rationales[i]`` read against ``records[i]``; a pair over max_length raises."""
        if len(records) != len(rationales):
            raise ValueError(f"got {len(rationales)} rationales for {len(records)} records; pass one record per rationale")
        encoded = self.encode(records, rationales)
        for ids, _ in encoded:
            if not self.fits(ids):
                raise self.too_long(ids)
        return self.pack(encoded)

    def training_inputs(self, records: list[Record], skip_too_long: bool = False) -> dict[str, torch.Tensor]:
        """Every record's pairs: the tensors, ``labels`` (float) and ``rows`` (each pair's record); pairs over
        max_length are dropped when ``skip_too_long`` (else they raise), and only ``rows`` (empty) comes back
        when no pair is left."""
        pairs = [(i, text, label) for i, record in enumerate(records) for text, label in self.training_pairs(record)]
        encoded = self.encode([records[i] for i, _, _ in pairs], [text for _, text, _ in pairs]) if pairs else []
        kept = [k for k, (ids, _) in enumerate(encoded) if self.fits(ids)]
        if len(kept) < len(encoded) and not skip_too_long:
            raise self.too_long(next(ids for ids, _ in encoded if not self.fits(ids)))
        if not kept:
            return {"rows": torch.zeros(0, dtype=torch.long)}
        return {**self.pack([encoded[k] for k in kept]), "labels": torch.tensor([pairs[k][2] for k in kept]),
                "rows": torch.tensor([pairs[k][0] for k in kept])}
