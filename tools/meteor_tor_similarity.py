"""Do `<tor>` features read without the rationale resemble those read with it? (Meteor, paper Fig. 4)

    python tools/meteor_tor_similarity.py --model runs/meteor-synth-tiny-step2/export \
        --data data/synth-long --split test [--limit 256] [--out tor-similarity.png]

For each sample, the embedder reads image + question twice: with the gold
rationale (`<tor>` placed as in training) and with N bare `<tor>`. Entry (i, j)
of the heatmap is the cosine similarity between the i-th `<tor>` feature with
the rationale and the j-th without it, averaged over samples. A diagonal that
dominates its row means each bare `<tor>` reconstructs its own position of the
rationale. Printed: mean diagonal, mean off-diagonal, their difference, and the
share of rows whose maximum is on the diagonal.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mmreason.data.shards import eval_stream, resolve_shards
from mmreason.export import load_export

CELL = 32


@torch.no_grad()
def tor_similarity(model, images: torch.Tensor, records) -> torch.Tensor:
    """(N, N) cosine similarity, summed over the batch: rows read with the rationale, columns without."""
    read = F.normalize(model.tor_features(images, records, with_rationale=True).float(), dim=-1)
    bare = F.normalize(model.tor_features(images, records, with_rationale=False).float(), dim=-1)
    return torch.einsum("bid,bjd->ij", read, bare)


def diagonal_dominance(similarity: torch.Tensor) -> dict[str, float]:
    """Mean diagonal vs. mean off-diagonal of a square matrix, and the share of rows peaking on it."""
    n = similarity.shape[0]
    diagonal = similarity.diagonal()
    off = similarity[~torch.eye(n, dtype=torch.bool)]
    return {"diagonal": float(diagonal.mean()), "off_diagonal": float(off.mean()) if n > 1 else float("nan"),
            "dominance": float(diagonal.mean() - off.mean()) if n > 1 else float("nan"),
            "rows_peaking_on_diagonal": float((similarity.argmax(dim=1) == torch.arange(n)).float().mean())}


def heatmap(similarity: torch.Tensor, path: str) -> None:
    """A PNG heatmap, −1 blue … 0 white … 1 red, one CELL-pixel square per entry."""
    n = similarity.shape[0]
    image = Image.new("RGB", (n * CELL, n * CELL), "white")
    draw = ImageDraw.Draw(image)
    for i in range(n):
        for j in range(n):
            v = max(-1.0, min(1.0, float(similarity[i, j])))
            fade = int(255 * (1 - abs(v)))
            colour = (255, fade, fade) if v >= 0 else (fade, fade, 255)
            draw.rectangle([j * CELL, i * CELL, (j + 1) * CELL - 1, (i + 1) * CELL - 1], fill=colour)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Meteor export folder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--out", default="tor-similarity.png")
    args = parser.parse_args()
    model = load_export(args.model)
    stream, _ = eval_stream(resolve_shards(args.data, args.split), model.preprocess, batch_size=64)
    stream.max_samples = args.limit
    total, count = None, 0
    for batch in torch.utils.data.DataLoader(stream, batch_size=None):
        summed = tor_similarity(model, model.preprocess.normalize(batch["pixels"]), batch["records"])
        total = summed if total is None else total + summed
        count += len(batch["records"])
    if not count:
        raise SystemExit(f"no samples in {args.data} split {args.split!r}")
    similarity = total / count
    heatmap(similarity, args.out)
    print(json.dumps({"samples": count, **diagonal_dominance(similarity), "heatmap": args.out}, indent=1))


if __name__ == "__main__":
    main()
