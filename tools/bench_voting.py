"""Inference voting: K sampled rationales answered in one batched pipeline call vs K sequential
sampled pipeline calls (rationale, then answer), same model, images and questions.

    python tools/bench_voting.py [--model mccot-tiny | EXPORT_FOLDER] [--votes 8] [--questions 1 8]
                                 [--new-tokens 48] [--repeats 5]

For each batch size it prints the median time of each side and their ratio (goal: <= 0.35).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timing import interleaved_medians

from mmreason.build import create_model
from mmreason.data.schema import Record
from mmreason.export import load_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mccot-tiny", help="a registered mccot model or an export folder")
    parser.add_argument("--votes", type=int, default=8)
    parser.add_argument("--questions", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    parser.add_argument("--new-tokens", type=int, default=48, help="rationale budget")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_export(args.model) if Path(args.model).is_dir() else create_model(args.model).eval()
    size = model.preprocess.image_size
    options = dict(temperature=0.7, max_new_tokens=args.new_tokens, sample=True)
    for n in args.questions:
        images = torch.randn(n, 3, size, size)
        records = [Record(question="how many red shapes are there ?", answer="") for _ in range(n)]

        def batched(images=images, records=records):
            model.run(images, records, votes=args.votes, **options)

        def sequential(images=images, records=records):
            for _ in range(args.votes):
                model.run(images, records, votes=1, **options)

        medians = interleaved_medians({"batched": batched, "sequential": sequential}, args.repeats)
        b, s = medians["batched"], medians["sequential"]
        print(f"{args.votes} votes x {n} question(s), rationales up to {args.new_tokens} tokens:"
              f" batched {b:.3f} s, sequential {s:.3f} s, ratio {b / s:.3f} (goal <= 0.35)")


if __name__ == "__main__":
    main()
