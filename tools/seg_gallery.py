"""A gallery of a segmentation model's masks beside the ground truth, for a model card.

    python tools/seg_gallery.py --model runs/star-synth-tiny/export [--split test] [--start 0] \
        [--count 6] [--columns 2] --out model_cards/figures/star-gallery.png

Each sample is the benchmark's segmentation question ``make_sample(SynthConfig(tasks=("seg",)), split, i)``
(a pure function of split and index, so the figure is remade without shards), shown as three panels —
the image, the ground truth tinted green, the greedy prediction tinted red — captioned with the
question, the model's answer and the mask's IoU as gIoU averages it (LISA semantics). A reader sees
what the model was asked, what it should have found, and what it found.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmreason.data.synth import SynthConfig, make_sample
from mmreason.eval.segmentation import intersection_union, mask_score
from mmreason.export import load_export
from mmreason.overlay import INFO, NO_OBJECT, caption_lines, font, tinted, upscaled, with_caption

PANEL, GAP = 192, 12
TRUTH, PREDICTION = (60, 180, 75), (230, 25, 75)


def labelled(picture: Image.Image, label: str) -> Image.Image:
    """``picture`` with ``label`` written above it, so the three panels need no legend."""
    size = max(13, PANEL // 14)
    framed = Image.new("RGB", (picture.width, picture.height + size + 8), "white")
    framed.paste(picture, (0, size + 8))
    ImageDraw.Draw(framed).text((4, 3), label, fill="black", font=font(size))
    return framed


def tile(picture: Image.Image, truth: torch.Tensor, prediction: dict, question: str) -> tuple[Image.Image, float]:
    """One sample: image | ground truth | prediction side by side, captioned; and the mask's IoU."""
    mask = prediction["mask"].cpu()
    if mask.shape != truth.shape:
        mask = torch.from_numpy(np.asarray(Image.fromarray(mask.numpy()).resize(truth.shape[::-1]))) > 0
    iou = mask_score(*intersection_union(mask, truth))
    base = upscaled(picture, PANEL)
    panels = [labelled(base, "image"), labelled(tinted(base, truth, TRUTH), "ground truth"),
              labelled(tinted(base, mask, PREDICTION), "prediction")]
    row = Image.new("RGB", (sum(p.width for p in panels) + GAP * (len(panels) - 1), panels[0].height), "white")
    for i, panel in enumerate(panels):
        row.paste(panel, (i * (panel.width + GAP), 0))
    found = prediction.get("found", True) and bool(mask.any())
    entries = caption_lines(question, prediction.get("answer"), f"IoU {iou:.2f}", INFO)
    if not found:
        entries += caption_lines(note=NO_OBJECT)
    return with_caption(row, entries, size=max(13, PANEL // 12)), iou


def gallery(tiles: list[Image.Image], columns: int) -> Image.Image:
    """``tiles`` in a grid, ``columns`` wide, rows as tall as their tallest tile."""
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    width = max(sum(t.width for t in row) + GAP * 2 * (len(row) - 1) for row in rows)
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (width + 2 * GAP, sum(heights) + GAP * (len(rows) + 1)), "white")
    y = GAP
    for row, height in zip(rows, heights):
        x = GAP
        for t in row:
            sheet.paste(t, (x, y))
            x += t.width + 2 * GAP
        y += height + GAP
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a segmentation export folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--start", type=int, default=0, help="the first sample's index")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--columns", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", default="gallery.png")
    args = parser.parse_args()
    model = load_export(args.model)
    config = SynthConfig(tasks=("seg",))
    tiles, scores = [], []
    for index in range(args.start, args.start + args.count):
        _, picture, record, mask = make_sample(config, args.split, index)
        truth = torch.from_numpy(np.asarray(mask) > 0)
        prediction = model.predict(picture, record["question"], max_new_tokens=args.max_new_tokens)
        image, iou = tile(picture, truth, prediction, record["question"])
        tiles.append(image)
        scores.append({"index": index, "question": record["question"], "answer": prediction.get("answer"),
                       "iou": round(iou, 3)})
    gallery(tiles, args.columns).save(args.out)
    print(json.dumps({"gallery": args.out, "samples": scores}, indent=1))


if __name__ == "__main__":
    main()
