"""Daily use of the command: one-line errors, quiet logs, metrics on disk, a run's config re-runs, fast start."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, fit_args, make_image, mmreason, write_shards

from mmreason.cli import main
from mmreason.training.progress import readable
from mmreason.zoo import catalogue, list_models, model_info


@pytest.fixture
def failing(capsys):
    """``mmreason ARGS`` run in this process, which must fail as a user's mistake: exit status 2 and one
    line on stderr, which it returns."""
    def run(*args: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main(list(args))
        err = capsys.readouterr().err
        errors = [line for line in err.strip().splitlines() if not line.startswith(("INFO", "WARNING"))]
        assert stopped.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
        return errors[0]
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step fit validated at its end, with the default logging interval and progress bar."""
    data, root = tmp_path_factory.mktemp("shards"), tmp_path_factory.mktemp("run")
    write_shards(data, "train", [7, 2, 5])
    write_shards(data, "val", [6])
    args = fit_args(data, root, 4)
    for option in ("--trainer.log_every_n_steps", "--trainer.enable_progress_bar"):
        del args[args.index(option):args.index(option) + 2]
    return root, mmreason(*args)


def test_a_users_mistake_is_one_line_and_exit_status_2(run, tmp_path, failing):
    root, _ = run
    assert "export folder" in failing("predict", "--model", str(tmp_path / "nope"), "--image", "x.png",
                                      "--question", "hi")
    missing = failing("predict", "--model", str(root / "export"), "--image", str(tmp_path / "nope.png"),
                      "--question", "hi")
    assert "nope.png: No such file or directory" in missing
    make_image(0).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:200])
    assert failing("predict", "--model", str(root / "export"), "--image", str(tmp_path / "cut.jpg"),
                   "--question", "hi").startswith("mmreason predict: error:")
    assert "unrecognized arguments: --bogus" in failing("export", "--ckpt", "a", "--out", "b", "--bogus")
    assert "unrecognized arguments: --bogus" in failing("fit", "--bogus", "1")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    command = ["export", "--ckpt", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "out")]
    monkeypatch.setenv("MMREASON_DEBUG", "0")  # recorded unset: --debug sets it, teardown unsets it for later tests
    with pytest.raises(FileNotFoundError, match="x.ckpt"):  # the exception itself, with its traceback
        main([*command, "--debug"])
    monkeypatch.setenv("MMREASON_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="x.ckpt"):
        main(command)

def test_a_fit_logs_each_line_once_without_noise(run):
    _, result = run
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith(("INFO", "WARNING"))]
    assert lines and len(lines) == len(set(lines)), result.stderr[-3000:]
    for noise in ("absl", "Tip", "Unable to serialize", "args parameter", "IterableDataset", "eval mode"):
        assert noise not in result.stderr, noise
    assert "train: 100%" in result.stderr and "4/4" in result.stderr and "step/s" in result.stderr


def test_metrics_reach_the_csv_and_the_card(run):
    root, _ = run
    with open(root / "lightning_logs" / "version_0" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(bool(r["train/loss"]) for r in rows) >= 4 and any(r["val/accuracy"] for r in rows)
    assert "| val/accuracy |" in (root / "export" / "README.md").read_text()


def test_the_saved_config_re_runs_and_a_resumed_card_keeps_its_metrics(run):
    root, _ = run
    config = root / "lightning_logs" / "version_0" / "config.yaml"
    assert yaml.safe_load(config.read_text())["trainer"]["plugins"] is None
    mmreason("fit", "-c", str(config), "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0",
             "--ckpt_path", "last")
    card = (root / "export" / "README.md").read_text()
    assert "| global_step | 6 |" in card and "| val/accuracy |" in card


def test_synth_counts_given_on_the_command_line_are_numbers():
    from mmreason.training.cli import RecipeParser, run_lightning_cli

    cli = run_lightning_cli(["-c", str(ROOT / "recipes" / "baseline" / "synth-tiny-cot.yaml"),
                             "--data.init_args.synth.train", "100"], RecipeParser, run=False)
    assert cli.config.as_dict()["data"]["init_args"]["synth"]["train"] == 100


def test_help_and_list_start_without_torch():
    """What keeps them under a second: neither may import torch (nor Lightning, transformers)."""
    script = ("import sys, contextlib, io\nfrom mmreason.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()) as out:\n    main(['list'])\n"
              "    with contextlib.suppress(SystemExit):\n        main(['--help'])\n"
              "print('torch' in sys.modules, 'baseline-tiny-cot' in out.getvalue(), 'predict' in out.getvalue())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True", "True"]


def test_the_catalogue_names_what_the_families_register():
    assert catalogue() == {name: model_info(name)["description"] for name in list_models()}
    assert list(catalogue("baseline-*")) == ["baseline-tiny", "baseline-tiny-cot"]


def test_the_progress_bar_shows_short_metric_names():
    assert readable({"train/loss": 1.234567, "v_num": 0, "reward": 0.5}) == {"loss": "1.235", "reward": "0.5"}


def test_plot_metrics_reads_a_run_folder(run, tmp_path):
    root, _ = run
    subprocess.run([sys.executable, str(ROOT / "tools" / "plot_metrics.py"), str(root), "--metric", "train/loss",
                    "--out", str(tmp_path / "loss.png")], check=True, capture_output=True, cwd=ROOT)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
