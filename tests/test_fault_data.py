"""Hostile or broken source data: pixel bombs, bad boxes and polygons, failed runs, bad encodings, escaping paths."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile
from test_convert import gradient, mask, read_shards, record, save, scienceqa_folder, write_json, write_lines

from mmreason.data.convert import ConversionError, convert
from mmreason.data.preprocess import ImageTooLarge, Preprocess, decode_image
from mmreason.data.schema import RecordError, validate_record
from mmreason.data.writer import ShardSetWriter, read_sizes

LIMIT = "64,000,000"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG: a few kB on disk however many pixels it declares."""
    row, packer = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


@pytest.fixture()
def no_decoding(monkeypatch):
    """Make any pixel decoding fail the test: a bomb must be refused from its header alone."""
    def load(self):
        raise AssertionError(f"decoded a {self.size[0]}x{self.size[1]} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# --- pixel limit -------------------------------------------------------------------------------------


def test_importing_mmreason_leaves_pils_pixel_limit_alone():
    import mmreason  # noqa: F401
    import mmreason.data.convert  # noqa: F401
    import mmreason.data.preprocess  # noqa: F401

    fresh = subprocess.run([sys.executable, "-c", "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"],
                           capture_output=True, text=True, check=True)
    assert str(Image.MAX_IMAGE_PIXELS) == fresh.stdout.strip() != "None"


@pytest.mark.parametrize("side", [9000, 20000])  # over our limit; over PIL's own hard limit too
def test_preprocess_refuses_a_pixel_bomb_before_decoding(no_decoding, side):
    bomb = blank_png(side, side)
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge, match=LIMIT):
        Preprocess().open_rgb(bomb)
    with pytest.raises(ImageTooLarge, match=f"{side}x{side}" if side == 9000 else "pixels"):
        Preprocess()(bomb)  # what predict calls


def test_the_configured_limit_is_the_one_in_force_and_pil_stays_quiet(monkeypatch):
    small = blank_png(40, 40)
    with pytest.raises(ImageTooLarge, match=r"40x40 = 1,600 pixels exceeds the limit of 1,000"):
        Preprocess(max_pixels=1000).open_rgb(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a caller's own, stricter, PIL setting
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(small, max_pixels=10_000).size == (40, 40)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(ImageTooLarge, match="10,000 pixels"):  # PIL's hard refusal at twice its limit
        decode_image(blank_png(50, 50), max_pixels=10_000)


def test_converter_refuses_a_pixel_bomb_naming_file_size_and_limit(tmp_path, no_decoding):
    (tmp_path / "bomb.png").write_bytes(blank_png(9000, 9000))
    src = write_lines(tmp_path / "data.jsonl", [{"image": "bomb.png", "question": "Q", "answer": "A"}])
    with pytest.raises(ConversionError, match=rf"line 1.*bomb\.png.*9000x9000.*{LIMIT}"):
        convert("jsonl", src, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*"))


# --- boxes and polygons ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), pytest.param(10**400, id="10**400")])
def test_record_refuses_a_box_that_is_not_finite(bad):
    steps = [{"text": "look", "box": [0, 0, bad, 5]}]
    with pytest.raises(RecordError, match=r"'steps\[0\]\.box' must be .*finite"):
        validate_record({"question": "Q", "answer": "A", "steps": steps}, key="k")


def reasonseg(root: Path, shapes: list, size=(40, 30)) -> Path:
    save(root / "scene.png", gradient("RGB", size))
    (root / "scene.json").write_text(json.dumps({"text": ["Find it"], "shapes": shapes}))
    return root


def target(points, label="target") -> dict:
    return {"label": label, "points": points, "shape_type": "polygon"}


INSIDE = [[5, 5], [15, 5], [15, 15], [5, 15]]


@pytest.mark.parametrize("shapes, expected", [
    ([target([[0, 0], [float("nan"), 0], [5, 5]])], r"shapes\[0\] must be .*finite"),
    ([target(INSIDE), target([[50, 5], [60, 5], [60, 9]])], r"shapes\[1\] \('target'\) has no area inside the 40x30"),
    ([target([[-50, -50], [10, -50], [-50, 10]])], r"shapes\[0\] .*no area inside"),  # its box would clamp to 10x10
    ([target(INSIDE), target([[-9, 0], [-1, 0], [-1, 9]], "ignore")], r"shapes\[1\] \('ignore'\) has no area"),
    ([target([[5, 5], [10, 10], [15, 15]])], r"shapes\[0\] .*no area"),  # collinear
    ([target(INSIDE, "ignore")], "no target polygon"),
    ([target(INSIDE), target(INSIDE, "ignore")], "ignore polygons cover every target pixel"),
])
def test_reasonseg_refuses_polygons_that_give_no_target_naming_file_and_shape(tmp_path, shapes, expected):
    src = reasonseg(tmp_path / "rs", shapes)
    with pytest.raises(ConversionError, match=rf"scene\.json.*{expected}"):
        convert("reasonseg", src, tmp_path / "out")
    assert not (tmp_path / "out" / "sizes.json").exists()


def test_reasonseg_clips_a_polygon_over_the_border_and_boxes_what_is_inside(tmp_path):
    src = reasonseg(tmp_path / "rs", [target([[0, 10], [10, 10], [60, -40]])])
    convert("reasonseg", src, tmp_path / "out")
    (sample,) = read_shards(tmp_path / "out", "train").values()
    assert record(sample)["steps"][0]["box"] == pytest.approx([0.0, 0.0, 20.0, 10.0])  # not clamped to x1=40
    rows, cols = mask(sample).nonzero()
    assert cols.max() <= 20 and rows.max() <= 10 and rows.min() == 0


# --- a failed conversion leaves nothing --------------------------------------------------------------


def test_a_failed_conversion_leaves_no_shards_and_no_sizes(tmp_path):
    save(tmp_path / "a.png", gradient("RGB", (8, 8)))
    good = {"image": "a.png", "question": "Q", "answer": "A"}
    src = write_lines(tmp_path / "data.jsonl", [good] * 3 + [{**good, "image": "missing.png"}])
    out = tmp_path / "out"
    convert("jsonl", write_lines(tmp_path / "ok.jsonl", [good]), out, split="val")
    before = read_sizes(out)
    with pytest.raises(ConversionError, match="line 4.*missing.png"):
        convert("jsonl", src, out, samples_per_shard=1, strict=True)
    assert sorted(p.name for p in out.iterdir()) == ["sizes.json", "val-000000.tar"]
    assert read_sizes(out) == before == {"val-000000.tar": 1}


def test_a_failure_in_a_later_split_removes_the_earlier_ones(tmp_path):
    src = scienceqa_folder(tmp_path / "sqa")
    (src / "images/test/4/image.png").unlink()  # train and val are written before test fails
    with pytest.raises(ConversionError, match="'4'"):
        convert("scienceqa", src, tmp_path / "out", samples_per_shard=1, strict=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_shard_set_writer_publishes_on_close_only(tmp_path):
    with pytest.raises(RuntimeError), ShardSetWriter(tmp_path, "train", samples_per_shard=1) as writer:
        writer.write("a", gradient("RGB", (4, 4)), {"question": "Q", "answer": "A"})
        writer.write("b", gradient("RGB", (4, 4)), {"question": "Q", "answer": "A"})
        assert not list(tmp_path.glob("*.tar")) and read_sizes(tmp_path) == {}
        raise RuntimeError("the source broke")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"sample key '\.\./x' is not a plain file name"):
        ShardSetWriter(tmp_path, "train").write("../x", gradient("RGB", (4, 4)), {"question": "Q", "answer": "A"})


# --- encodings ---------------------------------------------------------------------------------------


def test_jsonl_not_utf8_names_file_and_line(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_bytes(b'{"image": "a.png", "question": "Q", "answer": "A"}\n{"image": "a.png", "question": "caf\xe9"}\n')
    save(tmp_path / "a.png", gradient("RGB", (8, 8)))
    with pytest.raises(ConversionError, match=r"data\.jsonl line 2: not UTF-8 .*0xe9.*expected a UTF-8"):
        convert("jsonl", src, tmp_path / "out")
    assert not (tmp_path / "out" / "sizes.json").exists()


def test_json_not_utf8_names_file_and_line(tmp_path):
    src = tmp_path / "llava.json"
    src.write_bytes(b'[\n {"id": "x", "conversations": [{"from": "human", "value": "caf\xe9"}]}\n]')
    with pytest.raises(ConversionError, match=r"llava\.json line 2: not UTF-8 .*0xe9.*expected a UTF-8"):
        convert("llava", src, tmp_path / "out")


# --- image paths stay inside the images folder -------------------------------------------------------


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """imgs/a.png inside the images folder and secret.png beside it, outside."""
    save(tmp_path / "imgs" / "a.png", gradient("RGB", (8, 8)))
    return save(tmp_path / "secret.png", gradient("RGB", (8, 8)))


@pytest.mark.parametrize("field", ["image", "mask"])
@pytest.mark.parametrize("escape", ["../secret.png", "sub/../../secret.png", "ABSOLUTE"])
def test_jsonl_refuses_paths_outside_the_images_folder(tmp_path, outside, field, escape):
    escape = str(outside) if escape == "ABSOLUTE" else escape
    line = {"image": "a.png", "question": "Q", "answer": "A", field: escape}
    src = write_lines(tmp_path / "data.jsonl", [line])
    with pytest.raises(ConversionError, match=r"line 1.*secret\.png.* must lie inside the images folder"):
        convert("jsonl", src, tmp_path / "out", images=tmp_path / "imgs")


def test_llava_refuses_an_absolute_image_path(tmp_path, outside):
    chat = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    src = write_json(tmp_path / "llava.json", [{"id": "x", "image": str(outside), "conversations": chat}])
    with pytest.raises(ConversionError, match=r"record 'x'.*secret\.png.* must lie inside the images folder"):
        convert("llava", src, tmp_path / "out", images=tmp_path / "imgs")


def test_scienceqa_refuses_an_image_name_that_climbs_out(tmp_path):
    src = scienceqa_folder(tmp_path / "sqa")
    problems = json.loads((src / "problems.json").read_text())
    problems["1"]["image"] = "../../../../secret.png"
    write_json(src / "problems.json", problems)
    save(tmp_path / "secret.png", gradient("RGB", (8, 8)))
    with pytest.raises(ConversionError, match=r"qid '1'.*secret\.png.* must lie inside the images folder"):
        convert("scienceqa", src, tmp_path / "out")


def test_a_link_the_user_put_in_the_images_folder_is_followed(tmp_path, outside):
    (tmp_path / "imgs" / "shared").symlink_to(outside.parent, target_is_directory=True)
    src = write_lines(tmp_path / "data.jsonl", [{"image": "shared/secret.png", "question": "Q", "answer": "A"}])
    assert convert("jsonl", src, tmp_path / "out", images=tmp_path / "imgs")["written"] == 1

