"""Samples/s of the full shard pipeline vs plain PIL decoding of the same shard members.

    python tools/bench_data.py [--data 'data/synth/train-00000{0..1}.tar'] [--repeats 3]

Without ``--data`` it writes 2,000 synthetic samples to a temporary folder.
The baseline reads each tar with ``tarfile`` and decodes every image member
(masks included) with PIL; the pipeline does that plus record validation, resizing,
normalisation, shuffling-free batching and collation. Prints medians and the
ratio pipeline/baseline (goal >= 0.9) for 0 and 1 loader workers.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import tempfile
import time

import torch
from PIL import Image

from mmreason.data.preprocess import Preprocess
from mmreason.data.shards import eval_stream, resolve_shards
from mmreason.data.synth import SynthConfig
from mmreason.data.synth_shards import synthesize


def plain_pil(urls: list[str]) -> int:
    n = 0
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith((".png", ".jpg")):  # masks too: the pipeline decodes them
                    Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB").load()
                    n += 1
    return n


def pipeline(urls: list[str], pre: Preprocess, workers: int) -> int:
    stream, _ = eval_stream(urls, pre, batch_size=64)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return sum(len(batch["keys"]) for batch in loader)


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="shard pattern (default: 2,000 fresh synthetic samples)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            synthesize(tmp, {"train": 2000}, SynthConfig(image_size=args.image_size), samples_per_shard=500,
                       progress=False)
            args.data = tmp
        urls = resolve_shards(args.data, "train" if args.data == tmp else None)
        pre = Preprocess(image_size=args.image_size)
        rates: dict[str, list[float]] = {"pil": [], "pipeline-0": [], "pipeline-1": []}
        for _ in range(args.repeats):
            rates["pil"].append(timed(lambda: plain_pil(urls))[0])
            for workers in (0, 1):
                rates[f"pipeline-{workers}"].append(timed(lambda w=workers: pipeline(urls, pre, w))[0])
    base = statistics.median(rates["pil"])
    print(f"plain PIL decode          median {base:8.0f} samples/s")
    for workers in (0, 1):
        rate = statistics.median(rates[f"pipeline-{workers}"])
        print(f"pipeline, {workers} loader worker(s) median {rate:8.0f} samples/s  "
              f"ratio {rate / base:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
