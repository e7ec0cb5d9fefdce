"""Converters: round trips from each source format to shards read back with plain tarfile."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmreason.data.convert import CONVERTERS, ConversionError, convert
from mmreason.data.convert.jsonl import count_lines

ANSWER_SPLIT = r"(?s)(?P<rationale>.*)\n*The answer is:? *(?P<answer>.+)$"


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def gradient(mode: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    xs, ys = np.meshgrid(np.arange(w) * 255 // w, np.arange(h) * 255 // h)
    rgb = np.stack([xs, ys, np.full((h, w), 90)], -1)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


@pytest.fixture()
def pictures(tmp_path: Path) -> Path:
    """Images in every mode a user may hand in, under tmp_path/imgs."""
    root = tmp_path / "imgs"
    save(root / "rgb.png", gradient("RGB", (40, 30)))
    save(root / "rgba.png", gradient("RGBA", (20, 10)))
    save(root / "gray.png", gradient("L", (16, 16)))
    save(root / "pal.png", gradient("P", (12, 8)))
    save(root / "cmyk.jpg", gradient("CMYK", (24, 24)))
    save(root / "deep.png", Image.fromarray(np.array([[0, 257 * 128, 65535]] * 5, dtype=np.uint16)))
    save(root / "large.jpg", gradient("RGB", (1000, 800)), quality=80)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after")
    return root


def read_shards(out: Path, prefix: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob(f"{prefix}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def record(sample: dict[str, bytes]) -> dict:
    return json.loads(sample["json"])


def picture(sample: dict[str, bytes]) -> Image.Image:
    ext = "jpg" if "jpg" in sample else "png"
    return Image.open(io.BytesIO(sample[ext]))


def mask(sample: dict[str, bytes]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample["mask.png"])))


def check_report(out: Path, report: dict, written: int, skipped: dict, per_shard: int) -> None:
    sizes = json.loads((out / "sizes.json").read_text())
    assert report["written"] == written == sum(sizes.values())
    assert report["skipped"] == skipped
    assert sorted(report["shards"]) == sorted(sizes)
    assert len(report["shards"]) == sum(math.ceil(n / per_shard) for n in report["splits"].values())


def canonical(question, answer, task="vqa", choices=None, rationale=None, steps=(), meta=None,
              turns=()) -> dict:
    out = {"question": question, "answer": answer, "task": task, "choices": choices, "rationale": rationale,
           "steps": list(steps), "meta": meta or {}}
    return {**out, "turns": list(turns)} if turns else out


# --- llava -------------------------------------------------------------------------------------------


def llava_items() -> list:
    def chat(*turns):
        return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]

    return [
        {"id": "a", "image": "imgs/rgb.png",
         "conversations": chat("<image>\nWhat colour is it?", "It is red.\nThe answer is: red", "And the size?", "small")},
        {"id": "b", "image": "imgs/rgba.png", "conversations": chat("Describe <image> please", "A square.")},
        {"id": "c", "conversations": chat("Hello?", "Hi.")},
        {"id": "d", "image": "imgs/cmyk.jpg", "conversations": chat("<image>\nCMYK?", "yes")},
        {"id": "e", "image": "imgs/deep.png", "conversations": chat("<image>\nDeep?", "yes")},
        {"id": "f.1", "image": "imgs/large.jpg", "conversations": chat("Large?\n<image>", "yes")},
        {"id": 7, "image": "imgs/gray.png", "conversations": chat("<image>\nGray?", "yes")},
        {"id": "h", "image": "imgs/pal.png", "conversations": chat("<image>\nPalette?", "yes")},
    ]


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_llava_round_trip(tmp_path, pictures):
    src = write_json(tmp_path / "llava.json", llava_items())
    out = tmp_path / "out"
    report = convert("llava", src, out, samples_per_shard=3, answer_split=ANSWER_SPLIT)
    check_report(out, report, written=7, skipped={"no_image": 1}, per_shard=3)
    assert report["splits"] == {"train": 7} and report["blank_images"] == 0 and report["skipped_records"] == []
    samples = read_shards(out, "train")
    assert sorted(samples) == ["7", "a", "b", "d", "e", "f_1", "h"]
    assert record(samples["a"]) == canonical(
        "And the size?", "small", meta={"source": "llava", "id": "a"},
        turns=[{"question": "What colour is it?", "answer": "red", "rationale": "It is red."}])
    assert record(samples["b"])["question"] == "Describe please"
    assert record(samples["f_1"])["question"] == "Large?"
    assert record(samples["7"])["meta"]["id"] == "7"
    # 8-bit JPEG/PNG pass through byte for byte; other modes become RGB PNG.
    assert samples["a"]["png"] == (pictures / "rgb.png").read_bytes()
    assert samples["f_1"]["jpg"] == (pictures / "large.jpg").read_bytes()
    expected_sizes = {"a": (40, 30), "b": (20, 10), "d": (24, 24), "e": (3, 5), "f_1": (1000, 800),
                      "7": (16, 16), "h": (12, 8)}
    for key, size in expected_sizes.items():
        assert picture(samples[key]).size == size
    cmyk = picture(samples["d"])
    assert "png" in samples["d"] and cmyk.mode == "RGB"
    assert np.asarray(picture(samples["e"]).convert("L"))[0].tolist() == [0, 128, 255]


def test_llava_text_only_blank(tmp_path, pictures):
    src = write_json(tmp_path / "llava.json", llava_items())
    out = tmp_path / "out"
    report = convert("llava", src, out, split="val", text_only="blank")
    check_report(out, report, written=8, skipped={}, per_shard=1000)
    assert report["blank_images"] == 1 and report["shards"] == ["val-000000.tar"]
    sample = read_shards(out, "val")["c"]
    assert record(sample) == canonical("Hello?", "Hi.", meta={"source": "llava", "id": "c", "no_image": True})
    blank = picture(sample)
    assert blank.size == (64, 64) and np.all(np.asarray(blank.convert("L")) == 255)


def test_llava_skips_unusable_images_and_names_them(tmp_path, pictures):
    jpeg = (pictures / "large.jpg").read_bytes()
    (pictures / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    chat = llava_items()[1]["conversations"]
    items = [*llava_items()[:2], {"id": "zz", "image": "imgs/nope.png", "conversations": chat},
             {"id": "cut", "image": "imgs/cut.jpg", "conversations": chat}]
    out = tmp_path / "out"
    report = convert("llava", write_json(tmp_path / "llava.json", items), out)
    check_report(out, report, written=2, skipped={"missing_image": 1, "truncated_image": 1}, per_shard=1000)
    assert sorted(read_shards(out, "train")) == ["a", "b"]
    named = {entry["reason"]: entry for entry in report["skipped_records"]}
    missing, truncated = named["missing_image"], named["truncated_image"]
    assert missing["file"].endswith("imgs/nope.png") and "'zz'" in missing["record"]
    assert truncated["file"].endswith("imgs/cut.jpg") and "'cut'" in truncated["record"]
    assert "truncated" in truncated["message"]
    listed = [json.loads(line) for line in (out / "train-skipped.jsonl").read_text().splitlines()]
    assert listed == report["skipped_records"]


def test_llava_strict_stops_at_missing_image(tmp_path, pictures):
    items = llava_items()[:1] + [{"id": "zz", "image": "imgs/nope.png", "conversations": llava_items()[1]["conversations"]}]
    with pytest.raises(ConversionError, match=r"'zz'.*imgs/nope\.png"):
        convert("llava", write_json(tmp_path / "llava.json", items), tmp_path / "out", strict=True)
    assert not list((tmp_path / "out").glob("*.tar"))


def test_cli_strict_prints_one_line(tmp_path, pictures, capsys):
    from mmreason.cli import main

    items = [{"id": "zz", "image": "imgs/nope.png", "conversations": llava_items()[1]["conversations"]}]
    src = write_json(tmp_path / "llava.json", items)
    with pytest.raises(SystemExit, match=r"^mmreason data convert: .*'zz'.*imgs/nope\.png[^\n]*$"):
        main(["data", "convert", "llava", str(src), "--out", str(tmp_path / "out"), "--strict"])
    main(["data", "convert", "llava", str(src), "--out", str(tmp_path / "out")])
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == {"missing_image": 1} and "nope.png" in report["skipped_records"][0]["file"]


@pytest.mark.parametrize("items, expected", [
    ([5], "index 0"),
    ([{"id": "q", "image": "imgs/rgb.png"}], "'q'.*conversations"),
    ([{"id": "r", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "?"}]}],
     r"'r'.*conversations\[0\]"),
])
def test_llava_bad_record(tmp_path, pictures, items, expected):
    with pytest.raises(ConversionError, match=expected):
        convert("llava", write_json(tmp_path / "llava.json", items), tmp_path / "out")


def test_unopenable_image_names_file(tmp_path, pictures):
    items = [{"id": "x", "image": "imgs/broken.png", "conversations": llava_items()[1]["conversations"]}]
    with pytest.raises(ConversionError, match=r"broken\.png"):
        convert("llava", write_json(tmp_path / "llava.json", items), tmp_path / "out", strict=True)
    report = convert("llava", write_json(tmp_path / "llava.json", items), tmp_path / "out")
    assert report["skipped"] == {"unreadable_image": 1} and report["written"] == 0


# --- jsonl -------------------------------------------------------------------------------------------


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_jsonl_round_trip(tmp_path, pictures):
    save(pictures / "mask01.png", Image.fromarray(np.pad(np.ones((3, 4), np.uint8), ((2, 11), (3, 9)))))
    full = {"id": "s1", "image": "rgb.png", "question": "Which?", "answer": "B", "choices": ["x", "y"],
            "task": "mcq", "rationale": "because", "steps": [{"text": "look", "box": [0, 0, 10, 10]}],
            "meta": {"k": 1}}
    seg = {"image": "gray.png", "mask": "mask01.png", "question": "Segment", "answer": "", "task": "seg"}
    src = write_lines(tmp_path / "data.jsonl", [full, "", seg])
    out = tmp_path / "out"
    report = convert("jsonl", src, out, images=pictures, split="val")
    check_report(out, report, written=2, skipped={}, per_shard=1000)
    samples = read_shards(out, "val")
    assert sorted(samples) == ["line0000003", "s1"]
    assert record(samples["s1"]) == canonical("Which?", "B", "mcq", ["x", "y"], "because",
                                              [{"text": "look", "box": [0.0, 0.0, 10.0, 10.0]}], {"k": 1})
    assert record(samples["line0000003"]) == canonical("Segment", "", "seg")
    expected = np.zeros((16, 16), np.uint8)
    expected[2:5, 3:7] = 255
    assert np.array_equal(mask(samples["line0000003"]), expected)
    assert "mask.png" not in samples["s1"]


def test_jsonl_bad_line_names_line(tmp_path, pictures):
    good = {"image": "rgb.png", "question": "Q", "answer": "A"}
    src = write_lines(tmp_path / "data.jsonl", [good, good, "{not json"])
    with pytest.raises(ConversionError, match="line 3"):
        convert("jsonl", src, tmp_path / "out", images=pictures)


def test_jsonl_skips_missing_mask_and_broken_image(tmp_path, pictures):
    good = {"image": "rgb.png", "question": "Q", "answer": "A"}
    lines = [good, {**good, "mask": "gone.png"}, {**good, "image": "broken.png"}]
    src = write_lines(tmp_path / "data.jsonl", lines)
    out = tmp_path / "out"
    report = convert("jsonl", src, out, images=pictures)
    check_report(out, report, written=1, skipped={"missing_mask": 1, "unreadable_image": 1}, per_shard=1000)
    assert [(e["reason"], Path(e["file"]).name) for e in report["skipped_records"]] == [
        ("missing_mask", "gone.png"), ("unreadable_image", "broken.png")]
    first, second = report["skipped_records"]
    assert "line 2" in first["record"] and "line 3" in second["record"]


@pytest.mark.parametrize("text, lines", [("", 0), ("a\n", 1), ("a\nb", 2), ("a\n\nb\n", 3)])
def test_progress_total_counts_lines(tmp_path, text, lines):
    (tmp_path / "data.jsonl").write_text(text)
    assert count_lines(tmp_path / "data.jsonl") == lines


@pytest.mark.parametrize("bad, field", [
    ({"answer": 3}, "'answer'"),
    ({"choices": "xy"}, "'choices'"),
    ({"steps": [{"text": "t", "box": [0, 0, 50, 10]}]}, r"'steps\[0\]\.box'"),
    ({"colour": "red"}, "colour"),
])
def test_jsonl_invalid_record_names_line_and_field(tmp_path, pictures, bad, field):
    good = {"image": "rgb.png", "question": "Q", "answer": "A"}
    src = write_lines(tmp_path / "data.jsonl", [good, {**good, **bad}])
    with pytest.raises(ConversionError, match=f"line 2.*{field}"):
        convert("jsonl", src, tmp_path / "out", images=pictures)


# --- scienceqa ---------------------------------------------------------------------------------------


def scienceqa_folder(root: Path) -> Path:
    def problem(question, choices, answer, split, image="image.png", hint="", lecture="", solution=""):
        return {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": image,
                "lecture": lecture, "solution": solution, "split": split, "subject": "natural science",
                "grade": "grade2"}

    problems = {
        "1": problem("Which is a mammal?", ["cat", "fish"], 0, "train", lecture="Mammals have fur.",
                     solution="A cat has fur."),
        "2": problem("What is 2+2?", ["3", "4", "5"], 1, "train", image=None, hint="Count carefully."),
        "3": problem("Which is grey?", ["this", "that"], 1, "val"),
        "4": problem("Which is tall?", ["a", "b"], 0, "test", solution=" Tall. "),
    }
    root.mkdir()
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"train": ["1", "2"], "val": ["3"], "test": ["4"], "minival": ["3"],
                                          "trainval": ["1", "2", "3"]})
    save(root / "images/train/1/image.png", gradient("RGB", (40, 30)))
    save(root / "val/3/image.png", gradient("L", (16, 16)))  # unpacked without the images/ level
    save(root / "images/test/4/image.png", gradient("RGBA", (20, 10)))
    return root


def test_scienceqa_round_trip(tmp_path):
    src, out = scienceqa_folder(tmp_path / "sqa"), tmp_path / "out"
    report = convert("scienceqa", src, out, samples_per_shard=1)
    check_report(out, report, written=5, skipped={}, per_shard=1)
    assert report["splits"] == {"train": 2, "val": 1, "test": 1, "minival": 1} and report["blank_images"] == 1
    train = read_shards(out, "train")
    meta = {"source": "scienceqa", "subject": "natural science", "grade": "grade2"}
    assert record(train["1"]) == canonical("Which is a mammal?", "A", "mcq", ["cat", "fish"],
                                           "Mammals have fur.\nA cat has fur.", meta={**meta, "qid": "1", "hint": ""})
    assert record(train["2"]) == canonical("What is 2+2?\nContext: Count carefully.", "B", "mcq", ["3", "4", "5"],
                                           meta={**meta, "qid": "2", "hint": "Count carefully.", "no_image": True})
    assert picture(train["1"]).size == (40, 30)
    assert picture(train["2"]).size == (224, 224)
    assert record(read_shards(out, "test")["4"])["rationale"] == "Tall."
    for split in ("val", "minival"):
        (sample,) = read_shards(out, split).values()
        assert record(sample)["answer"] == "B" and picture(sample).size == (16, 16)


def test_scienceqa_skip_image_less(tmp_path):
    src, out = scienceqa_folder(tmp_path / "sqa"), tmp_path / "out"
    report = convert("scienceqa", src, out, no_image="skip", splits="train,trainval")
    check_report(out, report, written=3, skipped={"no_image": 2}, per_shard=1000)
    assert report["splits"] == {"train": 1, "trainval": 2} and report["blank_images"] == 0


def test_scienceqa_missing_qid(tmp_path):
    src = scienceqa_folder(tmp_path / "sqa")
    write_json(src / "pid_splits.json", {"train": ["1", "99"]})
    with pytest.raises(ConversionError, match="'99'"):
        convert("scienceqa", src, tmp_path / "out")


# --- reasonseg ---------------------------------------------------------------------------------------


def test_reasonseg_round_trip(tmp_path):
    src = tmp_path / "reason"
    rect = [[10, 20], [30, 20], [30, 40], [10, 40]]
    hole = [[12, 22], [14, 22], [14, 24], [12, 24]]
    save(src / "room.jpg", gradient("RGB", (60, 50)))
    write_json(src / "room.json", {"text": ["Where would you sit?", "What is for sitting?"], "is_sentence": True,
                                   "shapes": [{"label": "target", "points": rect, "shape_type": "polygon"},
                                              {"label": "ignore", "points": hole, "shape_type": "polygon"},
                                              {"label": "flag", "points": [[0, 0], [5, 0], [5, 5]]}]})
    save(src / "edge.png", gradient("RGB", (40, 30)))
    write_json(src / "edge.json", {"text": "Find it", "is_sentence": False,
                                   "shapes": [{"label": "target", "points": [[-5, -5], [20, -5], [20, 10], [-5, 10]]}]})
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated to portrait
    save(src / "rot.jpg", gradient("RGB", (40, 20)), exif=exif)
    write_json(src / "rot.json", {"text": ["Top?"], "shapes": [{"label": "target", "points": [[0, 0], [19, 0], [19, 9]]}]})
    save(src / "lonely.jpg", gradient("RGB", (8, 8)))
    write_json(src / "orphan.json", {"text": ["?"], "shapes": []})
    out = tmp_path / "out"
    report = convert("reasonseg", src, out, split="val")
    check_report(out, report, written=3, skipped={"unpaired": 2}, per_shard=1000)
    samples = read_shards(out, "val")
    assert record(samples["room"]) == canonical(
        "Where would you sit?", "", "seg", steps=[{"text": "the target region", "box": [10.0, 20.0, 30.0, 40.0]}],
        meta={"source": "reasonseg", "name": "room", "questions": ["What is for sitting?"], "is_sentence": True,
              "ignore_polygons": [[[float(x), float(y)] for x, y in hole]]})
    expected = np.zeros((50, 60), np.uint8)
    expected[20:41, 10:31] = 255  # the rectangle, edges included
    expected[22:25, 12:15] = 0  # the smaller ignore polygon painted over it
    assert np.array_equal(mask(samples["room"]), expected)
    assert samples["room"]["jpg"] == (src / "room.jpg").read_bytes()
    edge = samples["edge"]
    assert record(edge)["steps"][0]["box"] == [0.0, 0.0, 20.0, 10.0] and record(edge)["meta"]["questions"] == []
    expected = np.zeros((30, 40), np.uint8)
    expected[0:11, 0:21] = 255
    assert np.array_equal(mask(edge), expected)
    assert picture(samples["rot"]).size == (20, 40) and mask(samples["rot"]).shape == (40, 20)


def test_reasonseg_skips_unreadable_annotation_and_image(tmp_path):
    src = tmp_path / "reason"
    shape = {"label": "target", "points": [[1, 1], [6, 1], [6, 6]]}
    for name in ("ok", "bad_json", "bad_image"):
        save(src / f"{name}.jpg", gradient("RGB", (8, 8)))
        write_json(src / f"{name}.json", {"text": ["Where?"], "shapes": [shape]})
    (src / "bad_json.json").write_text("{not json")
    (src / "bad_image.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    report = convert("reasonseg", src, out)
    check_report(out, report, written=1, skipped={"unreadable_json": 1, "unreadable_image": 1}, per_shard=1000)
    assert sorted(Path(e["file"]).name for e in report["skipped_records"]) == ["bad_image.jpg", "bad_json.json"]


# --- the entry point ---------------------------------------------------------------------------------


def test_unknown_format_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown data format") as err:
        convert("coco", tmp_path, tmp_path / "out")
    assert all(name in str(err.value) for name in CONVERTERS)


def test_unknown_option_lists_valid_ones(tmp_path, pictures):
    with pytest.raises(ValueError, match="text_only"):
        convert("llava", write_json(tmp_path / "llava.json", []), tmp_path / "out", colour="red")


def test_refuses_to_mix_with_existing_shards(tmp_path, pictures):
    src = write_json(tmp_path / "llava.json", llava_items()[:1])
    convert("llava", src, tmp_path / "out")
    with pytest.raises(ConversionError, match="already holds 'train' shards"):
        convert("llava", src, tmp_path / "out")
    assert convert("llava", src, tmp_path / "out", split="val")["written"] == 1
