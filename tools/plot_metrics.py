"""Line chart (PNG) of logged training metrics against the step, from Lightning's CSV logs.

    python tools/plot_metrics.py runs/baseline-synth-tiny-cot [more runs ...] --metric train/loss \
        [--smooth 5] [--labels a b] --out loss.png

Each argument is a run: its folder (every ``lightning_logs/version_*/metrics.csv``
under it, read in order, so a resumed run continues its first part) or one
``metrics.csv``. Runs are drawn in one chart, one colour each, with the step on
the x axis, the metric on the y axis and a legend of the runs (``--labels``;
default: the run folders' names). ``--smooth`` is a trailing moving average over
that many logged points. Drawn with matplotlib (`pip install "mmreason[plots]"`).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
WIDTH, HEIGHT = 640, 400  # pixels of the saved chart
LOGS = "lightning_logs"


def read_series(path: str, metric: str) -> list[tuple[float, float]]:
    """(step, value) of every row of a Lightning metrics.csv where ``metric`` was logged."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and metric not in rows[0]:
        raise SystemExit(f"{path} has no column {metric!r}; columns: {sorted(rows[0])}")
    return [(float(r["step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]


def metrics_files(run: str) -> list[Path]:
    """The metrics.csv files of a run folder, oldest version first (or the file itself)."""
    path = Path(run)
    if path.is_file():
        return [path]
    files = sorted(path.rglob("metrics.csv"), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])
    if not files:
        raise SystemExit(f"{run}: no metrics.csv under it (training writes {LOGS}/version_N/metrics.csv)")
    return files


def _columns(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle), [])


def run_series(run: str, metric: str) -> list[tuple[float, float]]:
    """A run's (step, value) points over all its versions that logged ``metric``, by step (a resumed
    run's part replaces any steps its first part logged again)."""
    files = metrics_files(run)
    points = {}
    for path in [p for p in files if metric in _columns(p)] or files[:1]:  # none: the first names its columns
        points.update(read_series(str(path), metric))
    return sorted(points.items())


def run_label(run: str) -> str:
    """The run folder's name: ``runs/NAME`` or ``runs/NAME/lightning_logs/version_0/metrics.csv`` → NAME."""
    parts = Path(run).parts
    return parts[parts.index(LOGS) - 1] if LOGS in parts[1:] else Path(run).name


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    return [sum(values[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def chart(series: dict[str, list[tuple[float, float]]], title: str, out: str, y_label: str | None = None):
    """One line per run against the step, with labelled axes, a legend and a grid (matplotlib, the
    ``plots`` extra); returns the figure."""
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit("plotting needs matplotlib: pip install 'mmreason[plots]'") from err
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if not any(series.values()):
        raise SystemExit("nothing to draw: no logged values")
    figure, axes = plt.subplots(figsize=(WIDTH / 100, HEIGHT / 100), dpi=100)
    for i, (label, values) in enumerate(series.items()):
        axes.plot([x for x, _ in values], [y for _, y in values], color=COLOURS[i % len(COLOURS)], label=label)
    axes.set(title=title, xlabel="step", ylabel=y_label or title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or metrics.csv files, one per run")
    parser.add_argument("--metric", default="train/loss", help="a column of metrics.csv (default: train/loss)")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    parser.add_argument("--smooth", type=int, default=1)
    parser.add_argument("--out", default="metrics.png")
    args = parser.parse_args()
    labels = args.labels or [run_label(run) for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels gives {len(labels)} labels for {len(args.runs)} runs")
    series = {}
    for label, run in zip(labels, args.runs):
        points = run_series(run, args.metric)
        series[label] = list(zip([s for s, _ in points], smooth([v for _, v in points], args.smooth)))
    title = args.metric + (f" (moving average of {args.smooth})" if args.smooth > 1 else "")
    chart(series, title, args.out, y_label=args.metric)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
