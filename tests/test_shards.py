"""The shard reader: decoding, bad samples skipped and counted, equal batches, pipe refusal."""

from __future__ import annotations

import io
import json
import random
import tarfile

import numpy as np
import pytest
import torch
from conftest import make_image, make_record, png_bytes, write_shards
from PIL import Image

from mmreason.data.preprocess import Preprocess
from mmreason.data.schema import validate_record
from mmreason.data.shards import (
    SKIPPED,
    EpochLoader,
    _length_grouped,
    eval_stream,
    resolve_shards,
    shard_sizes,
    train_stream,
)
from mmreason.data.writer import record_shard_size

PRE = Preprocess(image_size=16, max_pixels=500 * 500)


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _image_bytes(mode: str, size=(20, 12), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        image = Image.fromarray(np.full((size[1], size[0]), 40000, dtype=np.uint16))
    else:
        image = Image.new(mode, size, {"RGBA": (255, 0, 0, 128), "L": 128, "CMYK": (0, 255, 255, 0)}.get(mode, 0))
    image.save(buf, format=fmt)
    return buf.getvalue()


def _collect(stream) -> list[dict]:
    return list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0))


def test_eval_stream_reads_every_sample_once_with_values(tmp_path):
    urls = write_shards(tmp_path, "val", [5, 3])
    stream, total = eval_stream(urls, PRE, batch_size=4)
    batches = _collect(stream)
    keys = [k for b in batches for k in b["keys"]]
    assert total == 8 and len(keys) == 8 and len(set(keys)) == 8
    assert [len(b["keys"]) for b in batches] == [4, 4]
    first = batches[0]
    assert first["pixels"].shape == (4, 16, 16, 3) and first["pixels"].dtype == torch.uint8
    assert first["records"][0].question == make_record(0)["question"]
    expected = PRE(make_image(0))
    assert torch.allclose(PRE.normalize(first["pixels"])[0], expected)


def test_any_image_mode_decodes_to_rgb(tmp_path):
    record = json.dumps(make_record(0)).encode()
    members = {}
    for i, (mode, fmt) in enumerate([("RGBA", "PNG"), ("L", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("P", "PNG")]):
        ext = "jpg" if fmt == "JPEG" else "png"
        members[f"k{i}.{ext}"] = _image_bytes(mode, fmt=fmt)
        members[f"k{i}.json"] = record
    _tar(tmp_path / "m-000000.tar", members)
    batches = _collect(eval_stream([str(tmp_path / "m-000000.tar")], PRE, batch_size=10)[0])
    images = PRE.normalize(batches[0]["pixels"])
    assert images.shape == (5, 3, 16, 16)
    # 16-bit value 40000/65535 ≈ 0.61 -> normalised (0.61-0.5)/0.5 ≈ 0.22, not clipped to white
    assert abs(float(images[3].mean()) - (40000 / 65535 - 0.5) / 0.5) < 0.02
    # half-transparent red over white is pink: red channel high, green mid
    assert float(images[0][0].mean()) > 0.9 and -0.1 < float(images[0][1].mean()) < 0.1


def test_bad_samples_are_skipped_counted_and_logged(tmp_path, caplog):
    good = json.dumps(make_record(0)).encode()
    huge = io.BytesIO()
    Image.new("L", (600, 600)).save(huge, format="PNG")
    _tar(tmp_path / "bad-000000.tar", {
        "ok1.png": png_bytes(make_image(1)), "ok1.json": good,
        "corrupt.jpg": b"\xff\xd8\xff\xe0garbage", "corrupt.json": good,
        "noquestion.png": png_bytes(make_image(2)), "noquestion.json": json.dumps({"answer": "yes"}).encode(),
        "latin1.png": png_bytes(make_image(3)), "latin1.json": '{"question": "caf\xe9?", "answer": "x"}'.encode("latin-1"),
        "huge.png": huge.getvalue(), "huge.json": good,
        "noimage.json": good,
        "ok2.png": png_bytes(make_image(4)), "ok2.json": good,
    })
    write_shards(tmp_path, "trunc", [6])
    data = (tmp_path / "trunc0-000000.tar").read_bytes()
    (tmp_path / "trunc0-000000.tar").write_bytes(data[: len(data) // 2])
    SKIPPED.take()
    with caplog.at_level("WARNING"):
        batches = _collect(eval_stream([str(tmp_path / "bad-000000.tar"), str(tmp_path / "trunc0-000000.tar")],
                                       PRE, batch_size=100)[0])
    keys = [k for b in batches for k in b["keys"]]
    assert keys[:2] == ["ok1", "ok2"]
    assert 2 <= len(keys) < 8  # the truncated shard yields only its complete samples
    skipped = sum(b["skipped"] for b in batches) + SKIPPED.take()
    assert skipped >= 6
    text = caplog.text
    for key, reason in [("corrupt", "undecodable image"), ("noquestion", "'question'"),
                        ("latin1", "not UTF-8"), ("huge", "max_pixels"), ("noimage", "missing image")]:
        assert any(key in r.message and reason in r.message for r in caplog.records), (key, reason, text)


def test_train_stream_gives_equal_batches_per_rank_on_uneven_shards(tmp_path):
    urls = write_shards(tmp_path, "train", [7, 2, 5])  # 14 samples, uneven
    counts = []
    for rank in range(2):
        stream, per_epoch = train_stream(urls, PRE, batch_size=3, rank=rank, world_size=2, seed=1,
                                         shuffle_buffer=4)
        batches = _collect(stream)
        assert all(len(b["keys"]) == 3 for b in batches)
        counts.append((len(batches), per_epoch))
    assert counts == [(2, 2), (2, 2)]  # 14 // (3 * 2) batches on each rank


def test_train_stream_epochs_differ_but_are_reproducible(tmp_path):
    urls = write_shards(tmp_path, "train", [10, 10])
    def keys(epoch):
        stream, _ = train_stream(urls, PRE, batch_size=4, seed=3, shuffle_buffer=8)
        stream.epoch = epoch
        return [k for b in _collect(stream) for k in b["keys"]]
    assert keys(0) == keys(0)
    assert keys(0) != keys(1)


def test_eval_stream_on_two_ranks_needs_even_shards_and_equalises(tmp_path):
    urls = write_shards(tmp_path, "test", [4, 3, 1])
    with pytest.raises(ValueError, match="cannot be split evenly over 2 ranks"):
        eval_stream(urls, PRE, 2, rank=0, world_size=2)
    urls = urls[:2]
    lengths = [len(_collect(eval_stream(urls, PRE, 2, rank=r, world_size=2)[0])) for r in range(2)]
    assert lengths == [2, 2]  # rank 0 capped at rank 1's 3 samples -> 2 batches each


def test_resolve_shards_refuses_pipe_and_reports_missing(tmp_path):
    with pytest.raises(ValueError, match="pipe:"):
        resolve_shards("pipe:curl http://x/{0..1}.tar")
    assert resolve_shards("pipe:cat a.tar", allow_pipe=True) == ["pipe:cat a.tar"]
    with pytest.raises(FileNotFoundError, match="no shards found"):
        resolve_shards(str(tmp_path / "nothing-*.tar"))
    urls = write_shards(tmp_path, "train", [2, 2])
    assert resolve_shards(str(tmp_path / "train{0..1}-000000.tar")) == urls
    assert resolve_shards(str(tmp_path), split="train0") == urls[:1]


def test_epoch_length_comes_from_sizes_json(tmp_path):
    urls = write_shards(tmp_path, "train", [3, 4])
    assert shard_sizes(urls) == {urls[0]: 3, urls[1]: 4}
    (tmp_path / "sizes.json").unlink()
    record_shard_size(tmp_path, "other.tar", 1)
    assert shard_sizes(urls) is None
    with pytest.raises(ValueError, match="sizes.json"):
        train_stream(urls, PRE, batch_size=2)


def test_length_grouping_batches_similar_lengths_without_losing_samples(tmp_path):
    urls = write_shards(tmp_path, "train", [16])
    records = [{**make_record(i), "rationale": "x" * (i * 7 % 16)} for i in range(16)]
    samples = [{"key": str(i), "pixels": torch.zeros(2, 2, 3, dtype=torch.uint8), "record": validate_record(r), "mask": None}
               for i, r in enumerate(records)]
    batches = list(_length_grouped(iter(samples), 4, 4, random.Random(0)))
    assert sorted(k for b in batches for k in b["keys"]) == sorted(str(i) for i in range(16))
    spans = [max(len(r.rationale) for r in b["records"]) - min(len(r.rationale) for r in b["records"])
             for b in batches]
    assert max(spans) <= 3  # 16 distinct lengths in 4 sorted groups of 4
    stream, _ = train_stream(urls, PRE, batch_size=4, length_group=2)
    assert sum(len(b["keys"]) for b in _collect(stream)) == 16


def test_epoch_loader_asks_the_epoch_when_a_pass_starts(tmp_path):
    urls = write_shards(tmp_path, "train", [8])
    stream, _ = train_stream(urls, PRE, batch_size=4)
    epoch = {"now": 0}
    loader = EpochLoader(stream, lambda: epoch["now"])
    epoch["now"] = 5  # e.g. a resumed Trainer that learned its epoch after building the loader
    list(loader)
    assert stream.epoch == 5


def test_eval_length_counts_each_workers_partial_batch(tmp_path):
    urls = write_shards(tmp_path, "test", [5, 5, 5])
    stream, total = eval_stream(urls, PRE, batch_size=4, num_workers=2)
    batches = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    assert total == 15 and sum(len(b["keys"]) for b in batches) == 15
    assert len(stream) == len(batches) == 5  # worker 0: 10 samples -> 3 batches, worker 1: 5 -> 2
