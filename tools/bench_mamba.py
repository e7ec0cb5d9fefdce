"""CPU speed of our Mamba block against transformers' PyTorch paths, and of Mamba against attention.

    python tools/bench_mamba.py [--lengths 256 1024 4096] [--batch 4] [--repeats 3] [--hidden 768]
                                [--sequential-max 1024] [--embedder-lengths 512 1024 2048 4096 8192]

Without the CUDA kernels (mamba-ssm), Mamba's cost on CPU is the selective scan.
All times are forward + backward in float32 on the CPU, the median of --repeats
rounds after one warm-up, the compared sides interleaved within each round (so
machine noise hits them alike), from ``torch.manual_seed(0)``.

1. Scan speed, one Mamba-130M-like mixer (hidden 768, state 16, expand 2, conv 4,
   dt_rank auto), batch --batch: our `MambaBlock` (chunked parallel scan) vs
   transformers' `MambaMixer` with its sequential loop (``use_mambapy=False``; only
   up to --sequential-max tokens) and with the mamba.py parallel scan
   (``use_mambapy=True``; needs ``pip install mambapy``, else the column is skipped,
   as transformers would silently fall back to the loop). All three get the same
   weights and inputs, and the largest output difference to ours is printed.
   Goals: at least mambapy's speed at every length (mambapy/ours ≥ 1.0), and time
   linear in length (growth / length ratio ≈ 1).
2. Why Mamba as Meteor's rationale embedder: a 2-layer `MambaStack` against a
   2-layer causal `nn.TransformerEncoder` of the same width (nhead 8, ff 4·d, no
   dropout), batch 1. Goals: Mamba faster at every length ≥ 2048, and ≥ 3× faster at 8192.
"""

from __future__ import annotations

import argparse
import functools

import torch
import transformers
from timing import interleaved_medians
from torch import nn
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer
from transformers.utils.import_utils import is_mambapy_available

from mmreason.layers.mamba import MambaBlock, MambaStack


def fwd_bwd(module: nn.Module, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
    module.zero_grad(set_to_none=True)
    output = module(*inputs, **kwargs)
    output.sum().backward()
    return output.detach()


def mamba_config(hidden: int, layers: int = 1, **overrides) -> MambaConfig:
    return MambaConfig(hidden_size=hidden, state_size=16, expand=2, conv_kernel=4, time_step_rank="auto",
                       num_hidden_layers=layers, vocab_size=32, **overrides)


def fmt(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.4f}"


def bench_scan(args: argparse.Namespace) -> None:
    print(f"\n== 1. scan speed: one mixer, hidden {args.hidden}, state 16, expand 2, batch {args.batch}, "
          f"forward+backward (s) ==")
    ours = MambaBlock(mamba_config(args.hidden)).train()
    sequential = MambaMixer(mamba_config(args.hidden, use_mambapy=False, use_associative_scan=False),
                            layer_idx=0).train()
    sequential.load_state_dict(ours.state_dict())
    mambapy = None
    if is_mambapy_available():
        mambapy = MambaMixer(mamba_config(args.hidden, use_mambapy=True), layer_idx=0).train()
        mambapy.load_state_dict(ours.state_dict())
    else:
        print("mambapy column skipped: package `mambapy` is not installed (pip install mambapy); "
              "transformers imports `mambapy.pscan` from it and without it silently runs the sequential loop")
    print(f"{'L':>6} {'ours':>9} {'mambapy':>9} {'sequential':>10} {'mambapy/ours':>12} {'seq/ours':>9}")
    ours_times, differences, skipped = {}, {}, []
    for length in args.lengths:
        x = torch.randn(args.batch, length, args.hidden)
        sides = {"ours": ours, "mambapy": mambapy,
                 "sequential": sequential if length <= args.sequential_max else None}
        sides = {name: functools.partial(fwd_bwd, mixer, x) for name, mixer in sides.items() if mixer is not None}
        times = {"mambapy": None, "sequential": None, **interleaved_medians(sides, args.repeats)}
        ours_times[length] = times["ours"]
        reference = sides["ours"]()
        for name in sides.keys() - {"ours"}:
            differences[name] = max(differences.get(name, 0.0), (sides[name]() - reference).abs().max().item())
        if length > args.sequential_max:
            skipped.append(length)
        ratios = [f"{times[name] / ours_times[length]:.2f}" if times[name] is not None else "—"
                  for name in ("mambapy", "sequential")]
        print(f"{length:>6} {fmt(ours_times[length]):>9} {fmt(times['mambapy']):>9} "
              f"{fmt(times['sequential']):>10} {ratios[0]:>12} {ratios[1]:>9}", flush=True)
        if times["mambapy"] is not None and times["mambapy"] < ours_times[length]:
            print(f"       goal missed at L={length}: mambapy/ours < 1.0")
    if skipped:
        print(f"sequential skipped at L={', '.join(map(str, skipped))}: above --sequential-max "
              f"{args.sequential_max} (a Python loop over every token, forward and backward)")
    if differences:
        print("same function: max |output − ours| "
              + ", ".join(f"{name} {difference:.1e}" for name, difference in differences.items()))
    shortest, longest = min(ours_times), max(ours_times)
    if longest > shortest:
        growth = (ours_times[longest] / ours_times[shortest]) / (longest / shortest)
        print(f"ours L={shortest}→{longest}: time ×{ours_times[longest] / ours_times[shortest]:.2f} for "
              f"length ×{longest / shortest:.0f}; growth/length = {growth:.2f} (≈1 linear, <1 sublinear)")


class CausalEncoder(nn.Module):
    """`nn.TransformerEncoder` with a causal mask, so it sees what a left-to-right Mamba sees."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        layer = nn.TransformerEncoderLayer(hidden, nhead=8, dim_feedforward=4 * hidden, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.encoder(x, mask=mask, is_causal=True)


def count(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def bench_embedder(args: argparse.Namespace) -> None:
    mamba = MambaStack(mamba_config(args.hidden, layers=2)).train()
    transformer = CausalEncoder(args.hidden, layers=2).train()
    print(f"\n== 2. embedder: 2-layer MambaStack ({count(mamba)} params) vs 2-layer causal TransformerEncoder "
          f"({count(transformer)}), d={args.hidden}, batch 1, forward+backward (s) ==")
    print(f"{'L':>6} {'mamba':>9} {'transformer':>11} {'transformer/mamba':>17}")
    ratios = {}
    for length in args.embedder_lengths:
        x = torch.randn(1, length, args.hidden)
        times = interleaved_medians({"mamba": functools.partial(fwd_bwd, mamba, x),
                                     "transformer": functools.partial(fwd_bwd, transformer, x)}, args.repeats)
        mamba_time, transformer_time = times["mamba"], times["transformer"]
        ratios[length] = transformer_time / mamba_time
        print(f"{length:>6} {fmt(mamba_time):>9} {fmt(transformer_time):>11} {ratios[length]:>17.2f}", flush=True)
    lengths = sorted(ratios)
    crossover = next((length for i, length in enumerate(lengths)
                      if all(ratios[longer] > 1.0 for longer in lengths[i:])), None)
    print("crossover (shortest L from which Mamba is faster at every longer measured L): "
          + (str(crossover) if crossover is not None else "none — the transformer is faster at the longest L"))
    long = [length for length in lengths if length >= 2048]
    if long:
        met = all(ratios[length] > 1.0 for length in long)
        print(f"goal 'Mamba faster at every L ≥ 2048': {'met' if met else 'missed'} (L={', '.join(map(str, long))})")
    else:
        print("goal 'Mamba faster at every L ≥ 2048': not measured (no --embedder-lengths ≥ 2048)")
    if 8192 in ratios:
        print(f"goal 'Mamba ≥ 3× faster at 8192': {'met' if ratios[8192] >= 3.0 else 'missed'} "
              f"({ratios[8192]:.2f}×)")
    else:
        print("goal 'Mamba ≥ 3× faster at 8192': not measured (8192 not in --embedder-lengths)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=768, help="model width; a multiple of 8 (attention heads)")
    parser.add_argument("--sequential-max", type=int, default=1024,
                        help="longest L for transformers' sequential loop")
    parser.add_argument("--embedder-lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    args = parser.parse_args()
    if args.hidden % 8:
        parser.error(f"--hidden must be a multiple of 8 (the transformer's heads), got {args.hidden}")
    transformers.logging.set_verbosity_error()  # its "falling back to the PyTorch implementation" warnings
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, float32 on CPU")
    bench_scan(args)
    bench_embedder(args)


if __name__ == "__main__":
    main()
