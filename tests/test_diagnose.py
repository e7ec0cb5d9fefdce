"""Rationale probes of the two rationale-writing families, and ``mmreason diagnose`` end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_TEST_CONFIG

from mmreason.data.preprocess import Preprocess
from mmreason.data.rationale_edits import split_steps
from mmreason.data.schema import validate_record
from mmreason.data.synth import SynthConfig, make_sample
from mmreason.diagnostics.diagnose import diagnose, with_actions
from mmreason.diagnostics.report import figures, markdown
from mmreason.eval.step_utility import entropy_bits, stop_point
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.mccot import MCCoT
from mmreason.text.prompts import thinking
from mmreason.text.tokenizer import build_tokenizer

TASKS = ("exist", "count", "compare", "multihop")


def synth_batch(n: int = 4, size: int = 32):
    config = SynthConfig(tasks=TASKS)
    samples = [make_sample(config, "train", i) for i in range(n)]
    preprocess = Preprocess.from_dict({**Preprocess().to_dict(), "image_size": size})
    images = torch.stack([preprocess(image) for _, image, _, _ in samples])
    return images, [validate_record(record) for _, _, record, _ in samples], [key for key, *_ in samples]


def memorise(model, images, records, steps: int = 120):
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        model.batch_loss(images, records)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """A tiny cot model that has learnt four synthetic samples by heart: its own rationales are the gold ones."""
    torch.manual_seed(0)
    model = VisionLanguageModel({**TINY_TEST_CONFIG, "max_length": 256}, tokenizer=build_tokenizer("synth-word"))
    images, records, keys = synth_batch()
    return memorise(model, images, records), images, records, keys


def test_the_memorised_model_writes_the_gold_rationales(trained):
    model, images, records, _ = trained
    described = [model.describe(r) for r in model.respond(images, records, max_new_tokens=120)]
    assert [d["rationale"] for d in described] == [r.rationale.lower() for r in records]


def test_answer_entropies_equal_a_plain_forward_per_row(trained):
    model, images, records, _ = trained
    prefixes = ["", records[1].rationale.lower().split(". ")[0] + ".", records[2].rationale.lower(), "it is"]
    batched, tokens = model.answer_entropies(images, records, prefixes)  # left-padded rows of unequal length
    for i, prefix in enumerate(prefixes):
        rows = model.processor.prompt_and_text([records[i]], [thinking(prefix, answer_next=True)])
        ids = torch.tensor(rows)
        logits = model(images[i : i + 1], ids, torch.ones_like(ids)).logits[0, -1]
        assert batched[i].item() == pytest.approx(entropy_bits(logits[None])[0].item(), abs=1e-4)
        assert tokens[i] == model.tokenizer.decode([int(logits.argmax())]).strip()
    with pytest.raises(ValueError, match="K per record"):
        model.answer_entropies(images, records, prefixes[:3])


def test_answers_after_own_evidence_reproduce_the_answer(trained):
    model, images, records, _ = trained
    evidence = [". ".join(r.rationale.lower().split(". ")[:-1]) + "." for r in records]
    after = model.answers_after(images, records, evidence)
    assert [a["answer"] for a in after] == [r.answer for r in records]
    assert all(a["rationale"].startswith(e) for a, e in zip(after, evidence))


def test_early_stopping_answers_where_the_offline_curve_says(trained):
    model, images, records, _ = trained
    greedy = model.respond(images, records, max_new_tokens=120)
    never = model.respond(images, records, max_new_tokens=120, stop_entropy=-1.0)
    assert [n["text"] for n in never] == [g["text"] for g in greedy] and not any(n["early"] for n in never)
    first, tokens = model.answer_entropies(images, records, [""] * 4)
    always = model.respond(images, records, stop_entropy=1e9)
    assert [a["stopped_after"] for a in always] == [0] * 4
    assert [a["text"] for a in always] == [f"<think> </think> <answer> {t} </answer>".replace("  ", " ")
                                          for t in tokens]
    # thresholds between the entropies after each prefix of the first sample stop it where the curve says
    sentences = split_steps_of(records[0].rationale.lower()) + [split_steps(records[0].rationale.lower())[1]]
    prefixes = [" ".join(sentences[:k]) for k in range(len(sentences) + 1)]
    curve, _ = model.answer_entropies(images[:1].repeat(len(prefixes), 1, 1, 1), [records[0]] * len(prefixes),
                                      prefixes)
    curve = curve.tolist()
    for threshold in sorted(curve)[:-1]:
        threshold += 1e-6
        out = model.respond(images[:1], records[:1], max_new_tokens=120, stop_entropy=threshold)[0]
        stop = stop_point(curve, threshold)
        assert (out["stopped_after"], out["early"]) == (stop, stop < len(curve) - 1)
    with pytest.raises(ValueError, match="does not combine with votes"):
        model.respond(images, records, votes=2, stop_entropy=0.5)


def test_mccot_probes_equal_row_by_row_calls():
    torch.manual_seed(0)
    config = {"vision": TINY_TEST_CONFIG["vision"], "preprocess": {"image_size": 32},
              "language": {"config": {"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1,
                                      "num_decoder_layers": 1, "num_heads": 2, "dropout_rate": 0.0}},
              "stages": ["rationale", "answer"], "max_length": 256, "max_target_length": 24}
    model = MCCoT(config, tokenizer=build_tokenizer("synth-word")).eval()
    images, records, _ = synth_batch()
    assert model.can("reasons")
    evidence = ["", "there is a red circle .", "the small blue square at the top counts as 1 .", "it is"]
    batched = model.answers_after(images, records, evidence, max_new_tokens=6)
    entropies, tokens = model.answer_entropies(images, records, evidence)
    for i in range(4):
        alone = model.answers_after(images[i : i + 1], records[i : i + 1], evidence[i : i + 1], max_new_tokens=6)
        assert alone == batched[i : i + 1]
        assert alone[0]["rationale"].startswith(evidence[i].strip().replace(" .", "."))
        h, t = model.answer_entropies(images[i : i + 1], records[i : i + 1], evidence[i : i + 1])
        assert h.item() == pytest.approx(entropies[i].item(), abs=1e-4) and t == tokens[i : i + 1]


def test_diagnose_reports_the_three_diagnostics(trained, tmp_path):
    model, _, records, keys = trained
    report = diagnose(model, [synth_loader_batch(model, records, keys)], max_new_tokens=120)
    faith, utility = report["faithfulness"], report["step_utility"]
    assert faith["unedited_reproduced"]["all"] == {"n": 4, "share": 100.0, "se": 0.0}
    pooled = faith["matters"]["all"]["all"]
    assert pooled["follows"]["n"] > 0
    assert sum(pooled[o]["share"] for o in ("follows", "stays", "other")) == pytest.approx(100.0)
    several = sum(len(split_steps(r.rationale)[0]) >= 2 for r in records)
    assert faith["controls"]["all"]["shuffle"]["changed"]["n"] == several
    assert utility["n"] == 4 and set(utility["curves"]) == {*TASKS, "all"}
    lengths = [len(r.rationale.split(". ")) + 1 for r in records]  # sentences + the empty prefix
    assert len(utility["curves"]["all"]) == max(lengths)
    assert utility["early_stopping"][0]["threshold"] == 0.01
    gold = diagnose(model, [synth_loader_batch(model, records, keys)], max_new_tokens=120, source="gold")
    assert gold["faithfulness"]["rationales"] == "gold"
    assert gold["faithfulness"]["unedited_reproduced"]["all"] == {"n": 4, "share": 100.0, "se": 0.0}
    with pytest.raises(ValueError, match="rationales to edit"):
        diagnose(model, [], source="mine")
    text = markdown(report)
    assert "## Faithfulness by intervention (own rationales edited)" in text and "## Step utility" in text and "| **all** |" in text
    assert [p.name for p in figures(report, tmp_path)] == ["entropy.png", "faithfulness.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("entropy.png", "faithfulness.png"))


def test_diagnose_command_writes_report_files_and_refuses_a_direct_answerer(trained, tmp_path, capsys):
    from mmreason.cli import main
    from mmreason.data.synth_shards import synthesize
    from mmreason.export import save_export

    model = trained[0]
    export = save_export(model, tmp_path / "export")
    synthesize(tmp_path / "data", {"test": 4}, SynthConfig(tasks=TASKS), progress=False)
    main(["diagnose", "--model", str(export), "--data", str(tmp_path / "data"), "--limit", "4",
          "--max-new-tokens", "120", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert report["step_utility"]["n"] == 4 and report["model"] == str(export)
    assert (tmp_path / "out" / "diagnosis.md").read_text().startswith("## Faithfulness by intervention")
    direct = save_export(VisionLanguageModel({**TINY_TEST_CONFIG, "output_format": "answer"},
                                             tokenizer=model.tokenizer), tmp_path / "direct")
    with pytest.raises(SystemExit) as stop:
        main(["diagnose", "--model", str(direct), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "x")])
    assert stop.value.code != 0
    assert "writes no rationale to diagnose" in capsys.readouterr().err


def test_actions_travel_with_their_sentences():
    rationale = ("<crop> 1 , 2 , 9 , 9 </crop> the small red circle at the top left counts as 1. "
                 "<crop> 2 0 , 2 , 3 0 , 9 </crop> the large red square at the top right counts as 2. "
                 "the number of red shapes is 2, so the answer is 2.")
    edited = "the large red square at the top right counts as 1. the small blue cross at the left counts as 2."
    assert with_actions(edited, rationale) == ("<crop> 2 0 , 2 , 3 0 , 9 </crop> the large red square at the top "
                                               "right counts as 1. the small blue cross at the left counts as 2.")
    assert with_actions("no crops here. none.", "no crops here. none.") == "no crops here. none."


def test_crop_policy_probes_take_its_crops():
    from mmreason.models.virl import VirlPolicy
    from mmreason.rl.crop import parse_crops

    torch.manual_seed(0)
    config = {**TINY_TEST_CONFIG, "max_length": 400, "crop": {"max_actions": 3, "min_size": 4, "tokens": 4}}
    policy = VirlPolicy(config, tokenizer=build_tokenizer("synth-word"))
    images, records, keys = synth_batch()
    memorise(policy, images, records, steps=90)
    assert policy.can("reasons")
    described = [policy.describe(r) for r in policy.respond(images, records, max_new_tokens=200)]
    assert all(parse_crops(d["rationale"]) for d in described)  # its rationales hold crop actions
    evidence = [" ".join(split_steps_of(d["rationale"])) for d in described]
    after = policy.answers_after(images, records, evidence)
    assert [a["answer"] for a in after] == [d["answer"] for d in described]
    assert [len(a["crops"]) for a in after] == [len(d["crops"]) for d in described]
    batched, tokens = policy.answer_entropies(images, records, evidence)
    for i in range(4):
        alone, token = policy.answer_entropies(images[i : i + 1], records[i : i + 1], evidence[i : i + 1])
        assert alone.item() == pytest.approx(batched[i].item(), abs=1e-4) and token == tokens[i : i + 1]
    report = diagnose(policy, [synth_loader_batch(policy, records, keys)], max_new_tokens=200)
    assert report["step_utility"]["n"] == 4 and report["faithfulness"]["unedited_reproduced"]["all"]["n"] > 0


def split_steps_of(rationale: str) -> list[str]:
    return split_steps(rationale)[0]


def synth_loader_batch(model, records, keys) -> dict:
    """The loader batch of the first len(records) synthetic samples, pixels as the model's loader makes them."""
    config = SynthConfig(tasks=TASKS)
    pixels = torch.stack([model.preprocess.to_pixels(make_sample(config, "train", i)[1]) for i in range(len(records))])
    return {"pixels": pixels, "records": records, "keys": keys}


def test_distillation_sets_keep_the_samples_their_filter_lets_through():
    from mmreason.diagnostics.candidates import distillation_records, pixels_image

    record = {"question": "how many red shapes are there?", "answer": "2", "task": "count", "choices": None,
              "rationale": "gold.", "steps": [], "meta": {"scene": [], "candidates": [
                  {"rationale": "a, so the answer is 2.", "answer": "2", "correct": True, "score": 0.9},
                  {"rationale": "b, so the answer is 3.", "answer": "3", "correct": False, "score": 0.7},
                  {"rationale": "c, so the answer is 1.", "answer": "1", "correct": False, "score": 0.2},
                  {"rationale": "", "answer": None, "correct": False, "score": 0.9}]}}
    kept = {keep: distillation_records(record, keep, threshold=0.5) for keep in ("all", "scorer", "true")}
    assert [r["answer"] for r in kept["all"]] == ["2", "3", "1"]
    assert [r["answer"] for r in kept["scorer"]] == ["2", "3"]
    assert [(r["answer"], r["rationale"]) for r in kept["true"]] == [("2", "a, so the answer is 2.")]
    assert "candidates" not in kept["all"][0]["meta"] and kept["all"][1]["meta"]["distilled_from"]["score"] == 0.7
    validate_record(kept["all"][0])
    with pytest.raises(ValueError, match="unknown filter"):
        distillation_records(record, "best")
    pixels = torch.randint(0, 255, (8, 8, 3), dtype=torch.uint8)
    assert torch.equal(torch.from_numpy(np.asarray(pixels_image(pixels))), pixels)


def test_candidate_shards_are_read_within_bounds(tmp_path):
    import io
    import tarfile

    from mmreason.diagnostics.candidates import MAX_RECORD_BYTES, candidate_shard_samples

    good = {"question": "how many?", "answer": "2", "task": "count", "meta": {"candidates": []}}
    members = {"a.png": b"\x89PNG image bytes", "a.json": json.dumps(good).encode(),
               "b.png": b"png", "b.json": b" " * (MAX_RECORD_BYTES + 1),  # too large to be a record: not read
               "c.png": b"png", "c.json": json.dumps({"question": "", "answer": "x"}).encode(),  # invalid
               "d.json": json.dumps(good).encode()}  # no image
    path = tmp_path / "train-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = list(candidate_shard_samples(path))
    assert [(key, image) for key, image, _ in samples] == [("a", b"\x89PNG image bytes")]
    assert samples[0][2].answer == "2"
