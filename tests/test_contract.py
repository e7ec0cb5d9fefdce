"""The family contract, checked for every registered model that builds offline.

A new family registered with ``register_family``/``register_model`` is picked
up here with no test of its own: it must build from its config, train through
``loss(batch)`` on a loader batch, do what its declared capabilities promise,
round-trip through an export and a checkpoint with equal outputs, answer
``predict`` (or, declaring no capability, refuse it and evaluation, saying it
answers no questions) and refuse an unknown config key.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEST_CONFIG
from PIL import Image

import mmreason
from mmreason.build import build_model, create_model
from mmreason.data.preprocess import Preprocess
from mmreason.data.shards import eval_stream, resolve_shards
from mmreason.data.synth import SynthConfig
from mmreason.data.synth_shards import synthesize
from mmreason.export import (
    checkpoint_payload,
    load_export,
    model_from_checkpoint,
    save_export,
)
from mmreason.inference import evaluate
from mmreason.models.base import ANSWERS, CAPABILITIES, CROPS, PERCEIVES, PIPELINE, POLICY, SEGMENTS
from mmreason.zoo import family_class, list_models, model_info


def _downloads(config) -> bool:
    """Whether building this config fetches pretrained weights (hub names, pretrained towers)."""
    if isinstance(config, dict):
        return bool(config.get("pretrained") or config.get("path")) or any(map(_downloads, config.values()))
    return False


OFFLINE_MODELS = [name for name in list_models() if not _downloads(model_info(name)["config"])]
# what each capability promises: the method that provides it
CAPABILITY_METHODS = {ANSWERS: "answer_batch", PIPELINE: "run", SEGMENTS: "segment", POLICY: "rollout",
                      PERCEIVES: "perceive"}
# the data a family trains on (default: short-rationale questions)
FAMILY_DATA = {"star": {"tasks": ("seg",)}, "meteor": {"tasks": ("count",), "rationale_style": "long"}}


@pytest.fixture(scope="module")
def shards_for(tmp_path_factory):
    """Tiny synthetic shards of the data a family trains on, written once per kind of data."""
    root, written = tmp_path_factory.mktemp("contract"), {}

    def shards(family: str) -> list[str]:
        options = FAMILY_DATA.get(family, {"tasks": ("count", "exist")})
        key = repr(sorted(options.items()))
        if key not in written:
            folder = root / str(len(written))
            synthesize(folder, {"train": 4}, SynthConfig(**options), progress=False)
            written[key] = resolve_shards(folder, "train")
        return written[key]

    return shards


def _batch(model, urls) -> dict:
    """A loader batch as training sees it: ``images`` normalised by the model; ``pixels`` kept for predict."""
    batch = next(iter(eval_stream(urls, Preprocess.from_dict(model.preprocess.to_dict()), 4)[0]))
    batch["images"] = model.preprocess.normalize(batch["pixels"])
    return batch


@pytest.fixture(scope="module", params=OFFLINE_MODELS)
def built(request, shards_for):
    torch.manual_seed(0)
    model = create_model(request.param)
    return request.param, model, _batch(model, shards_for(model.family))


def test_the_registry_offers_every_family():
    assert {model_info(n)["family"] for n in OFFLINE_MODELS} >= {"baseline", "encoder", "mccot", "meteor", "virl",
                                                                 "star", "scorer"}


def test_declared_capabilities_are_provided(built):
    _, model, _ = built
    assert model.capability_set() <= set(CAPABILITIES)
    for capability in model.capability_set():
        if capability in CAPABILITY_METHODS:
            assert callable(getattr(model, CAPABILITY_METHODS[capability], None)), capability


def test_loss_on_a_loader_batch_trains(built):
    _, model, batch = built
    model.train()
    out = model.loss(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(torch.isfinite(g).all() for g in grads if g is not None)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def _same_loss(a, b, batch) -> None:
    a.eval(), b.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        expected = a.loss(batch)["loss"]
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.allclose(b.loss(batch)["loss"], expected, atol=1e-6)


def test_the_batch_processor_works_apart_from_the_model(built):
    """What a loader worker does: a pickled copy of the model's processor (no weights in it) turns the
    batch's records into tensors, and the loss from them is the loss from the records."""
    _, model, batch = built
    processor = model.batch_processor()
    if processor is None:
        assert model.family in ("virl", "encoder")  # they build their inputs from the images
        return
    pickled = pickle.dumps(processor)
    assert len(pickled) < sum(p.numel() * p.element_size() for p in model.parameters()) / 10
    processed = pickle.loads(pickled)({k: v for k, v in batch.items() if k != "inputs"})
    assert processed["inputs"] and all(isinstance(v, torch.Tensor) for v in processed["inputs"].values())
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        from_records = model.loss({k: v for k, v in batch.items() if k != "inputs"})
        torch.manual_seed(0)
        from_worker = model.loss(processed)
    assert torch.allclose(from_worker["loss"], from_records["loss"], atol=1e-6)
    assert from_worker["skipped"] == from_records["skipped"]


def test_export_and_checkpoint_round_trips_keep_the_outputs(built, tmp_path):
    _, model, batch = built
    loaded = load_export(save_export(model, tmp_path / "export"))
    assert type(loaded) is type(model) and loaded.capability_set() == model.capability_set()
    _same_loss(model, loaded, batch)
    from_checkpoint = model_from_checkpoint(checkpoint_payload(model), model.state_dict(), "checkpoint")
    _same_loss(model, from_checkpoint, batch)


def test_evaluation_scores_what_the_capabilities_declare(built, shards_for):
    _, model, _ = built
    urls = shards_for(model.family)
    if not model.capability_set():  # it answers nothing (a rationale scorer): evaluation refuses, saying why
        with pytest.raises(ValueError, match="answers no questions"):
            evaluate(model.eval(), urls, batch_size=4, max_new_tokens=4)
        return
    report = evaluate(model.eval(), urls, batch_size=4, max_new_tokens=4)["report"]
    assert ("accuracy" in report) == model.can(ANSWERS)
    assert ("perception" in report) == model.can(PERCEIVES)
    assert ("segmentation" in report) == model.can(SEGMENTS)
    assert ("crops" in report) == model.can(CROPS)
    assert ("rationale" in report) == model.writes_rationales()
    assert report["skipped"]["count"] == 0
    with pytest.raises(ValueError, match=r"\['beams'\] do not apply to a"):
        evaluate(model, urls, batch_size=4, max_new_tokens=4, beams=2)


def test_generation_and_predict_agree_after_export(built, tmp_path):
    _, model, batch = built
    model.eval()
    if model.can(ANSWERS):
        texts = model.answer_batch(batch["images"][:2], batch["records"][:2], max_new_tokens=4)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    path = tmp_path / "image.png"
    Image.fromarray(batch["pixels"][0].numpy()).save(path)
    question = batch["records"][0].question
    if not model.capability_set():  # it answers nothing (a rationale scorer): predict refuses, saying why
        with pytest.raises(ValueError, match="answers no questions"):
            model.predict(path, question, max_new_tokens=4)
        return
    loaded = load_export(save_export(model, tmp_path / "export"))
    out, again = (m.predict(path, question, max_new_tokens=4) for m in (model, loaded))
    assert isinstance(out["answer"], (str, type(None))) and out.keys() == again.keys()
    for key, value in out.items():  # every output, masks included, is the same after export
        same = torch.equal(torch.as_tensor(value), torch.as_tensor(again[key])) if key == "mask" else value == again[key]
        assert same, key


def test_an_unknown_config_key_is_refused_at_any_depth(built):
    name, model, _ = built
    with pytest.raises(ValueError, match="unknown key 'not_a_setting'"):
        create_model(name, not_a_setting=1)
    schema = family_class(model.family).config_schema
    nested = next(key for key, sub in schema.items() if isinstance(sub, dict))
    with pytest.raises(ValueError, match=rf"model_config.{nested}: unknown key 'not_a_setting'"):
        create_model(name, **{nested: {"not_a_setting": 1}})


def test_a_family_registered_first_leaves_the_built_ins_visible():
    script = ("from torch import nn\nfrom mmreason.zoo import register_family, family_class, list_models\n"
              "register_family('mine')(type('Mine', (nn.Module,), {}))\n"
              "print(family_class('baseline').__name__, family_class('mine').__name__, len(list_models()))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["VisionLanguageModel", "Mine"] and int(out[2]) >= 8


def _import_graph() -> dict[str, set[str]]:
    """Every mmreason module → the mmreason modules it imports, at module level or inside functions."""
    root = Path(mmreason.__file__).parent
    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in modules}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name in modules}
        graph[name] = imported - {name}
    return graph


def test_the_package_has_no_import_cycles():
    graph, state, cycles = _import_graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for dependency in sorted(graph[module]):
            if state.get(dependency) == "open":
                cycles.append(path[path.index(dependency):] + [dependency])
            elif dependency not in state:
                visit(dependency, path + [dependency])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert len(graph) > 50 and not cycles, cycles[:3]


def test_init_names_what_it_cannot_start(tmp_path):
    with pytest.raises(ValueError, match=r"init.parts must name some of \('vision',\)"):
        create_model("encoder-tiny", init={"from": str(tmp_path), "parts": ["language"]})
    with pytest.raises(ValueError, match="init must be"):
        create_model("baseline-tiny", init={"form": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="init.from: export folder .*nowhere"):
        create_model("baseline-tiny", init={"from": str(tmp_path / "nowhere"), "parts": ["vision"]})
    with pytest.raises(ValueError, match="init is not part of a model's config"):
        build_model("baseline", {**TINY_TEST_CONFIG, "init": {"from": str(tmp_path), "parts": ["vision"]}})
    with pytest.raises(ValueError, match="name a registered model"):
        create_model(None)


def test_init_without_parts_trains_the_whole_export_and_each_module_starts_that_way(tmp_path, tiny_tokenizer):
    from mmreason.training.grpo import GRPOModule
    from mmreason.training.sft import SFTModule

    torch.manual_seed(0)
    baseline = save_export(build_model("baseline", TINY_TEST_CONFIG, tokenizer=tiny_tokenizer), tmp_path / "baseline")
    model = create_model(init={"from": str(baseline), "frozen": ["vision"]}, output_format="answer", max_length=40)
    source = load_export(baseline)
    assert model.training and model.output_format == "answer"
    assert model.batch_processor().max_length == 40 and model.config["max_length"] == 40  # what the loader uses
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.lm.parameters())
    same = SFTModule(model="baseline-tiny-cot", init={"from": str(baseline)}).model
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())
    with pytest.raises(ValueError, match="model 'meteor-tiny' is a 'meteor' model but init.from .* holds a 'baseline'"):
        SFTModule(model="meteor-tiny", init={"from": str(baseline)})
    with pytest.raises(ValueError, match="GRPO trains a whole policy export"):
        GRPOModule(init={"from": str(baseline), "parts": ["vision"]})
    with pytest.raises(ValueError, match="GRPO needs a policy export .* holds a 'baseline' model"):
        GRPOModule(init={"from": str(baseline)})


def test_checkpoints_name_training_modules_from_a_fixed_list_that_keeps_former_names():
    from mmreason.training.modules import training_module
    from mmreason.training.star import StarModule

    assert training_module("mmreason.training.star.StarModule") is StarModule
    assert training_module("mmreason.training.star.SegmentationModule") is StarModule  # checkpoints written before
    with pytest.raises(ValueError, match="names training module 'os.system', which is not one of mmreason's"):
        training_module("os.system")


def test_a_segmentation_export_of_the_retired_decoder_layout_says_what_to_do(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file, save_file

    from mmreason.export import ExportError

    folder = save_export(build_model("star", {**TINY_TEST_CONFIG, "output_format": "answer"},
                                     tokenizer=tiny_tokenizer), tmp_path / "star")
    weights = load_file(folder / "model.safetensors")
    weights["mask_decoder.blocks.0.self_attn.q.weight"] = torch.zeros(1)  # a name only the old layout had
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ExportError, match="predates the mask decoder's SAM layout .* train it again"):
        load_export(folder)
