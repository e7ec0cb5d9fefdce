"""Tokenizer coverage of a data set: unknown words measured and named, refused before training, a
word-level export grown to know them; the byte-level ``synth-bpe`` never needs it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    TINY_TEST_CONFIG,
    make_image,
    make_record,
    mmreason,
    model_images,
    training_tensors,
    valid_records,
)

from mmreason.data.schema import validate_record
from mmreason.data.synth import vocabulary
from mmreason.data.writer import ShardSetWriter
from mmreason.export import load_export, save_export
from mmreason.models.baseline import VisionLanguageModel
from mmreason.text.tokenizer import build_tokenizer, word_tokenizer
from mmreason.text.vocabulary import UnknownWords, check_training_text, coverage, extend_vocabulary

PHOTO = {"question": "what is the cat wearing?", "answer": "a space suit",
         "rationale": "the cat floats in a space suit ."}


def test_coverage_counts_unknown_tokens_and_names_the_words():
    tokenizer = word_tokenizer("a red circle the".split())
    report = coverage(tokenizer, ["a red cat", "the cat"])
    assert report["unknown_rate"] == pytest.approx(2 / 5) and report["unknown"] == {"cat": 2}
    assert report["tokens_per_word"] == 1.0


def test_synth_bpe_keeps_benchmark_words_whole_and_encodes_any_text():
    tokenizer = build_tokenizer("synth-bpe")
    assert build_tokenizer("synth-bpe").get_vocab() == tokenizer.get_vocab()  # deterministic
    for word in sorted(vocabulary()):
        assert len(tokenizer(f"the {word}", add_special_tokens=False)["input_ids"]) == 2, word
    text = "A cat in a space suit — naïve café? <answer> red </answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    assert coverage(tokenizer, [text])["unknown_rate"] == 0.0


def test_training_text_with_unknown_words_is_refused_with_the_remedy():
    records = [validate_record({**make_record(0), **PHOTO})]
    with pytest.raises(UnknownWords, match=r"does not know 6 word\(s\), e.g. cat, .*mmreason vocab"):
        check_training_text(build_tokenizer("synth-word"), records, "training")
    assert check_training_text(build_tokenizer("synth-bpe"), records, "training")["unknown"] == {}


def test_a_grown_vocabulary_knows_the_words_and_keeps_every_old_output(tmp_path):
    torch.manual_seed(0)
    model = VisionLanguageModel(TINY_TEST_CONFIG).eval()
    grown = extend_vocabulary(model, ["cat", "space", "suit", "red"]).eval()
    assert len(grown.tokenizer) == len(model.tokenizer) + 3  # red was known
    ids = grown.tokenizer("the cat and a space suit", add_special_tokens=False)["input_ids"]
    assert grown.tokenizer.unk_token_id not in ids and grown.tokenizer.decode(ids) == "the cat and a space suit"
    table, old = grown.lm.get_input_embeddings().weight, model.lm.get_input_embeddings().weight
    torch.testing.assert_close(table[len(model.tokenizer):], old.mean(0).expand(3, -1))
    images, records = model_images(model, 2), valid_records(2)
    with torch.no_grad():
        before = model(images, **training_tensors(model, records)).logits
        after = grown(images, **training_tensors(grown, records)).logits
    assert torch.equal(after[..., : before.shape[-1]], before)
    reloaded = load_export(save_export(grown, tmp_path / "grown"))
    assert reloaded.tokenizer("cat", add_special_tokens=False)["input_ids"] == grown.tokenizer("cat")["input_ids"][-1:]


def test_vocab_command_reports_and_writes_the_grown_export(tmp_path):
    torch.manual_seed(0)
    export = save_export(VisionLanguageModel(TINY_TEST_CONFIG), tmp_path / "export")
    writer = ShardSetWriter(tmp_path / "data", "train", samples_per_shard=4)
    for i in range(3):
        writer.write(f"s{i}", make_image(i), {**make_record(i), **PHOTO})
    writer.close()
    out = json.loads(mmreason("vocab", str(export), "--data", str(tmp_path / "data"),
                              "--extend", str(tmp_path / "grown")).stdout)
    assert out["records"] == 3 and out["unknown"]["cat"] == 6 and out["unknown_rate"] > 0.1
    assert out["extended"]["added"] == 6  # cat space suit wearing floats in and out["extended"]["unknown_rate"] == 0.0
    assert load_export(tmp_path / "grown").tokenizer.convert_tokens_to_ids("cat") >= len(load_export(export).tokenizer)


def test_sampling_passes_over_an_oversized_record_member(tmp_path):
    import io
    import tarfile

    from mmreason.text.vocabulary import MAX_RECORD_BYTES, shard_records

    good = json.dumps(make_record(0)).encode()
    with tarfile.open(tmp_path / "train-000000.tar", "w") as tar:
        for name, data in (("big.json", b" " * (MAX_RECORD_BYTES + 1)), ("ok.json", good)):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    records = shard_records([str(tmp_path / "train-000000.tar")], limit=10)
    assert [r.question for r in records] == [make_record(0)["question"]]
