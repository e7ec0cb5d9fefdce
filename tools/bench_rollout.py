"""GRPO rollouts: a group of G sampled rollouts (crop actions included) generated together vs G
sequential rollouts of the same prompt, same policy and image.

    python tools/bench_rollout.py [--model virl-tiny | EXPORT_FOLDER] [--group 8] [--prompts 1 4]
                                  [--new-tokens 96] [--repeats 5]

Each side re-seeds the sampler before it runs, so both sample from the same state. For each number
of prompts it prints rollouts/s of each side and the time ratio batched / sequential (goal <= 0.35).
Use a trained export (e.g. runs/virl-synth-tiny-sft/export): a random policy rarely crops.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timing import interleaved_medians

from mmreason.build import create_model
from mmreason.data.schema import Record
from mmreason.data.synth import SynthConfig, make_sample
from mmreason.export import load_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="virl-tiny", help="a registered virl model or an export folder")
    parser.add_argument("--group", type=int, default=8, help="G, rollouts per prompt")
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = (load_export(args.model) if Path(args.model).is_dir() else create_model(args.model)).eval()
    config = SynthConfig(image_size=model.preprocess.image_size, tasks=("exist", "count", "attribute", "relation"))
    samples = [make_sample(config, "test", i) for i in range(max(args.prompts))]
    options = dict(max_new_tokens=args.new_tokens, do_sample=True, temperature=1.0)
    for n in args.prompts:
        images = torch.stack([model.preprocess(image) for _, image, _, _ in samples[:n]])
        records = [Record(question=r["question"], answer="", choices=r["choices"]) for _, _, r, _ in samples[:n]]
        counts = {}

        def batched(images=images, records=records, counts=counts):
            torch.manual_seed(1)
            counts["batched"] = model.rollout(images, records, samples=args.group, **options)

        def sequential(images=images, records=records, counts=counts):
            torch.manual_seed(1)
            counts["sequential"] = [t for _ in range(args.group) for t in model.rollout(images, records, **options)]

        medians = interleaved_medians({"batched": batched, "sequential": sequential}, args.repeats)
        b, s = medians["batched"], medians["sequential"]
        rollouts = n * args.group
        actions = {side: sum(len(t.actions) for t in ts) / len(ts) for side, ts in counts.items()}
        print(f"G={args.group} x {n} prompt(s), up to {args.new_tokens} tokens: batched {rollouts / b:.1f} "
              f"rollouts/s, sequential {rollouts / s:.1f} rollouts/s; time ratio {b / s:.3f} (goal <= 0.35); "
              f"actions per rollout {actions['batched']:.2f} / {actions['sequential']:.2f}")


if __name__ == "__main__":
    main()
