"""Feature shards: written from an export's vision encoder, read back as sample/batch ``features``."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from conftest import TINY_TEST_CONFIG, make_image, make_record, png_bytes

from mmreason.build import create_model
from mmreason.cli import main
from mmreason.data.features import write_feature_shards
from mmreason.data.shards import SKIPPED, collate, decode_sample, eval_stream, resolve_shards
from mmreason.data.writer import ShardSetWriter, read_sizes
from mmreason.export import save_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("baseline-tiny", **TINY_TEST_CONFIG).eval()
    return model, save_export(model, tmp_path_factory.mktemp("enc") / "export")


@pytest.fixture
def src(tmp_path):
    """train: shards of 3 and 2 samples; val: one good sample and one undecodable image."""
    with ShardSetWriter(tmp_path / "src", "train", samples_per_shard=3) as writer:
        for i in range(5):
            writer.write(f"t{i}", make_image(i), make_record(i))
    with ShardSetWriter(tmp_path / "src", "val") as writer:
        writer.write("v0", make_image(5), make_record(5))
        writer.write("broken", b"\xff\xd8\xff\xe0garbage", make_record(6))
    return tmp_path / "src"


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@torch.no_grad()
def _expected(model, indices) -> torch.Tensor:
    return model.vision(torch.stack([model.preprocess(make_image(i)) for i in indices]))


def test_feature_shards_keep_every_member_and_hold_the_encoders_features(export, src, tmp_path):
    model, folder = export
    SKIPPED.take()
    report = write_feature_shards(str(folder), str(src), str(tmp_path / "out"), batch_size=2, progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in src.glob("*.tar"))
    assert read_sizes(out) == {"train-000000.tar": 3, "train-000001.tar": 2, "val-000000.tar": 1}
    assert report["counts"] == {"train": 5, "val": 1} and report["skipped"] == {"train": 0, "val": 1}
    assert SKIPPED.take() == 1
    tokens, dim = _expected(model, [0]).shape[1:]
    info = json.loads((out / "features.json").read_text())
    assert info == {k: report[k] for k in info}
    assert (info["tokens"], info["dim"], info["dtype"]) == (tokens, dim, "float16")
    assert info["encoder"] == str(folder.resolve()) and info["family"] == "baseline"
    assert info["preprocess"] == model.preprocess.to_dict()

    before, after = _members(src / "train-000000.tar"), _members(out / "train-000000.tar")
    assert {k: v for k, v in after.items() if not k.endswith(".features.npy")} == before
    assert sorted(k for k in after if k.endswith(".features.npy")) == ["t0.features.npy", "t1.features.npy",
                                                                          "t2.features.npy"]

    batches = list(eval_stream(resolve_shards(str(out), "train"), model.preprocess, batch_size=4)[0])
    assert [b["keys"] for b in batches] == [["t0", "t1", "t2", "t3"], ["t4"]]
    assert batches[0]["features"].shape == (4, tokens, dim) and batches[0]["features"].dtype == torch.float32
    features = torch.cat([b["features"] for b in batches])
    expected = _expected(model, range(5))
    # float16 keeps 11 significant bits: relative error <= 2**-11 plus float32 batch-size noise
    torch.testing.assert_close(features, expected, rtol=2e-3, atol=1e-4)


def test_features_are_optional_and_a_corrupt_member_is_skipped_and_counted(export, tmp_path, caplog):
    model, _ = export
    pre = model.preprocess
    good = {"__key__": "a", "png": png_bytes(make_image(0)), "json": json.dumps(make_record(0)).encode()}
    plain = decode_sample(good, pre)
    assert plain["features"] is None and "features" not in collate([plain])
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4), dtype=np.float16))
    with_features = decode_sample({**good, "features.npy": buf.getvalue()}, pre)
    assert "features" not in collate([plain, with_features])
    assert collate([with_features, with_features])["features"].shape == (2, 3, 4)

    with tarfile.open(tmp_path / "f-000000.tar", "w") as tar:
        for key, features in (("ok", buf.getvalue()), ("bad", b"not an npy file")):
            for ext, data in (("png", good["png"]), ("json", good["json"]), ("features.npy", features)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    SKIPPED.take()
    with caplog.at_level("WARNING"):
        batches = list(eval_stream([str(tmp_path / "f-000000.tar")], pre, batch_size=4)[0])
    assert [b["keys"] for b in batches] == [["ok"]] and batches[0]["features"].shape == (1, 3, 4)
    assert sum(b["skipped"] for b in batches) + SKIPPED.take() == 1
    assert any("bad" in r.message and "unreadable features.npy" in r.message for r in caplog.records)


def test_cli_writes_feature_shards_and_names_a_missing_encoder(export, src, tmp_path, capsys):
    _, folder = export
    main(["data", "features", "--encoder", str(folder), "--data", str(src), "--out", str(tmp_path / "out"),
          "--splits", "train", "test", "--batch-size", "4"])
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"train": 5} and (tmp_path / "out" / "train-000001.tar").is_file()
    assert not (tmp_path / "out" / "val-000000.tar").exists()
    missing = tmp_path / "no-such-export"
    with pytest.raises(SystemExit) as stopped:  # the command's one-line error, exit status 2
        main(["data", "features", "--encoder", str(missing), "--data", str(src), "--out", str(tmp_path / "o2")])
    assert stopped.value.code == 2 and "no-such-export' does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no shards of splits"):
        write_feature_shards(str(folder), str(src), str(tmp_path / "o3"), splits=("heldout",), progress=False)


def test_a_model_on_a_frozen_exported_encoder_trains_on_cached_features_as_on_images(export, src, tmp_path):
    from test_mccot import MCCOT_TEST_CONFIG

    from mmreason.export import load_export
    from mmreason.training.mccot import MCCoTModule

    encoder, folder = export
    write_feature_shards(str(folder), str(src), str(tmp_path / "feat"), splits=("train",), progress=False)
    config = {**MCCOT_TEST_CONFIG, "preprocess": {"image_size": 48}}
    module = MCCoTModule(stage="rationale", model_config=config,
                         init={"from": str(folder), "parts": ["vision"], "frozen": ["vision"]})
    model = module.model.eval()
    assert model.preprocess.image_size == encoder.preprocess.image_size  # the encoder's, not the override
    torch.testing.assert_close(model.vision.state_dict(), encoder.vision.state_dict())
    assert not any(p.requires_grad for p in model.vision.parameters())

    batch = next(iter(eval_stream(resolve_shards(str(tmp_path / "feat"), "train"), model.preprocess, 5)[0]))
    cached = module.on_after_batch_transfer(dict(batch))
    assert cached["images"].dim() == 3 and "pixels" not in cached
    online = module.on_after_batch_transfer({k: v for k, v in batch.items() if k != "features"})
    assert online["images"].dim() == 4
    with torch.no_grad():
        from_features = model.batch_loss(cached["images"], batch["records"])["loss"]
        from_images = model.batch_loss(online["images"], batch["records"])["loss"]
    torch.testing.assert_close(from_features, from_images, rtol=1e-3, atol=1e-3)

    save_export(model, tmp_path / "mccot")
    assert "init" not in json.loads((tmp_path / "mccot" / "config.json").read_text())["config"]
    reloaded = load_export(tmp_path / "mccot")
    torch.testing.assert_close(reloaded.vision.state_dict(), encoder.vision.state_dict())


def test_sample_keys_that_are_paths_are_skipped_and_counted_never_copied(export, tmp_path, caplog):
    _, folder = export
    good = {"png": png_bytes(make_image(0)), "json": json.dumps(make_record(0)).encode()}
    (tmp_path / "src").mkdir()
    with tarfile.open(tmp_path / "src" / "train-000000.tar", "w") as tar:
        for key in ("ok", "../../evil", "/abs/evil"):
            for ext, data in good.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    SKIPPED.take()
    with caplog.at_level("WARNING"):
        report = write_feature_shards(str(folder), str(tmp_path / "src"), str(tmp_path / "out"), splits=("train",),
                                      progress=False)
    assert report["counts"] == {"train": 1} and report["skipped"] == {"train": 2} and SKIPPED.take() == 2
    assert sorted(_members(tmp_path / "out" / "train-000000.tar")) == ["ok.features.npy", "ok.json", "ok.png"]
    assert sum("evil" in r.message and "not a plain file name" in r.message for r in caplog.records) == 2
