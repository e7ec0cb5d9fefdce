"""``mmreason diagnose``: what a rationale-writing model's rationales do for its answers.

Three diagnostics on the samples of a test set, from the model's own greedy rationales:

- faithfulness by intervention (:mod:`mmreason.diagnostics.faithfulness`), on samples whose
  record holds the synthetic benchmark's scene graph (the edits need it) and whose own rationale
  is true to it (an edit's implied answer is the edited scene's, which a false rationale's text
  need not imply); a model whose rationales are rarely true can have the gold ones edited
  instead (``source="gold"``), which asks the same of the answer with a rationale it did not write;
- step utility (:mod:`mmreason.diagnostics.utility`): answer entropy after each prefix;
- with a rationale scorer (``scorer``): its AUROC on the model's own rationales labelled by the
  scene graph, and, with ``votes`` K > 1, scorer-weighted against plain majority voting over the
  same K samples per question (a paired comparison).

The report is a dict (written as JSON), a markdown table and, with matplotlib, two figures.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from functools import partial

import torch

from mmreason.data.grounding import rationale_is_true
from mmreason.data.rationale_edits import EDIT_KINDS, edit_rationale, split_steps
from mmreason.diagnostics.faithfulness import FaithfulnessReport
from mmreason.diagnostics.utility import StepUtilityReport
from mmreason.diagnostics.voting import VotingComparison
from mmreason.eval.answers import score_answer
from mmreason.eval.voting import ballot
from mmreason.models.base import REASONS
from mmreason.rl.crop import crop_segments, strip_crops

RATIONALE_SOURCES = ("own", "gold")  # what faithfulness edits: the model's rationales, or the gold ones
CHUNK = 128  # rows per probe call: prefixes and edits of a batch go through the model in chunks


def _chunked(probe, images: torch.Tensor, records: list, rows: list[int], texts: list[str]):
    """``probe(images, records, texts)`` over (record row, text) pairs, CHUNK at a time, results concatenated."""
    out = []
    for start in range(0, len(rows), CHUNK):
        part = rows[start : start + CHUNK]
        out.append(probe(images[part], [records[i] for i in part], texts[start : start + CHUNK]))
    return out


def _words_key(sentence: str) -> str:
    return " ".join(re.sub(r"\d", " ", strip_crops(sentence).lower()).split())


def with_actions(evidence: str, rationale: str) -> str:
    """``evidence`` (words only) with the actions (crops) the model took before each of its sentences in
    ``rationale`` put back before the same sentence (matched without digits, so a renumbered count keeps
    its crop); a sentence an edit rewrote has none. Text without actions comes back unchanged."""
    taken = {}
    for sentence in split_steps(rationale)[0]:
        actions = [piece for piece, box in crop_segments(sentence) if box is not False]
        if actions:
            taken[_words_key(sentence)] = " ".join(actions)
    return " ".join(f"{taken[_words_key(s)]} {s}" if _words_key(s) in taken else s for s in split_steps(evidence)[0])


def _sentences(rationale: str | None) -> list[str]:
    evidence, conclusion = split_steps(rationale or "")
    return evidence + ([conclusion] if conclusion else [])


def step_utility(model, images, records, described, report: StepUtilityReport) -> None:
    """Answer entropy after every prefix of each sample's rationale, into ``report``."""
    rows, prefixes, counts = [], [], []
    for i, response in enumerate(described):
        sentences = _sentences(response.get("rationale"))
        counts.append(len(sentences) + 1)
        for k in range(len(sentences) + 1):
            rows.append(i)
            prefixes.append(" ".join(sentences[:k]))
    entropies, tokens = [], []
    for h, t in _chunked(model.answer_entropies, images, records, rows, prefixes):
        entropies += h.tolist()
        tokens += t
    lengths = [len(ids) for ids in model.tokenizer(prefixes, add_special_tokens=False)["input_ids"]]
    start = 0
    for record, response, count in zip(records, described, counts):
        mine = slice(start, start + count)  # a sample's prefixes are adjacent
        start = mine.stop
        report.add(record.task, entropies[mine], [score_answer(t, record)[0] for t in tokens[mine]], lengths[mine],
                   score_answer(response["text"], record)[0])


def faithfulness(model, images, records, described, keys, report: FaithfulnessReport, kinds, seed: int,
                 skipped: Counter, max_new_tokens: int = 96, source: str = "own") -> None:
    """Each sample's evidence forced back unedited (the control), then each edit of it, into ``report``: the
    model's ``own`` rationale where it is true to the scene graph, or the ``gold`` one (true by construction)."""
    jobs = []  # (row, kind, edit or None for the unedited evidence)
    for i, (record, response) in enumerate(zip(records, described)):
        if not record.meta.get("scene"):
            skipped["no scene graph"] += 1
            continue
        rationale = (response.get("rationale") if source == "own" else record.rationale) or ""
        words = strip_crops(rationale)
        if not rationale_is_true(rationale, record):  # an edit's implied answer holds for true rationales only
            skipped[f"{source} rationale not true to the scene"] += 1
            continue
        jobs.append((i, "none", None, " ".join(split_steps(rationale)[0])))
        for kind in kinds:
            edit = edit_rationale(words, record, kind, random.Random(f"{seed}/{keys[i]}/{kind}"))
            if edit is None:
                skipped[f"no {kind} edit"] += 1
            else:
                jobs.append((i, kind, edit, with_actions(edit.evidence, rationale)))
    if not jobs:
        return
    answer_after = partial(model.answers_after, max_new_tokens=max_new_tokens)  # the rest of the rationale
    answers = [a for part in _chunked(answer_after, images, records, [j[0] for j in jobs],
                                      [j[3] for j in jobs]) for a in part]
    unedited = {}
    for (i, kind, _, _), answer in zip(jobs, answers):
        if kind == "none":
            unedited[i] = ballot(answer["text"], records[i])
            target = described[i]["text"] if source == "own" else records[i].answer  # its free answer, or the gold
            report.add_unedited(records[i], ballot(target, records[i]), unedited[i])
    for (i, kind, edit, _), answer in zip(jobs, answers):
        if edit is not None:
            report.add(keys[i], records[i], kind, edit.implied, edit.original, answer["text"], unedited[i])


def diagnose(model, batches, kinds=EDIT_KINDS, seed: int = 0, max_new_tokens: int = 160, scorer=None,
             votes: int = 1, temperature: float = 0.7, source: str = "own") -> dict:
    """The three diagnostics over ``batches`` (loader batches: ``pixels``, ``records``, ``keys``)."""
    if not model.can(REASONS):
        raise ValueError(f"a {model.family!r} model {'' if model.can('answers') else 'answers nothing and '}"
                         "writes no rationale to diagnose; diagnose models that write a rationale, then answer "
                         "(baseline with output_format cot, mccot with rationale and answer stages, virl)")
    if source not in RATIONALE_SOURCES:
        raise ValueError(f"the rationales to edit are {RATIONALE_SOURCES}, got {source!r}")
    unknown = sorted(set(kinds) - set(EDIT_KINDS))
    if unknown:
        raise ValueError(f"unknown edit kinds {unknown}; expected some of {EDIT_KINDS}")
    if votes > 1 and "votes" not in model.response_options:
        raise ValueError(f"a {model.family!r} model does not vote over samples, so scorer-weighted and majority "
                         "voting cannot be compared on it; leave out --votes (the scorer's AUROC is still reported)")
    faith, utility, skipped = FaithfulnessReport(), StepUtilityReport(), Counter()
    voting = VotingComparison() if scorer is not None else None
    weights = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            images = model.preprocess.normalize(batch["pixels"].to(weights.device)).to(weights.dtype)
            records = batch["records"]
            described = [model.describe(r) for r in model.respond(images, records, max_new_tokens=max_new_tokens)]
            step_utility(model, images, records, described, utility)
            faithfulness(model, images, records, described, batch["keys"], faith, kinds, seed, skipped,
                         max_new_tokens, source)
            if voting is not None:
                voting.add_greedy(scorer, images, records, described)
                if votes > 1:
                    sampled = model.respond(images, records, max_new_tokens=max_new_tokens, votes=votes,
                                            temperature=temperature, rerank=scorer)
                    voting.add_votes(records, sampled)
    finally:
        model.train(was_training)
    report = {"faithfulness": {"rationales": source, **faith.to_dict()}, "step_utility": utility.to_dict(),
              "skipped_edits": dict(skipped)}
    if voting is not None:
        report["scorer"] = voting.to_dict(votes)
    return report
