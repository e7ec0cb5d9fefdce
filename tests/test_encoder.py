"""The perception-pretrained encoder: dense targets, decoding, metrics, export, families starting from it."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_TEST_CONFIG, train_steps
from test_mccot import MCCOT_TEST_CONFIG
from test_meteor import TINY_METEOR
from test_star import STAR_TEST_CONFIG
from test_virl import VIRL_TEST_CONFIG

from mmreason.build import build_model
from mmreason.data import scenes
from mmreason.data.preprocess import Preprocess
from mmreason.data.scene_stream import SceneStream, random_scene
from mmreason.data.scene_targets import COLOUR_NAMES, IGNORE, SHAPE_NAMES, dense_targets, scenes_of
from mmreason.data.schema import Record
from mmreason.eval.perception import PerceptionReport, match_objects
from mmreason.export import load_export, save_export
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.encoder import SceneEncoder
from mmreason.models.meteor import Meteor
from mmreason.models.star import StarSegmenter
from mmreason.models.virl import VirlPolicy
from mmreason.zoo import merge_config

ENCODER_TEST_CONFIG = {"vision": TINY_TEST_CONFIG["vision"], "preprocess": {"image_size": 32}}


def _obj(colour, shape, size, x0, y0, image_size=32):
    side = scenes.sprite(shape, scenes.side_pixels(size, image_size)).shape
    return {"colour": colour, "shape": shape, "size": size, "box": [x0, y0, x0 + side[1], y0 + side[0]],
            "center": [x0 + side[1] / 2, y0 + side[0] / 2]}


def test_dense_targets_of_a_hand_made_scene():
    # 32 px, grid 4 (8 px cells): a large (7 px) red square at (8, 8) and a small (4 px) blue square at (24, 2)
    scene = [_obj("red", "square", "large", 8, 8), _obj("blue", "square", "small", 24, 2)]
    t = dense_targets(scene, 32, 4)
    assert t["centre"].sum() == 2 and t["centre"][1, 1] == 1 and t["centre"][0, 3] == 1
    assert t["colour"][1, 1] == COLOUR_NAMES.index("red") and t["shape"][1, 1] == SHAPE_NAMES.index("square")
    assert t["size"][1, 1] == 1 and t["size"][0, 3] == 0
    assert (t["colour"] == IGNORE).sum() == 14
    np.testing.assert_allclose(t["offset"][1, 1], [11.5 / 8 - 1, 11.5 / 8 - 1])
    np.testing.assert_allclose(t["offset"][0, 3], [26 / 8 - 3, 4 / 8])
    np.testing.assert_allclose(t["extent"][1, 1], [7 / 32, 7 / 32])
    background = len(COLOUR_NAMES)
    # the large square fills 49 of cell (1, 1)'s 64 pixels; the small one 16 of cell (0, 3)'s: both >= 25%
    assert t["cover_colour"][1, 1] == COLOUR_NAMES.index("red")
    assert t["cover_colour"][0, 3] == COLOUR_NAMES.index("blue")
    assert t["cover_shape"][0, 3] == SHAPE_NAMES.index("square")
    assert (t["cover_colour"] == background).sum() == 14 and (t["cover_shape"] == len(SHAPE_NAMES)).sum() == 14


def test_dense_targets_refuse_a_grid_that_does_not_tile_the_image():
    with pytest.raises(ValueError, match="not a multiple of the grid"):
        dense_targets([_obj("red", "square", "large", 8, 8)], 32, 5)


def test_scenes_of_names_a_record_without_a_scene_graph():
    records = [Record("q", "a", meta={"scene": [], "image_size": [32, 32]}), Record("q", "a")]
    with pytest.raises(ValueError, match="record 1 .* no meta.scene"):
        scenes_of({"records": records, "orig_sizes": [(32, 32)] * 2})


def test_scenes_of_refuses_a_scene_size_other_than_its_image():
    # a crafted record must not make the targets allocate for an image larger than the one decoded
    records = [Record("q", "a", meta={"scene": [], "image_size": [1_000_000, 1_000_000]})]
    with pytest.raises(ValueError, match=r"meta.image_size \[1000000, 1000000\]; expected .* \[32, 32\]"):
        scenes_of({"records": records, "orig_sizes": [(32, 32)]})
    ok = [Record("q", "a", meta={"scene": [], "image_size": [32, 32]})]
    assert scenes_of({"records": ok, "orig_sizes": [(32, 32)]}) == ([[]], 32)


def test_perception_report_on_a_hand_computed_case():
    truth = [_obj("red", "square", "large", 8, 8), _obj("blue", "circle", "small", 24, 2)]
    predicted = [
        {**truth[0]},  # exact
        {**truth[1], "shape": "square", "center": [26 + 3, 4], "box": [27, 2, 31, 6]},  # wrong shape, 3 px off
        {**truth[0], "center": [4, 28], "box": [1, 25, 8, 32]},  # nothing there
    ]
    report = PerceptionReport()
    report.add(predicted, truth)
    report.add([], [truth[0]])  # a missed object: wrong on every attribute
    summary = report.to_dict()
    assert summary["colour"]["value"] == pytest.approx(2 / 3)
    assert summary["shape"]["value"] == pytest.approx(1 / 3)
    assert summary["centre"]["value"] == pytest.approx(1 / 3)  # 3 px is not within 2 px
    assert summary["box"]["value"] == pytest.approx(1 / 3)  # IoU of the shifted box is 1/7
    assert summary["recall"]["value"] == pytest.approx(2 / 3)
    assert summary["precision"]["value"] == pytest.approx(2 / 3)
    assert summary["exact_count"]["value"] == 0.0
    assert summary["colour"]["se"] == pytest.approx((2 / 3 * 1 / 3 / 3) ** 0.5)
    assert match_objects(predicted, truth, 4.0) == [(0, 0), (1, 1)]


def test_random_scenes_are_valid_and_reproducible():
    a = random_scene(random.Random(3), 64, 2, 7)
    assert a == random_scene(random.Random(3), 64, 2, 7) and 2 <= len(a) <= 7
    stream = SceneStream(Preprocess(image_size=64), batch_size=4, batches_per_worker=2, seed=1)
    batches = list(stream)
    assert len(batches) == 2 and batches[0]["pixels"].shape == (4, 64, 64, 3)
    again = list(SceneStream(Preprocess(image_size=64), batch_size=4, batches_per_worker=2, seed=1))
    assert torch.equal(batches[1]["pixels"], again[1]["pixels"])
    scene = batches[0]["records"][0].meta["scene"]
    image = scenes.render(scene, 64)
    for obj in scene:  # the pixels at every centre have the object's colour (plain or noisy background alike)
        x, y = (int(c) for c in obj["center"])
        if scenes.sprite(obj["shape"], scenes.side_pixels(obj["size"], 64))[y - obj["box"][1], x - obj["box"][0]]:
            assert tuple(image.getpixel((x, y))) == scenes.COLOURS[obj["colour"]]


def _stream_batch(model, n=16, seed=0):
    batch = next(iter(SceneStream(model.preprocess, n, 1, seed=seed, image_size=32, max_objects=4)))
    images = model.preprocess.normalize(batch["pixels"])
    return images, [r.meta["scene"] for r in batch["records"]]


def test_encoder_loss_decreases_on_fresh_scenes():
    torch.manual_seed(0)
    model = SceneEncoder(ENCODER_TEST_CONFIG)
    images, scenes_ = _stream_batch(model)
    losses, out = train_steps(model, images, scenes_, 40, lr=3e-3, scene_size=32)
    assert losses[-1] < 0.5 * losses[0]
    assert set(out) == {"loss", "centre", "attributes", "geometry", "cover"}


def test_perceive_merges_a_centre_that_fires_in_two_cells():
    model = SceneEncoder(ENCODER_TEST_CONFIG)
    g = model.grid
    pred = {k: torch.zeros(1, g, g, n) for k, n in (("colour", 6), ("shape", 5), ("size", 2), ("offset", 2),
                                                     ("extent", 2))}
    pred["centre"] = torch.full((1, g, g), -10.0)
    pred["centre"][0, 1, 1], pred["centre"][0, 1, 2] = 3.0, 2.0  # both cells next to x = 16
    pred["offset"][0, 1, 1] = torch.tensor([0.95, 0.5])  # centre (15.6, 12)
    pred["offset"][0, 1, 2] = torch.tensor([0.02, 0.5])  # centre (16.2, 12): the same object
    pred["centre"][0, 3, 0] = 1.0  # a second object at (4, 28)
    pred["offset"][0, 3, 0] = torch.tensor([0.5, 0.5])
    pred["colour"][0, 1, 1, 2] = pred["shape"][0, 1, 1, 4] = pred["size"][0, 1, 1, 1] = 5.0
    pred["extent"][0, 1, 1] = torch.tensor([0.25, 0.125])
    model.forward = lambda images: pred
    found = model.perceive(torch.zeros(1, 3, 32, 32))[0]
    assert len(found) == 2
    first = found[0]
    assert (first["colour"], first["shape"], first["size"]) == (COLOUR_NAMES[2], SHAPE_NAMES[4], "large")
    assert first["center"] == pytest.approx([15.6, 12.0])
    assert first["box"] == pytest.approx([11.6, 10.0, 19.6, 14.0])
    assert found[1]["center"] == pytest.approx([4.0, 28.0])


@pytest.fixture
def encoder_export(tmp_path):
    torch.manual_seed(0)
    model = SceneEncoder(ENCODER_TEST_CONFIG)
    return model, save_export(model, tmp_path / "encoder", metrics={"val/colour": 0.5})


def test_encoder_export_round_trip(encoder_export):
    model, folder = encoder_export
    assert not (folder / "tokenizer_config.json").exists()
    loaded = load_export(folder)
    assert type(loaded) is SceneEncoder and loaded.family == "encoder"
    images, _ = _stream_batch(model, 4)
    model.eval()
    for key, value in model(images).items():
        assert torch.equal(value, loaded(images)[key]), key
    out = loaded.predict(scenes.render(random_scene(random.Random(0), 32, 2, 3), 32))
    assert out["answer"].startswith(f"{len(out['objects'])} objects")


FAMILIES = {
    "baseline": (VisionLanguageModel, TINY_TEST_CONFIG),
    "meteor": (Meteor, TINY_METEOR),
    "virl": (VirlPolicy, VIRL_TEST_CONFIG),
    "star": (StarSegmenter, STAR_TEST_CONFIG),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("frozen", [True, False])
def test_every_vlm_family_starts_its_vision_from_the_encoder(family, frozen, encoder_export, tiny_tokenizer, tmp_path):
    encoder, folder = encoder_export
    cls, config = FAMILIES[family]
    init = {"from": str(folder), "parts": ["vision"], "frozen": ["vision"] if frozen else []}
    wide = merge_config(config, {"vision": {"name": "resnet18"}, "preprocess": {"image_size": 48}})
    model = build_model(family, wide, tokenizer=tiny_tokenizer, init=init)
    assert type(model) is cls
    assert model.preprocess.image_size == 32 and model.config["vision"]["name"] == encoder.config["vision"]["name"]
    for key, value in encoder.vision.state_dict().items():
        assert torch.equal(model.vision.state_dict()[key], value), key
    trainable = not frozen and family != "meteor"  # Meteor's step 1 freezes its whole backbone
    assert all(p.requires_grad == trainable for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.lm.parameters()) or family == "meteor"
    exported = save_export(model, tmp_path / "family")
    shutil.rmtree(folder)  # the family's export rebuilds without the encoder folder
    reloaded = load_export(exported)
    assert torch.equal(reloaded.vision.state_dict()["model.pos_embed"], encoder.vision.state_dict()["model.pos_embed"])


def test_a_frozen_encoder_stays_fixed_while_the_vlm_learns(encoder_export, tiny_tokenizer):
    from conftest import model_images, valid_records

    encoder, folder = encoder_export
    torch.manual_seed(0)
    init = {"from": str(folder), "parts": ["vision"], "frozen": ["vision"]}
    model = build_model("baseline", TINY_TEST_CONFIG, tokenizer=tiny_tokenizer, init=init)
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    losses, _ = train_steps(model, model_images(model), valid_records(), 10)
    assert losses[-1] < losses[0]
    assert all(torch.equal(before[k], v) for k, v in model.vision.state_dict().items())


def test_mccot_stages_start_from_the_encoder(encoder_export, tiny_tokenizer):
    encoder, folder = encoder_export
    init = {"from": str(folder), "parts": ["vision"], "frozen": ["vision"]}
    model = build_model("mccot", MCCOT_TEST_CONFIG, tokenizer=tiny_tokenizer, init=init)
    for stage in model.stages.values():
        assert stage.frozen_vision
        for key, value in encoder.vision.state_dict().items():
            assert torch.equal(stage.vision.state_dict()[key], value), key


def test_the_encoder_module_validates_with_the_perception_evaluator(monkeypatch):
    from mmreason.training.encoder import EncoderModule

    torch.manual_seed(0)
    module = EncoderModule(model_config=ENCODER_TEST_CONFIG)
    monkeypatch.setattr(module, "log_dict", lambda *args, **kwargs: None)
    batch = next(iter(SceneStream(module.model.preprocess, 4, 1, seed=0, image_size=32, max_objects=4)))
    batch["images"] = module.model.preprocess.normalize(batch["pixels"])
    module.validation_step(batch, 0)
    module.on_validation_epoch_end()
    metrics = module.last_metrics
    assert {"val/colour", "val/exact_count", "val/recall"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
