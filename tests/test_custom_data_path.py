"""The README's custom-data path at tiny scale: a LLaVA-format file with words the benchmark never uses
and a multi-turn conversation converts, a byte-level model fine-tunes on it with LoRA, and predicts;
the same data is refused, with the remedy, to a word-level model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_TEST_CONFIG, fit_args, make_image, mmreason

import mmreason as zoo
from mmreason.data.shards import resolve_shards
from mmreason.text.vocabulary import shard_records

CONVERSATIONS = [
    {"id": "astronaut", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is the person wearing?"}, {"from": "gpt", "value": "A space suit."},
        {"from": "human", "value": "What is behind her?"}, {"from": "gpt", "value": "An American flag."}]},
    {"id": "cat", "image": "b.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat animal is this?"}, {"from": "gpt", "value": "A tabby cat."}]},
]


def _photos(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        make_image(i, 48).save(images / name)
    source = tmp_path / "chat.json"
    copies = [{**c, "id": f"{c['id']}{i}"} for i in range(2) for c in CONVERSATIONS]  # 4 samples: a batch
    source.write_text(json.dumps(copies))
    data = tmp_path / "data"
    for split in ("train", "val"):
        mmreason("data", "convert", "llava", str(source), "--images", str(images), "--out", str(data),
                 "--split", split)
    return data


def _fit(data, root, tokenizer: str):
    args = fit_args(data, root, 3, "--model.init_args.lora", '{"rank": 4}',
                    "--model.init_args.model_config",
                    json.dumps({**TINY_TEST_CONFIG, "tokenizer": tokenizer, "output_format": "plain"}))
    args[args.index("--data.init_args.train") + 1] = str(data)
    args[args.index("--data.init_args.val") + 1] = str(data)
    return subprocess.run([sys.executable, "-m", "mmreason", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1",
                                         "PATH": "/usr/bin:/bin"})


def test_photos_with_new_words_fine_tune_with_lora_and_predict(tmp_path):
    data = _photos(tmp_path)
    done = _fit(data, tmp_path / "run", "synth-bpe")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0.00% unknown tokens" in done.stderr
    model = zoo.load(tmp_path / "run" / "export")
    conversation = next(r for r in shard_records(resolve_shards(str(data), "train"), 4) if r.turns)
    record = model.processor.training_inputs([conversation])
    labels = record["labels"][0]
    answers = model.tokenizer.decode(labels[labels >= 0])
    assert "A space suit." in answers and "An American flag." in answers  # both replies are targets
    assert model.tokenizer.unk_token_id not in record["input_ids"][0].tolist()
    answer = model.predict(make_image(0, 48), "What is the person wearing?", max_new_tokens=6)
    assert isinstance(answer["text"], str)


@pytest.mark.slow  # a second fit in a subprocess; check_training_text's refusal is tested in test_vocabulary
def test_a_word_level_model_is_refused_with_the_remedy(tmp_path):
    data = _photos(tmp_path)
    done = _fit(data, tmp_path / "run", "synth-word")
    assert done.returncode != 0
    assert "does not know" in done.stderr and "mmreason vocab" in done.stderr and "wearing" in done.stderr
