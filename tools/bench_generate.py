"""K samples per prompt in one batched call vs K sequential calls, same model and prompts.

    python tools/bench_generate.py [--k 8] [--prompts 8] [--new-tokens 48] [--repeats 5]

Prints the median time of each and their ratio (goal: batched/sequential <= 0.35).
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians

from mmreason.build import create_model
from mmreason.data.schema import Record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="baseline-tiny-cot")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    size = model.preprocess.image_size
    images = torch.randn(args.prompts, 3, size, size)
    records = [Record(question="how many red shapes are there?", answer="") for _ in range(args.prompts)]
    # a fixed number of new tokens, so both sides do the same work whatever the untrained model emits
    sampling = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True)

    def batched():
        model.generate(images, records, num_return_sequences=args.k, **sampling)

    def sequential():
        for _ in range(args.k):
            model.generate(images, records, **sampling)

    medians = interleaved_medians({"batched": batched, "sequential": sequential}, args.repeats)
    b, s = medians["batched"], medians["sequential"]
    print(f"K={args.k} samples x {args.prompts} prompts x {args.new_tokens} new tokens")
    print(f"batched    median {b:.3f} s")
    print(f"sequential median {s:.3f} s")
    print(f"ratio batched/sequential = {b / s:.3f} (goal <= 0.35)")


if __name__ == "__main__":
    main()
