"""Start-up time of the ``mmreason`` command: ``--help`` and ``list`` against ``python -c pass``.

    python tools/bench_cli.py [--repeats 5]

Each command runs in a fresh process (as a user types it), interleaved with the
baseline so machine load hits them alike. Prints the median wall time of each and
its ratio to the baseline; the goal is under 1.5 s for both, which holds only while
neither imports torch, Lightning or transformers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from timing import interleaved_medians

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mmreason --help": [sys.executable, "-m", "mmreason", "--help"],
    "mmreason list": [sys.executable, "-m", "mmreason", "list"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sides = {name: (lambda command=command: subprocess.run(command, check=True, capture_output=True))
             for name, command in COMMANDS.items()}
    medians = interleaved_medians(sides, args.repeats)
    baseline = medians["python -c pass"]
    for name, seconds in medians.items():
        print(f"{name:18s} median {seconds:.3f} s over {args.repeats} runs, {seconds / baseline:.1f}x python -c pass")


if __name__ == "__main__":
    main()
