"""Fault suite: untrusted inputs never run code, failures are loud, nothing trained is lost.

Each test plays one fault an attacker or an unlucky user meets: a crafted
checkpoint, recipe, export or shard URL; training data that yields nothing; a
diverging run; a kill at the wrong moment. The slow cases (whole training runs
killed mid-way) carry ``@pytest.mark.slow``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, TINY_TEST_CONFIG, fit_args, make_image, make_record, mmreason, write_shards

from mmreason.data import shards as shard_module
from mmreason.data.preprocess import Preprocess
from mmreason.data.shards import NoUsableData, SkipCounter, eval_stream, resolve_shards, train_stream
from mmreason.data.writer import ShardSetWriter
from mmreason.export import ExportError, load_export, save_export
from mmreason.inference import NothingScored, evaluate
from mmreason.models.baseline import VisionLanguageModel
from mmreason.training.callbacks import FiniteTrainingGuard, NonFiniteTraining, check_resume_point
from mmreason.training.checkpoint import export_checkpoint
from mmreason.training.class_paths import ForbiddenClass, check_command_line
from mmreason.training.cli import parse_recipe

# --- code execution from files --------------------------------------------------------------


def test_a_crafted_checkpoint_cannot_call_an_arbitrary_callable(tmp_path):
    marker = tmp_path / "ran"
    for target in ("os.system", "subprocess.Popen", "mmreason.training.sft.os.system"):
        ckpt = tmp_path / "evil.ckpt"
        torch.save({"mmreason_module": target, "hyper_parameters": {"command": f"touch {marker}",
                                                                     "args": ["touch", str(marker)]},
                    "state_dict": {}}, ckpt)
        with pytest.raises(ValueError, match="not one of mmreason's") as error:
            export_checkpoint(ckpt, tmp_path / "out")
        assert target in str(error.value) and "SFTModule" in str(error.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_recipe_cannot_import_a_module_outside_the_allowed_packages(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "recipe.yaml"
    for model in ("{class_path: evilmod.Model}", "evilmod.Model", "{class_path: os.system}"):
        recipe.write_text(f"model: {model}\ntrainer: {{max_steps: 1}}\n")
        with pytest.raises(ForbiddenClass, match="may only name classes under mmreason"):
            parse_recipe(recipe)
    recipe.write_text("trainer:\n  callbacks:\n    - class_path: evilmod.Model\n")
    with pytest.raises(ForbiddenClass, match=r"trainer.callbacks\[0\].class_path"):
        check_command_line(["fit", f"--config={recipe}"])
    assert not marker.exists()
    check_command_line(["fit", "-c", str(ROOT / "recipes" / "baseline" / "synth-tiny-cot.yaml")])  # ours pass


@pytest.mark.parametrize("url", [" pipe:touch {m}", "PIPE:touch {m}", "Pipe:touch {m}", "\tpipe:touch {m}",
                                 "sftp://host/x.tar", "gs://bucket/x.tar", "-"])
def test_shard_urls_that_would_run_a_command_are_refused_in_every_spelling(url, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="refusing shard URL"):
        resolve_shards(url.format(m=marker))
    assert not marker.exists()


def test_an_allowed_pipe_and_file_urls_come_back_in_webdataset_normal_form(tmp_path):
    assert resolve_shards(" PIPE:cat x.tar", allow_pipe=True) == ["pipe:cat x.tar"]
    shard = write_shards(tmp_path, "t", [1])[0]
    assert resolve_shards(f"file://{shard}") == [shard]
    assert resolve_shards(f"  {shard} ") == [shard]


def test_a_missing_or_mistyped_shard_is_named_not_read_as_empty(tmp_path):
    write_shards(tmp_path, "train", [2, 2])
    with pytest.raises(FileNotFoundError, match=r"8 shard\(s\) named by .* do not exist: .*train2-000000.tar"):
        resolve_shards(str(tmp_path / "train{0..9}-000000.tar"))
    with pytest.raises(FileNotFoundError, match="no shards found"):
        resolve_shards(str(tmp_path / "trian*.tar"))


# --- exports --------------------------------------------------------------------------------


@pytest.fixture
def tiny_export(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    model = VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer)
    return model, save_export(model, tmp_path / "export")


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config["config"])
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit,named", [
    (lambda c: c.update(backbone_from="SELF"), "config.backbone_from"),
    (lambda c: c["vision"].update(from_export="SELF"), "config.vision.from_export"),
    (lambda c: c["vision"].update(pretrained=True), "config.vision.pretrained"),
    (lambda c: c["vision"].update(weights_file="/etc/passwd"), "config.vision.weights_file"),
    (lambda c: c["language"].update(path="some/hub-model"), "config.language.path"),
    (lambda c: c.update(tokenizer="/elsewhere"), "config.tokenizer"),
])
def test_an_export_that_points_outside_its_folder_is_refused_before_any_work(tiny_export, edit, named):
    _, folder = tiny_export
    _edit_config(folder, lambda c: edit(c) or _replace_self(c, str(folder)))
    with pytest.raises(ExportError, match="self-contained") as error:
        load_export(folder)
    assert named in str(error.value)


def _replace_self(node, folder: str) -> None:
    for key, value in list(node.items()):
        if value == "SELF":
            node[key] = folder
        elif isinstance(value, dict):
            _replace_self(value, folder)


def test_non_finite_weights_are_never_exported_and_the_old_export_is_kept(tiny_export):
    model, folder = tiny_export
    before = (folder / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(model.lm.parameters()).fill_(float("nan"))
    with pytest.raises(ExportError, match="NaN or inf"):
        save_export(model, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert not folder.with_name("export.tmp").exists()


def test_a_swap_interrupted_between_its_renames_is_finished_by_the_next_load(tiny_export):
    model, folder = tiny_export
    tmp, old = folder.with_name("export.tmp"), folder.with_name("export.old")
    shutil.copytree(folder, tmp)
    os.replace(folder, old)  # killed here: E.old and a complete E.tmp, no E
    loaded = load_export(folder)
    assert folder.is_dir() and not tmp.exists() and not old.exists()
    assert torch.equal(loaded.lm.get_input_embeddings().weight, model.lm.get_input_embeddings().weight)
    os.replace(folder, old)  # killed after the first rename with no E.tmp: the old export comes back
    save_export(model, folder)
    assert folder.is_dir() and not old.exists()


def test_an_interrupted_first_export_is_named(tiny_export):
    _, folder = tiny_export
    os.replace(folder, folder.with_name("export.tmp"))
    with pytest.raises(ExportError, match=r"export.tmp' is an export whose writing was interrupted"):
        load_export(folder)


# --- training that goes wrong ---------------------------------------------------------------


class _Diverging(L.LightningModule):
    """A linear model whose loss turns NaN at step ``bad_step``."""

    def __init__(self, bad_step: int):
        super().__init__()
        self.layer, self.bad_step = torch.nn.Linear(4, 1), bad_step

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step >= self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)


def _fit(module, guard, tmp_path, steps=6):
    trainer = L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module)
    return trainer


def test_a_diverging_run_stops_at_the_first_nan_with_finite_weights(tmp_path):
    module = _Diverging(bad_step=3)
    with pytest.raises(NonFiniteTraining, match=r"step 3: the loss is nan"):
        _fit(module, FiniteTrainingGuard(), tmp_path)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_few_non_finite_steps_may_be_skipped_without_touching_the_weights(tmp_path):
    module = _Diverging(bad_step=10)
    _fit(module, FiniteTrainingGuard(max_skipped_steps=2), tmp_path, steps=10)
    weights = [p.detach().clone() for p in module.parameters()]
    module.bad_step = 0
    guard = FiniteTrainingGuard(max_skipped_steps=2)
    with pytest.raises(NonFiniteTraining, match="3 non-finite step"):
        _fit(module, guard, tmp_path, steps=10)
    assert all(torch.equal(a, b) for a, b in zip(weights, module.parameters()))


def test_resume_from_an_interrupted_first_checkpoint_is_refused_by_name(tmp_path):
    check_resume_point(tmp_path)  # nothing there: a fresh start, as Lightning does
    (tmp_path / "last.ckpt.tmp").write_bytes(b"half")
    with pytest.raises(FileNotFoundError, match=r"last.ckpt.tmp is a checkpoint whose writing was interrupted"):
        check_resume_point(tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"whole")
    check_resume_point(tmp_path)


def _bad_shard(folder: Path, name: str, count: int) -> str:
    writer = ShardSetWriter(folder, name, samples_per_shard=count)
    for i in range(count):  # every record misses its answer
        writer.write(f"b{i:04d}", make_image(i), {k: v for k, v in make_record(i).items() if k != "answer"})
    writer.close()
    return str(folder / f"{name}-000000.tar")


def test_training_data_that_yields_nothing_stops_with_a_clear_error(tmp_path):
    urls = [_bad_shard(tmp_path, "bad", 30)]
    stream, _ = train_stream(urls, Preprocess(image_size=32), 4, epoch_samples=64, max_consecutive_skips=100)
    with pytest.raises(NoUsableData, match=r"no usable sample in the last 100 .*bad-000000.tar.*answer"):
        next(iter(stream))


def test_unreadable_training_shards_stop_with_a_clear_error(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar at all" * 100)
    stream, _ = train_stream([str(broken)], Preprocess(image_size=32), 4, epoch_samples=64,
                             max_consecutive_skips=20)
    with pytest.raises(NoUsableData, match="unreadable tar data"):
        next(iter(stream))


def test_skip_logging_is_rate_limited_but_counts_stay_exact(caplog):
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger=shard_module.__name__):
        for i in range(5000):
            counter.skip(f"k{i}", "invalid record: no answer")
    assert counter.take() == 5000 and counter.take_kinds() == {"invalid record": 5000}
    assert len(caplog.records) == shard_module.SKIPS_LOGGED_IN_FULL + 1 + 5  # one line per thousand after


def test_a_batch_size_of_zero_is_an_error_not_a_division(tmp_path):
    urls = write_shards(tmp_path, "v", [3])
    for build in (lambda: eval_stream(urls, Preprocess(), 0), lambda: train_stream(urls, Preprocess(), 0)):
        with pytest.raises(ValueError, match="batch size must be a positive integer, got 0"):
            build()


# --- evaluation and prediction --------------------------------------------------------------


def test_eval_reports_skipped_samples_by_reason(tiny_export, tmp_path):
    model, _ = tiny_export
    writer = ShardSetWriter(tmp_path, "mixed", samples_per_shard=10)
    for i in range(5):
        writer.write(f"g{i}", make_image(i), make_record(i))
    for i in range(3):  # after the last good sample, so only an in-process tally sees them
        writer.write(f"b{i}", make_image(i), {**make_record(i), "task": 7})
    writer.close()
    out = evaluate(model, [str(tmp_path / "mixed-000000.tar")], batch_size=2, max_new_tokens=2)
    assert out["report"]["n"] == 5
    assert out["report"]["skipped"] == {"count": 3, "reasons": {"invalid record": 3}}
    assert "skipped: 3 sample(s) (invalid record: 3)" in out["table"]


def test_eval_with_nothing_to_score_is_an_error(tiny_export, tmp_path):
    model, _ = tiny_export
    with pytest.raises(NothingScored, match=r"no sample could be scored .* 4 skipped \(invalid record: 4\)"):
        evaluate(model, [_bad_shard(tmp_path, "bad", 4)], batch_size=2, max_new_tokens=2)


@pytest.mark.parametrize("question,choices,problem", [
    ("", None, "question must be non-empty"), ("   ", None, "question must be non-empty"),
    ("which?", ["a"], "choices must be 2"), ("which?", ["a", " "], "choices must be 2"),
])
def test_predict_refuses_an_empty_question_or_choice(tiny_export, tmp_path, question, choices, problem):
    model, _ = tiny_export
    make_image(0).save(tmp_path / "q.png")
    with pytest.raises(ValueError, match=problem):
        model.predict(tmp_path / "q.png", question, choices=choices, max_new_tokens=2)


# --- processes ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_loader_workers_die_with_a_killed_parent(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time, torch
        from mmreason.data.shards import EpochLoader

        class Endless(torch.utils.data.IterableDataset):
            batches_per_worker = 10 ** 9
            epoch = 0
            def __iter__(self):
                while True:
                    yield b"x" * (1 << 20)  # pickled through the pipe: fills it, so the worker blocks on it

        for _ in EpochLoader(Endless(), num_workers=1, prefetch_factor=64):
            print(os.getpid(), [c.pid for c in __import__('multiprocessing').active_children()], flush=True)
            time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = parent.stdout.readline().split(maxsplit=1)
    workers = json.loads(line[1])
    assert workers and all(_alive(w) for w in workers)
    time.sleep(1)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [w for w in workers if _alive(w)]
    for orphan in orphans:
        os.kill(orphan, signal.SIGKILL)
    assert not orphans, f"orphaned loader workers {orphans}"



# --- kills at the worst moments (whole training runs: slow) -----------------------------------


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, "train", [7, 2, 5])
    write_shards(folder, "val", [6])
    return folder


def _killed(args: list[str], kill_at: str, tag: str) -> None:
    """Run ``mmreason`` with a SIGKILL at ``kill_at`` (see fault_injection) and check that it died there."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1", "KILL_AT": kill_at,
           "FAULT_TAG": tag}
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "fault_injection.py"), *args],
                            capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def _tagged_processes(tag: str) -> list[int]:
    """Live processes started by a run tagged ``tag`` (children inherit its environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"FAULT_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _no_orphans(tag: str) -> None:
    deadline = time.monotonic() + 15
    while _tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = _tagged_processes(tag)
    for orphan in orphans:
        os.kill(orphan, signal.SIGKILL)
    assert not orphans, f"processes outlived the killed run: {orphans}"


def _step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("kill_at", ["ckpt:4", "step:3"])
def test_a_kill_mid_run_loses_nothing_and_resume_continues_at_the_saved_step(train_shards, tmp_path, kill_at):
    args = fit_args(train_shards, tmp_path, 5, "--checkpoint.every_n_train_steps", "1",
                    "--data.init_args.num_workers", "1")
    _killed(args, kill_at, tag=f"{tmp_path.name}-{kill_at}")
    _no_orphans(f"{tmp_path.name}-{kill_at}")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert _step_of(last) == 3  # the last complete checkpoint before the kill
    mmreason(*args, "--ckpt_path", "last")
    assert _step_of(last) == 5
    assert json.loads((tmp_path / "export" / "config.json").read_text())["metrics"]["global_step"] == 5


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_kill_while_an_export_is_written_keeps_the_previous_export(train_shards, tmp_path):
    mmreason(*fit_args(train_shards, tmp_path, 2))
    export = tmp_path / "export"
    before = (export / "model.safetensors").read_bytes()
    args = fit_args(train_shards, tmp_path, 4, "--data.init_args.num_workers", "1")
    _killed([*args, "--ckpt_path", "last"], "export:export", tag=tmp_path.name)
    _no_orphans(tmp_path.name)
    assert (export / "model.safetensors").read_bytes() == before
    assert json.loads((export / "config.json").read_text())["metrics"]["global_step"] == 2
    load_export(export)
    assert _step_of(tmp_path / "checkpoints" / "last.ckpt") == 4  # the checkpoint written before the export
