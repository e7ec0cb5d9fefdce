"""Tokenizers: a small one trained here, or any Hugging Face tokenizer from a path.

Tiny recipes use a word-level vocabulary built from the synthetic benchmark's
complete word list (deterministic, no data pass needed), or ``synth-bpe``: a
byte-level BPE over the same words, each one token, that also encodes any other
text (bytes, never ``<unk>``), so fine-tuning on open-vocabulary data keeps every
word; user data can train a byte-level BPE on its own text. Either way the result is a
``PreTrainedTokenizerFast`` that saves and loads like any other, and the
special tokens of every family are added by :func:`add_special_tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmreason.data.synth import vocabulary
from mmreason.layers.language import resolve_path
from mmreason.text.prompts import TEMPLATE_WORDS

SPECIAL_TOKENS = (
    "<image>", "<tor>", "<seg>", "<crop>", "</crop>", "<think>", "</think>", "<answer>", "</answer>",
)
BASE_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
WORD_PATTERN = r"\w+|[^\w\s]"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **BASE_TOKENS)
    add_special_tokens(fast)
    return fast


def word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over a fixed vocabulary (punctuation split off)."""
    vocab = {tok: i for i, tok in enumerate(BASE_TOKENS.values())}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=BASE_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return _wrap(tokenizer)


def bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` (for user data with an open vocabulary)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BASE_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return _wrap(tokenizer)


def add_special_tokens(tokenizer) -> dict[str, int]:
    """Add every family's special tokens (idempotent) and return their ids."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    for name, token in BASE_TOKENS.items():
        if getattr(tokenizer, name, None) is None:
            tokenizer.add_special_tokens({name: token})
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def synth_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE whose merges make every benchmark and prompt word one token, at the start of a text
    and after a space (trained on each word twice: ``w w``); deterministic, as the word list is."""
    words = sorted({*vocabulary(), *TEMPLATE_WORDS})
    return bpe_tokenizer([f"{w} {w}" for w in words], vocab_size=1 << 14)


def build_tokenizer(spec: str, gguf_file: str | None = None) -> PreTrainedTokenizerFast:
    """``synth-word`` (the benchmark's word list and prompt words), ``synth-bpe`` (the same words, byte-level,
    open vocabulary), a folder of tokenizer files
    (``pkg:NAME`` for an installed package's folder; ``gguf_file`` reads the tokenizer inside a GGUF),
    or a hub id (downloaded once by transformers, then cached)."""
    if spec == "synth-word":
        return word_tokenizer([*vocabulary(), *TEMPLATE_WORDS])
    if spec == "synth-bpe":
        return synth_bpe_tokenizer()
    folder = resolve_path(spec)
    if not Path(folder).exists() and not HUB_ID.fullmatch(spec):
        raise FileNotFoundError(
            f"tokenizer {spec!r}: expected 'synth-word', 'synth-bpe', a folder with tokenizer files (tokenizer.json) "
            "or a hub id (org/name)"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    add_special_tokens(tokenizer)
    return tokenizer
