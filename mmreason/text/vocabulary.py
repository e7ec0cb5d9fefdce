"""How well a tokenizer covers a data set, and growing a word-level export's vocabulary to cover it.

A word-level tokenizer maps every word it never saw to ``<unk>``: a model fine-tuned on such data
can neither read nor write those words ("cat" in, "<unk>" out), silently. So ``fit`` measures the
share of unknown tokens in the training records' text before training, and refuses a word-level
model that would meet them, naming the words and the remedy; ``extend_vocabulary`` makes a copy of
an export whose tokenizer knows the new words (embedding rows added at the mean of the existing
ones, every other weight unchanged). Byte-level BPE tokenizers (``synth-bpe``, pretrained language
models') have no unknown tokens; for them the report gives tokens per word, how finely new words
are split.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import AddedToken

from mmreason.data.schema import validate_record

log = logging.getLogger(__name__)

WORD = re.compile(r"\w+|[^\w\s]")
TEXT_FIELDS = ("question", "answer", "rationale")
MAX_RECORD_BYTES = 1 << 20  # a record's JSON larger than this is not a record: passed over unread


class UnknownWords(ValueError):
    """The training text holds words the model's word-level tokenizer does not know."""


def record_texts(record) -> list[str]:
    """The text a model reads or writes for a record: question, choices, answer, rationale (and turns)."""
    texts = [getattr(record, f) or "" for f in TEXT_FIELDS] + list(record.choices or ())
    for turn in record.turns or ():
        texts += [turn.question, turn.answer, turn.rationale or ""]
    return [t for t in texts if t]


def shard_records(urls: Iterable[str], limit: int) -> list:
    """Up to ``limit`` records read from the ``.json`` members of local shards (no image is decoded);
    remote or unreadable shards, invalid records and members over :data:`MAX_RECORD_BYTES` (their size
    is in the tar header, so they are never read) are passed over: this only samples text."""
    records = []
    for url in urls:
        path = Path(url[len("file:"):] if url.startswith("file:") else url)
        if not path.is_file():
            continue
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if len(records) >= limit:
                        return records
                    if member.isfile() and member.name.endswith(".json") and member.size <= MAX_RECORD_BYTES:
                        try:
                            records.append(validate_record(json.loads(tar.extractfile(member).read())))
                        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                            continue
        except (tarfile.TarError, OSError):
            continue
    return records


def coverage(tokenizer, texts: Iterable[str]) -> dict:
    """``unknown_rate`` (share of tokens that are ``<unk>``), ``tokens_per_word`` and the ``unknown``
    words with their counts, over ``texts``."""
    unk = tokenizer.unk_token_id
    tokens = unknown_tokens = words = 0
    unknown: Counter = Counter()
    for text in texts:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        tokens += len(ids)
        words += len(WORD.findall(text))
        for token, (start, end) in zip(ids, offsets):
            if unk is not None and token == unk:
                unknown_tokens += 1
                unknown[text[start:end].lower()] += 1
    return {"unknown_rate": unknown_tokens / max(tokens, 1), "tokens_per_word": tokens / max(words, 1),
            "tokens": tokens, "unknown": dict(unknown.most_common())}


def check_training_text(tokenizer, records: list, where: str) -> dict:
    """Log the tokenizer's coverage of ``records``; a tokenizer meeting unknown words is refused with
    the words and what to do."""
    report = coverage(tokenizer, (t for r in records for t in record_texts(r)))
    log.info("tokenizer coverage of %d %s records: %.2f%% unknown tokens, %.2f tokens per word", len(records),
             where, 100 * report["unknown_rate"], report["tokens_per_word"])
    if report["unknown"]:
        words = ", ".join(list(report["unknown"])[:8])
        raise UnknownWords(
            f"{100 * report['unknown_rate']:.1f}% of the tokens in {len(records)} {where} records are <unk>: the "
            f"model's tokenizer does not know {len(report['unknown'])} word(s), e.g. {words}. Grow the export's "
            "vocabulary first (`mmreason vocab EXPORT --data DATA --extend NEW_EXPORT`, then init from NEW_EXPORT), "
            "or start from a model with a byte-level tokenizer (tokenizer: synth-bpe, or a pretrained language "
            "model's); data.check_vocabulary: false trains anyway")
    return report


def extend_vocabulary(model, words: Iterable[str]):
    """A new model of ``model``'s family and config whose tokenizer also knows ``words`` (whole words,
    matched case-insensitively as the word-level tokenizer reads); token tables get one row per new
    word at the mean of the existing rows, every other weight is copied."""
    from mmreason.export import portable_config
    from mmreason.zoo import family_class

    fresh = _copy_tokenizer(model.tokenizer)
    new = sorted({w.lower() for w in words} - set(fresh.get_vocab()))
    fresh.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in new])
    grown = family_class(model.family)(portable_config(model), tokenizer=fresh)
    old_rows = len(model.tokenizer)
    state = grown.state_dict()
    for name, tensor in model.state_dict().items():
        target = state[name]
        if tensor.shape != target.shape and tensor.shape[1:] == target.shape[1:] and tensor.shape[0] >= old_rows:
            mean = tensor.float().mean(0, keepdim=True).to(tensor.dtype)
            state[name] = torch.cat([tensor, mean.expand(target.shape[0] - tensor.shape[0], *tensor.shape[1:])])
        elif tensor.shape != target.shape:
            raise ValueError(f"cannot grow {name}: {tuple(tensor.shape)} → {tuple(target.shape)}")
        else:
            state[name] = tensor
    grown.load_state_dict(state)
    log.info("added %d word(s) to the vocabulary (%d → %d tokens)", len(new), old_rows, len(fresh))
    return grown


def vocab_command(args) -> dict:
    """``mmreason vocab``: the export's coverage of the data (and, with ``--extend``, the grown export's)."""
    from mmreason.data.shards import resolve_shards
    from mmreason.export import load_export, save_export

    model = load_export(args.model)
    data = Path(args.data)
    records = shard_records(resolve_shards(args.data, args.split if data.is_dir() else None), args.limit)
    texts = [t for r in records for t in record_texts(r)]
    report = {"records": len(records), **coverage(model.tokenizer, texts)}
    if args.extend:
        grown = extend_vocabulary(model, report["unknown"])
        save_export(grown, args.extend, recipe=None, metrics=None)
        after = coverage(grown.tokenizer, texts)
        report["extended"] = {"export": args.extend, "added": len(grown.tokenizer) - len(model.tokenizer),
                              "unknown_rate": after["unknown_rate"], "tokens_per_word": after["tokens_per_word"]}
    report["unknown"] = dict(list(report["unknown"].items())[:50])
    return report


def _copy_tokenizer(tokenizer):
    """An independent copy (adding tokens must not change the model's own)."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)
