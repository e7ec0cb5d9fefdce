"""The synthetic benchmark: answers follow from the scene graph, pixels match boxes and
masks, answers are balanced, held-out pairs stay held out, and shards resume safely.

Answers are re-derived here from ``meta.scene`` and the question text by code
independent of the generator.
"""

import io
import json
import math
import re
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmreason.data.scenes import COLOURS, SHAPES
from mmreason.data.schema import validate_record
from mmreason.data.synth import (
    ALL_TASKS,
    HELDOUT_PAIRS,
    SynthConfig,
    make_sample,
    vocabulary,
)
from mmreason.data.synth_shards import answer_report, synthesize

PER_TASK = 600
SIZE_WORDS = ("small", "large")


@pytest.fixture(scope="module")
def train_samples():
    config = SynthConfig()
    return [make_sample(config, "train", i) for i in range(PER_TASK * len(ALL_TASKS))]


@pytest.fixture(scope="module")
def heldout_samples():
    config = SynthConfig(noise=True, seed=3)
    return [make_sample(config, "heldout", i) for i in range(50 * len(ALL_TASKS))]


@pytest.fixture(scope="module")
def long_samples():
    configs = [SynthConfig(rationale_style="long"), SynthConfig(rationale_style="long", max_objects=2),
               SynthConfig(rationale_style="long", min_objects=7, noise=True)]
    return [make_sample(c, split, i) for c in configs for split in ("val", "test", "heldout")
            for i in range(48)]


# --- an independent solver over the scene graph -------------------------------------------------


def find(scene, colour=None, shape=None, size=None):
    return [o for o in scene if (colour is None or o["colour"] == colour)
            and (shape is None or o["shape"] == shape) and (size is None or o["size"] == size)]


def the_one(scene, **criteria):
    found = find(scene, **criteria)
    assert len(found) == 1, f"{criteria} names {len(found)} objects, expected exactly one"
    return found[0]


def singular(word):
    return word[:-2] if word.endswith("sses") else word[:-1]


def noun_criteria(noun):
    """'red shapes' / 'circles' / 'small shapes' / 'red circles' -> find() keywords."""
    criteria = {}
    for word in noun.split():
        if word in COLOURS:
            criteria["colour"] = word
        elif word in SIZE_WORDS:
            criteria["size"] = word
        elif word != "shapes":
            criteria["shape"] = singular(word)
    return criteria


def dist(a, b):
    return math.hypot(a["center"][0] - b["center"][0], a["center"][1] - b["center"][1])


def nearest(scene, ref):
    ranked = sorted((o for o in scene if o is not ref), key=lambda o: dist(o, ref))
    if len(ranked) > 1:
        assert dist(ranked[0], ref) < dist(ranked[1], ref), "nearest object is a tie"
    return ranked[0]


def phrase(obj):
    return f"the {obj['size']} {obj['colour']} {obj['shape']}"


def solve(question, scene):
    """(expected answer text, target object or None) for a question about a scene."""
    q = question.lower()
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
        return ("yes" if find(scene, m[1], m[2]) else "no"), None
    if m := re.fullmatch(r"how many (.+) are there\?", q):
        return str(len(find(scene, **noun_criteria(m[1])))), None
    if m := re.fullmatch(r"are there more (.+) than (.+)\?", q):
        more = len(find(scene, **noun_criteria(m[1]))) > len(find(scene, **noun_criteria(m[2])))
        return ("yes" if more else "no"), None
    if m := re.fullmatch(r"what colour is the (small|large) (\w+)\?", q):
        target = the_one(scene, size=m[1], shape=m[2])
        return target["colour"], target
    if m := re.fullmatch(r"what shape is the (small|large) (\w+) object\?", q):
        target = the_one(scene, size=m[1], colour=m[2])
        return target["shape"], target
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", q):
        target = the_one(scene, colour=m[1], shape=m[2])
        return target["size"], target
    if m := re.fullmatch(r"where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", q):
        a, b = the_one(scene, colour=m[1], shape=m[2]), the_one(scene, colour=m[3], shape=m[4])
        dx, dy = a["center"][0] - b["center"][0], a["center"][1] - b["center"][1]
        assert max(abs(dx), abs(dy)) >= 1.5 * min(abs(dx), abs(dy)), "relation axis is ambiguous"
        if abs(dx) > abs(dy):
            return ("left" if dx < 0 else "right"), None
        return ("above" if dy < 0 else "below"), None
    if m := re.fullmatch(r"what (colour|shape) is the (?:shape|object) closest to the (\w+) (\w+)\?", q):
        target = nearest(scene, the_one(scene, colour=m[2], shape=m[3]))
        return target[m[1]], target
    if m := re.fullmatch(r"segment the other shape with the same colour as the (small|large) (\w+)\.", q):
        ref = the_one(scene, size=m[1], shape=m[2])
        others = [o for o in find(scene, colour=ref["colour"]) if o is not ref]
        assert len(others) == 1, "the same-colour target is not unique"
        return phrase(others[0]), others[0]
    if m := re.fullmatch(r"segment the other object with the same shape as the (\w+) (\w+)\.", q):
        ref = the_one(scene, colour=m[1], shape=m[2])
        others = [o for o in find(scene, shape=ref["shape"]) if o is not ref]
        assert len(others) == 1, "the same-shape target is not unique"
        return phrase(others[0]), others[0]
    if m := re.fullmatch(r"segment the shape closest to the (\w+) (\w+)\.", q):
        target = nearest(scene, the_one(scene, colour=m[1], shape=m[2]))
        return phrase(target), target
    if m := re.fullmatch(r"segment the (\w+) (\w+)\.", q):
        target = the_one(scene, colour=m[1], shape=m[2])
        return phrase(target), target
    raise AssertionError(f"question not understood: {question!r}")


def check_sample(key, record, image_size=64):
    validate_record(record, key, image_size=(image_size, image_size))
    scene = record["meta"]["scene"]
    assert 2 <= len(scene) <= 7
    expected, target = solve(record["question"], scene)
    if record["task"] == "mcq":
        choices = record["choices"]
        assert 2 <= len(choices) <= 5 and len(set(choices)) == len(choices)
        assert re.fullmatch(r"[A-E]", record["answer"])
        assert choices[ord(record["answer"]) - ord("A")] == expected, key
    else:
        assert record["choices"] is None
        assert record["answer"] == expected, (key, record["question"], record["answer"], expected)
    boxes = [o["box"] for o in scene]
    assert all(step["box"] is None or step["box"] in boxes for step in record["steps"])
    if target is not None:
        assert record["steps"][-1]["box"] == target["box"]
    if record["task"] in ("count", "exist", "compare", "relation"):
        assert len(record["steps"]) >= 2


# --- tests -------------------------------------------------------------------------------------


def test_every_answer_follows_from_the_scene(train_samples, heldout_samples, long_samples):
    for key, _, record, _ in train_samples + heldout_samples + long_samples:
        check_sample(key, record)


def test_tasks_take_turns_and_only_seg_has_a_mask(train_samples):
    assert Counter(r["task"] for _, _, r, _ in train_samples) == {t: PER_TASK for t in ALL_TASKS}
    assert all((mask is not None) == (r["task"] == "seg") for _, _, r, mask in train_samples)


def test_same_seed_same_bytes_other_seed_other_sample():
    a, b, c = SynthConfig(noise=True), SynthConfig(noise=True), SynthConfig(noise=True, seed=1)
    for i in range(16):
        _, img1, rec1, mask1 = make_sample(a, "train", i)
        _, img2, rec2, mask2 = make_sample(b, "train", i)
        _, img3, rec3, _ = make_sample(c, "train", i)
        assert img1.tobytes() == img2.tobytes() and json.dumps(rec1) == json.dumps(rec2)
        assert (mask1 is None and mask2 is None) or mask1.tobytes() == mask2.tobytes()
        assert img1.tobytes() != img3.tobytes() and rec1["meta"]["scene"] != rec3["meta"]["scene"]
        assert make_sample(a, "val", i)[1].tobytes() != img1.tobytes()


@pytest.mark.parametrize("image_size", [64, 96])
def test_boxes_bound_their_pixels_and_masks_are_the_target(image_size):
    config = SynthConfig(image_size=image_size, noise=True, seed=7)
    for i in range(120):
        key, image, record, mask = make_sample(config, "test", i)
        pixels = np.asarray(image)
        assert image.mode == "RGB" and image.size == (image_size, image_size)
        for obj in record["meta"]["scene"]:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
            painted = np.all(pixels == COLOURS[obj["colour"]], axis=-1)
            # one pixel around the box holds no pixel of this object's colour: boxes keep a gap
            ys, xs = np.nonzero(painted[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1])
            ox, oy = max(0, x0 - 1), max(0, y0 - 1)
            assert [xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1] == obj["box"], key
        if mask is None:
            continue
        assert mask.mode == "L" and mask.size == image.size
        m = np.asarray(mask)
        assert set(np.unique(m)) <= {0, 255}
        target = next(o for o in record["meta"]["scene"] if o["box"] == record["steps"][-1]["box"])
        x0, y0, x1, y1 = target["box"]
        inside = np.zeros_like(m, bool)
        inside[y0:y1, x0:x1] = True
        painted = np.all(pixels == COLOURS[target["colour"]], axis=-1)
        assert (m > 0).sum() > 0
        assert np.array_equal(m > 0, painted & inside), key


def test_answers_are_balanced(train_samples):
    report = answer_report(r for _, _, r, _ in train_samples)
    for task in ("exist", "compare"):
        assert 0.4 <= report[task]["answers"]["yes"] / PER_TASK <= 0.6, report[task]
    count = report["count"]
    assert len(count["answers"]) >= 7 and count["majority_accuracy"] <= 0.2, count
    assert set(count["answers"]) <= {str(k) for k in range(8)}
    for task, n_answers in (("mcq", 4), ("relation", 4)):
        shares = [v / PER_TASK for v in report[task]["answers"].values()]
        assert len(shares) == n_answers and min(shares) >= 0.15 and max(shares) <= 0.35, report[task]
    attribute = report["attribute"]["answers"]
    assert set(attribute) == set(COLOURS) | set(SHAPES) | set(SIZE_WORDS)
    assert report["attribute"]["majority_accuracy"] <= 0.15
    assert set(report["multihop"]["answers"]) == set(COLOURS) | set(SHAPES)
    assert report["multihop"]["majority_accuracy"] <= 0.16
    seg_colours = Counter(r["answer"].split()[2] for _, _, r, _ in train_samples if r["task"] == "seg")
    assert set(seg_colours) == set(COLOURS) and max(seg_colours.values()) / PER_TASK <= 0.3


def names_heldout_pair(question):
    q = question.lower()
    return any(re.search(rf"\b{c} {s}(e?s)?\b", q) for c, s in HELDOUT_PAIRS)


def test_heldout_pairs_only_in_heldout_questions(train_samples, heldout_samples, long_samples):
    for _, _, record, _ in train_samples + long_samples:
        split = record["meta"]["split"]
        assert names_heldout_pair(record["question"]) == (split == "heldout"), record["question"]
    assert all(names_heldout_pair(r["question"]) for _, _, r, _ in heldout_samples)
    assert {r["task"] for _, _, r, _ in heldout_samples} == set(ALL_TASKS)
    singled_out = [r for _, _, r, _ in train_samples if r["task"] in ("attribute", "multihop", "seg")]
    for record in singled_out:
        target = next(o for o in record["meta"]["scene"] if o["box"] == record["steps"][-1]["box"])
        assert (target["colour"], target["shape"]) not in HELDOUT_PAIRS, record["question"]


def test_long_rationales_describe_the_scene_in_100_to_400_words(long_samples):
    for _, _, record, _ in long_samples:
        words = len(record["rationale"].split())
        assert 100 <= words <= 400, (words, record["rationale"])
        for i, obj in enumerate(record["meta"]["scene"], 1):
            assert f"Object {i} is a {obj['size']} {obj['colour']} {obj['shape']}" in record["rationale"]


def test_vocabulary_covers_every_generated_token(train_samples, heldout_samples, long_samples):
    vocab = set(vocabulary())
    assert len(vocab) < 150
    seen = set()
    for _, _, r, _ in train_samples + heldout_samples + long_samples:
        texts = [r["question"], r["answer"], r["rationale"], *(r["choices"] or []),
                 *(s["text"] for s in r["steps"])]
        for text in texts:
            seen.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    assert seen <= vocab, sorted(seen - vocab)


def test_answer_report_counts_and_majority():
    records = [{"task": "exist", "answer": a} for a in ("yes", "yes", "no")] + [{"task": "count", "answer": "3"}]
    report = answer_report(records)
    assert report["exist"] == {"n": 3, "answers": {"no": 1, "yes": 2}, "majority_accuracy": round(2 / 3, 4)}
    assert report["count"]["majority_accuracy"] == 1.0


@pytest.mark.parametrize("bad, message", [
    ({"tasks": ("exist", "colour")}, "colour"),
    ({"rationale_style": "verbose"}, "verbose"),
    ({"min_objects": 5, "max_objects": 3}, "max_objects"),
])
def test_config_rejects_unknown_values(bad, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**bad)


def read_shard(path):
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.split(".")[0] for name in files})
    return keys, files


def test_synthesize_writes_shards_and_resumes(tmp_path):
    out = tmp_path / "synth"
    config = SynthConfig(seed=5)
    counts = {"train": 40, "heldout": 8}
    report = synthesize(out, counts, config, samples_per_shard=16, progress=False)

    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"heldout-000000.tar": 8, "train-000000.tar": 16, "train-000001.tar": 16,
                     "train-000002.tar": 8}
    assert json.loads((out / "report.json").read_text()) == report
    assert sum(t["n"] for t in report["train"].values()) == 40 and report["samples_per_second"] > 0
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["counts"] == counts and manifest["config"]["seed"] == 5

    keys, files = read_shard(out / "train-000001.tar")
    assert keys == [f"train-{i:07d}" for i in range(16, 32)]
    for key in keys:
        record = json.loads(files[f"{key}.json"])
        check_sample(key, record)
        assert Image.open(io.BytesIO(files[f"{key}.png"])).size == (64, 64)
        assert (f"{key}.mask.png" in files) == (record["task"] == "seg")

    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert synthesize(out, counts, config, samples_per_shard=16, progress=False) == report
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    (out / "train-000001.tar").unlink()
    synthesize(out, counts, config, samples_per_shard=16, progress=False)
    assert read_shard(out / "train-000001.tar")[1] == files
    assert (out / "train-000000.tar").stat().st_mtime_ns == stamps["train-000000.tar"]

    with pytest.raises(ValueError, match="different configuration"):
        synthesize(out, counts, SynthConfig(seed=6), samples_per_shard=16, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        synthesize(out, {"train": 41}, config, samples_per_shard=16, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="pick another --out"):
        synthesize(tmp_path / "other", counts, config, progress=False)
