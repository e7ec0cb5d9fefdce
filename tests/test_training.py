"""Training through the ``mmreason`` console script: fit, export, resume, predict, eval, 2-rank DDP."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEST_CONFIG, fit_args, make_image, mmreason, write_shards

from mmreason.export import load_export, save_export
from mmreason.models.baseline import VisionLanguageModel


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, "train", [7, 2, 5])
    write_shards(folder, "val", [6])
    write_shards(folder, "ddpval", [4, 3])
    return folder


def test_fit_exports_then_resume_continues_at_the_exact_step(shards, tmp_path):
    mmreason(*fit_args(shards, tmp_path, 3))
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert state["lr_schedulers"][0]["last_epoch"] == 3
    export = tmp_path / "export"
    assert json.loads((export / "config.json").read_text())["metrics"]["global_step"] == 3
    assert (tmp_path / "export-best" / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp"))

    mmreason(*fit_args(shards, tmp_path, 5), "--ckpt_path", "last")
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 5
    assert resumed["lr_schedulers"][0]["last_epoch"] == 5
    first_moments = resumed["optimizer_states"][0]["state"][0]["step"]
    assert float(first_moments) == 5.0  # AdamW's step counter carried over, not restarted


def test_predict_eval_and_export_verbs_on_a_fresh_export(shards, tmp_path):
    mmreason(*fit_args(shards, tmp_path, 2))
    export = tmp_path / "export"
    make_image(0).save(tmp_path / "q.png")
    out = mmreason("predict", "--model", str(export), "--image", str(tmp_path / "q.png"),
                   "--question", "is there a red circle?", "--json", "--max-new-tokens", "4")
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(answer) == {"text", "rationale", "answer"}
    mmreason("eval", "--model", str(export), "--data", str(shards / "val0-000000.tar"),
             "--out", str(tmp_path / "report.json"), "--max-new-tokens", "4")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 6 and set(report["per_task"]) == {"exist", "count"}
    assert report["majority_baseline"]["exist"] == 1.0  # every exist record answers "yes"
    mmreason("export", "--ckpt", str(tmp_path / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "again"))
    assert json.loads((tmp_path / "again" / "config.json").read_text())["family"] == "baseline"
    older = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    del older["mmreason_export"]  # as written before checkpoints carried their export entry
    torch.save(older, tmp_path / "older.ckpt")
    mmreason("export", "--ckpt", str(tmp_path / "older.ckpt"), "--out", str(tmp_path / "older"))
    assert torch.equal(load_export(tmp_path / "older").lm.get_input_embeddings().weight,
                       load_export(tmp_path / "again").lm.get_input_embeddings().weight)


def test_cli_help_lists_every_verb():
    out = mmreason("--help").stdout
    for verb in ("fit", "validate", "test", "predict", "eval", "export", "list", "data"):
        assert f"    {verb}" in out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "mmreason"
    result = subprocess.run([str(script), "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "baseline-tiny-cot" in result.stdout


def test_two_rank_ddp_fit_stays_in_step_and_exports_once(shards, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    extra = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
             "--trainer.callbacks+=ddp_probe.RankProbe", f"--trainer.callbacks.out={probe}",
             "--trainer.max_epochs", "3", "--trainer.max_steps", "-1", "--trainer.val_check_interval", "null",
             "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "null"]
    args = fit_args(shards, tmp_path, 4) + ["--data.init_args.val", str(shards / "ddpval{0..1}-000000.tar")]
    result = mmreason(*args, *extra, timeout=300)
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    # 14 uneven samples, batch 4, 2 ranks -> 1 batch per rank per epoch, 3 epochs
    assert ranks[0]["batches"] == ranks[1]["batches"] == 3
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert result.stderr.count(f"model to {tmp_path / 'export'}\n") == 1
    assert not (tmp_path / "export.old").exists() and not (tmp_path / "export.tmp").exists()


def test_data_verbs_write_valid_shards(tmp_path):
    out = tmp_path / "synth"
    mmreason("data", "synth", "--out", str(out), "--train", "12", "--val", "4", "--test", "0", "--heldout", "4",
             "--tasks", "count", "seg", "--samples-per-shard", "8")
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"heldout-000000.tar": 4, "train-000000.tar": 8, "train-000001.tar": 4, "val-000000.tar": 4}
    record = {"question": "how many?", "answer": "2", "task": "count", "image": "a.png"}
    make_image(0).save(tmp_path / "a.png")
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    report = json.loads(mmreason("data", "convert", "jsonl", str(tmp_path / "data.jsonl"),
                                 "--out", str(tmp_path / "mine")).stdout)
    assert report["written"] == 1
    assert json.loads((tmp_path / "mine" / "sizes.json").read_text()) == {"train-000000.tar": 1}


def test_export_from_a_checkpoint_needs_none_of_the_folders_training_started_from(shards, tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    parent = save_export(VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer), tmp_path / "parent")
    run = tmp_path / "run"
    mmreason(*fit_args(shards, run, 2), "--model.init_args.model_config", "null",
             "--model.init_args.init", f"{{from: {parent}}}")
    shutil.rmtree(parent)
    mmreason("export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "again"))
    again, fitted = load_export(tmp_path / "again"), load_export(run / "export")
    assert again.state_dict().keys() == fitted.state_dict().keys()
    assert all(torch.equal(value, fitted.state_dict()[key]) for key, value in again.state_dict().items())
    assert json.loads((tmp_path / "again" / "config.json").read_text())["metrics"]["global_step"] == 2
