"""The metrics chart tool: reading Lightning's CSV, smoothing, drawing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("plot_metrics", ROOT / "tools" / "plot_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_series_skip_rows_without_the_metric_and_smoothing_is_trailing(tool, tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/reward,val/accuracy\n0,1,0.5,\n0,1,,0.3\n0,3,1.5,\n0,5,1.0,\n")
    assert tool.read_series(str(path), "train/reward") == [(1.0, 0.5), (3.0, 1.5), (5.0, 1.0)]
    assert tool.smooth([0.5, 1.5, 1.0], 2) == [0.5, 1.0, 1.25]
    with pytest.raises(SystemExit, match="no column 'train/kl'"):
        tool.read_series(str(path), "train/kl")


def test_chart_draws_each_run_with_axes_and_a_legend(tool, tmp_path):
    pytest.importorskip("matplotlib")
    figure = tool.chart({"a": [(0, 0.0), (10, 1.0)], "b": [(0, 1.0), (10, 0.0)]}, "reward", str(tmp_path / "c.png"),
                        y_label="train/reward")
    assert Image.open(tmp_path / "c.png").size == (tool.WIDTH, tool.HEIGHT)
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == ("step", "train/reward", "reward")
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["a", "b"]
    assert [list(line.get_ydata()) for line in axes.get_lines()] == [[0.0, 1.0], [1.0, 0.0]]
