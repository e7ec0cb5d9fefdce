"""How well a model's generated rationales describe the scene: perception vs. reasoning errors.

    python tools/synth_grounding.py --model runs/baseline-synth-tiny-cot/export \
        --data data/synth-basic --split test [--limit 512]

For every object a rationale mentions ("the small red circle at the top left"),
checks against the scene graph whether such an object exists: by colour, by
shape, by size, by all three, and at the stated position. The same check on the
gold rationales must give 100%, so the numbers measure the model. Low
attribute grounding with a well-formed rationale means perception, not the
language model's reasoning, limits accuracy.
"""

from __future__ import annotations

import argparse

import torch

from mmreason.data.grounding import CHECKS, grounding
from mmreason.data.shards import eval_stream, resolve_shards
from mmreason.export import load_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    model = load_export(args.model)
    stream, _ = eval_stream(resolve_shards(args.data, args.split), model.preprocess, batch_size=64)
    stream.max_samples = args.limit
    totals = {who: {check: [] for check in CHECKS} for who in ("model", "gold")}
    for batch in torch.utils.data.DataLoader(stream, batch_size=None):
        images = model.preprocess.normalize(batch["pixels"])
        texts = model.answer_batch(images, batch["records"], max_new_tokens=args.max_new_tokens)
        for text, record in zip(texts, batch["records"]):
            scene, size = record.meta["scene"], record.meta["image_size"]
            size = size[0] if isinstance(size, list) else size  # (width, height): scenes are square
            for who, source in (("model", text), ("gold", record.rationale or "")):
                for check, hits in grounding(source, scene, size).items():
                    totals[who][check] += hits
    print(f"{'check':16s} {'model %':>8s} {'gold %':>8s} {'mentions':>9s}")
    for check in CHECKS:
        model_hits, gold_hits = totals["model"][check], totals["gold"][check]
        rate = 100 * sum(model_hits) / max(1, len(model_hits))
        gold = 100 * sum(gold_hits) / max(1, len(gold_hits))
        print(f"{check:16s} {rate:8.1f} {gold:8.1f} {len(model_hits):9d}")


if __name__ == "__main__":
    main()
