"""Line chart (PNG) of logged training metrics against the step, from Lightning's CSV logs.

    python tools/plot_metrics.py runs/virl-synth-tiny-grpo/lightning_logs/version_0/metrics.csv \
        [more.csv ...] --metric train/reward [--smooth 5] [--labels outcome step] --out reward.png

Several CSV files (runs) are drawn in one chart, one colour each; ``--smooth`` is a trailing
moving average over that many logged points. Drawn with Pillow only (no plotting library).
"""

from __future__ import annotations

import argparse
import csv

from PIL import Image, ImageDraw

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
WIDTH, HEIGHT, MARGIN = 640, 400, 56


def read_series(path: str, metric: str) -> list[tuple[float, float]]:
    """(step, value) of every row of a Lightning metrics.csv where ``metric`` was logged."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and metric not in rows[0]:
        raise SystemExit(f"{path} has no column {metric!r}; columns: {sorted(rows[0])}")
    return [(float(r["step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    return [sum(values[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def chart(series: dict[str, list[tuple[float, float]]], title: str, out: str) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    points = [p for s in series.values() for p in s]
    if not points:
        raise SystemExit("nothing to draw: no logged values")
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (MARGIN + (x - x0) / (x1 - x0) * (WIDTH - 2 * MARGIN),
                HEIGHT - MARGIN - (y - y0) / (y1 - y0) * (HEIGHT - 2 * MARGIN))

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    for i in range(5):  # ticks
        y = y0 + (y1 - y0) * i / 4
        draw.text((4, at(x0, y)[1] - 6), f"{y:.3g}", fill="black")
        x = x0 + (x1 - x0) * i / 4
        draw.text((at(x, y0)[0] - 10, HEIGHT - MARGIN + 6), f"{x:.0f}", fill="black")
    draw.text((WIDTH // 2 - 16, HEIGHT - 20), "step", fill="black")
    draw.text((MARGIN, 16), title, fill="black")
    for i, (label, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        draw.line([at(x, y) for x, y in values], fill=colour, width=2)
        draw.text((WIDTH - MARGIN - 150, MARGIN + 6 + 14 * i), label, fill=colour)
    image.save(out)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="Lightning metrics.csv files, one per run")
    parser.add_argument("--metric", default="train/reward")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per file")
    parser.add_argument("--smooth", type=int, default=1)
    parser.add_argument("--out", default="metrics.png")
    args = parser.parse_args()
    labels = args.labels or args.csv
    if len(labels) != len(args.csv):
        raise SystemExit(f"--labels gives {len(labels)} labels for {len(args.csv)} files")
    series = {}
    for label, path in zip(labels, args.csv):
        points = read_series(path, args.metric)
        series[label] = list(zip([s for s, _ in points], smooth([v for _, v in points], args.smooth)))
    chart(series, args.metric + (f" (moving average of {args.smooth})" if args.smooth > 1 else ""), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
