"""Do `<tor>` features read without the rationale resemble those read with it? (Meteor, paper Fig. 4)

    python tools/meteor_tor_similarity.py --model runs/meteor-synth-tiny-step2/export \
        --data data/synth-long --split test [--limit 256] [--out tor-similarity.png] [--title TEXT]

For each sample, the embedder reads image + question twice: with the gold
rationale (`<tor>` placed as in training) and with N bare `<tor>`. Entry (i, j)
of the heatmap is the cosine similarity between the i-th `<tor>` feature with
the rationale and the j-th without it, averaged over samples. A diagonal that
dominates its row means each bare `<tor>` reconstructs its own position of the
rationale. Printed: mean diagonal, mean off-diagonal, their difference, and the
share of rows whose maximum is on the diagonal; the heatmap (`--out`) is drawn with
matplotlib (`pip install 'mmreason[plots]'`).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from mmreason.data.shards import eval_stream, resolve_shards
from mmreason.export import load_export


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


def heatmap(similarity: torch.Tensor, path: str, title: str = "<tor> similarity") -> None:
    """A PNG heatmap with labelled axes, a colour bar (−1 blue … 0 white … 1 red) and, for a matrix
    small enough to read, each entry written in its cell."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("the heatmap needs matplotlib: pip install 'mmreason[plots]'") from error
    n = similarity.shape[0]
    figure, axes = plt.subplots(figsize=(6.4, 5.4), dpi=120, layout="constrained")
    image = axes.imshow(similarity.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    figure.colorbar(image, ax=axes, label="cosine similarity")
    axes.set_xticks(range(n))
    axes.set_yticks(range(n))
    axes.set_xlabel("j: position of the <tor> read without the rationale")
    axes.set_ylabel("i: position of the <tor> read with the rationale")
    axes.set_title(title)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                value = float(similarity[i, j])
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if abs(value) > 0.6 else "black")
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Meteor export folder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--out", default=None, help="also draw the heatmap to this PNG (needs matplotlib)")
    parser.add_argument("--title", default=None, help="the heatmap's title (default: the export and sample count)")
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
    if args.out:
        heatmap(similarity, args.out, args.title or f"<tor> similarity: {args.model}, {count} {args.split} samples")
    print(json.dumps({"samples": count, **diagonal_dominance(similarity), "heatmap": args.out}, indent=1))


if __name__ == "__main__":
    main()
