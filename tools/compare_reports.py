"""Model-card tables from `mmreason eval --out` reports: accuracy per task with standard errors,
and the difference of two rows with its standard error (inside two standard errors: "no difference").

    python tools/compare_reports.py direct=direct-test.json rationale=cot-test.json [--diff rationale-direct]

Standard errors are binomial, sqrt(p(1-p)/n); a difference's is sqrt(se_a^2 + se_b^2) (the two
models' errors treated as independent, which overstates it for paired samples: conservative).
"""

from __future__ import annotations

import argparse
import json
import math


def rate(accuracy: float, n: int) -> tuple[float, float]:
    return 100 * accuracy, 100 * math.sqrt(accuracy * (1 - accuracy) / n) if n else 0.0


def rows_of(report: dict) -> dict[str, tuple[float, float]]:
    out = {task: rate(v["accuracy"], v["n"]) for task, v in sorted(report["per_task"].items())}
    out["all"] = rate(report["accuracy"], report["n"])
    return out


def difference(a: tuple[float, float], b: tuple[float, float]) -> str:
    d, se = a[0] - b[0], math.hypot(a[1], b[1])
    verdict = "" if abs(d) >= 2 * se else " (no difference)"
    return f"{d:+.1f} ± {se:.1f}{verdict}"


def table(reports: dict[str, dict], diffs: list[tuple[str, str]]) -> str:
    first = next(iter(reports.values()))
    majority = first.get("majority_baseline", {})
    rows = {name: rows_of(r) for name, r in reports.items()}
    head = ["task", "n", "majority", *reports, *(f"{a} − {b}" for a, b in diffs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in rows[next(iter(rows))]:
        n = first["n"] if task == "all" else first["per_task"][task]["n"]
        cells = [f"**{task}**" if task == "all" else task, str(n),
                 f"{100 * majority[task]:.1f}" if task in majority else "—"]
        cells += [f"{rows[name][task][0]:.1f} ± {rows[name][task][1]:.1f}" for name in reports]
        cells += [difference(rows[a][task], rows[b][task]) for a, b in diffs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="NAME=report.json (from mmreason eval --out)")
    parser.add_argument("--diff", nargs="*", default=[], help="A-B: a column with row A minus row B")
    args = parser.parse_args()
    reports = {}
    for item in args.reports:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"expected NAME=report.json, got {item!r}")
        reports[name] = json.loads(open(path).read())
    diffs = [tuple(d.split("-", 1)) for d in args.diff]
    unknown = [n for pair in diffs for n in pair if n not in reports]
    if unknown:
        raise SystemExit(f"--diff names {unknown} that are not among the reports {list(reports)}")
    print(table(reports, diffs))


if __name__ == "__main__":
    main()
