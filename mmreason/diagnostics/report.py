"""A diagnosis as people read it: markdown tables and two figures (entropy curves, faithfulness bars)."""

from __future__ import annotations

import logging
from pathlib import Path

from mmreason.diagnostics.faithfulness import ALL, OUTCOMES

log = logging.getLogger(__name__)


def _pm(entry: dict) -> str:
    return f"{entry['share']:.1f} ± {entry['se']:.1f}"


def faithfulness_table(faith: dict) -> str:
    """Edits that matter: the share of answers following the edit / staying with the image, per task
    (all kinds pooled) and per kind (all tasks pooled); then control edits and the unedited check."""
    lines = ["| question type / edit | n | follows edit | stays with image | other |", "|---|---|---|---|---|"]
    matters = faith["matters"]
    rows = [(task, kinds[ALL]) for task, kinds in matters.items() if task != ALL and ALL in kinds]
    rows += [(f"edit: {kind}", entry) for kind, entry in matters.get(ALL, {}).items() if kind != ALL]
    if ALL in matters:
        rows.append(("**all**", matters[ALL][ALL]))
    for name, entry in rows:
        lines.append(f"| {name} | {entry['follows']['n']} | " + " | ".join(_pm(entry[o]) for o in OUTCOMES) + " |")
    controls = faith["controls"].get(ALL, {})
    lines += ["", "| control edit (answer should not change) | n | answer changed |", "|---|---|---|"]
    for kind, entry in controls.items():
        name = "**all**" if kind == ALL else kind
        lines.append(f"| {name} | {entry['changed']['n']} | {_pm(entry['changed'])} |")
    unedited = faith["unedited_reproduced"].get(ALL)
    if unedited:
        said = ("Own evidence forced back reproduces the generated answer" if faith["rationales"] == "own" else
                "Gold evidence forced gives the gold answer")
        lines += ["", f"{said}: {_pm(unedited)} % (n = {unedited['n']})."]
    return "\n".join(lines)


def utility_table(utility: dict) -> str:
    """Mean entropy after 0, 1, 2 … sentences per task, the AUROCs, and the early-stopping sweep."""
    width = max((len(c) for c in utility["curves"].values()), default=0)
    shown = min(width, 8)
    head = "| question type | AUROC entropy drop | AUROC final certainty | " + " | ".join(
        f"H after {k}" for k in range(shown)) + " |"
    lines = [head, "|" + "---|" * (3 + shown)]
    for task, curve in utility["curves"].items():
        drop, final = utility["auroc"][task]["entropy_drop"], utility["auroc"][task]["final_certainty"]
        cells = [("–" if v is None else f"{v:.2f}") for v in (curve + [None] * shown)[:shown]]
        name = "**all**" if task == ALL else task
        lines.append(f"| {name} | {_area(drop)} | {_area(final)} | " + " | ".join(cells) + " |")
    lines += ["", "| stop when entropy < (bits) | accuracy | accuracy lost | rationale tokens saved | stopped early |",
              "|---|---|---|---|---|"]
    for row in utility["early_stopping"]:
        lines.append(f"| {row['threshold']} | {100 * row['accuracy']:.1f} | {100 * row['accuracy_lost']:.1f} | "
                     f"{100 * row['tokens_saved']:.1f} | {100 * row['stopped_early']:.1f} |")
    return "\n".join(lines)


def _area(entry: dict) -> str:
    return "–" if entry["auroc"] is None else f"{entry['auroc']:.3f} ± {entry['se']:.3f}"


def scorer_table(scorer: dict) -> str:
    lines = [f"Scorer AUROC on the model's greedy rationales (true vs false by the scene graph): "
             f"{_area(scorer['greedy_rationales'])} ({scorer['greedy_rationales']['positives']} true, "
             f"{scorer['greedy_rationales']['negatives']} false)."]
    votes = scorer.get("votes")
    if votes:
        diff = votes["scorer_minus_majority"]
        verdict = "no difference" if abs(diff["points"]) <= 2 * diff["se"] else "beyond two standard errors"
        lines += ["", f"| voting over the same K = {votes['k']} samples | n | accuracy |", "|---|---|---|",
                  f"| majority | {votes['majority']['n']} | {_pm(votes['majority'])} |",
                  f"| scorer-weighted | {votes['scorer']['n']} | {_pm(votes['scorer'])} |",
                  f"| scorer − majority (paired) | | {diff['points']:+.1f} ± {diff['se']:.1f} ({verdict}) |",
                  f"| any of the K samples right | | {_pm(votes['any_sample_right'])} |"]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    parts = [f"## Faithfulness by intervention ({report['faithfulness']['rationales']} rationales edited)",
             faithfulness_table(report["faithfulness"]),
             "## Step utility (answer entropy in bits after k rationale sentences)", utility_table(report["step_utility"])]
    if "scorer" in report:
        parts += ["## Rationale scorer", scorer_table(report["scorer"])]
    return "\n\n".join(parts) + "\n"


def figures(report: dict, out: Path) -> list[Path]:
    """``entropy.png`` (mean curve per question type) and ``faithfulness.png`` (outcome shares per edit kind);
    none, with a log line, when matplotlib is not installed (``pip install "mmreason[plots]"``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no figures (pip install \"mmreason[plots]\")")
        return []
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for task, curve in report["step_utility"]["curves"].items():
        points = [(k, v) for k, v in enumerate(curve) if v is not None]
        ax.plot(*zip(*points), marker="o", label=task, linewidth=2.5 if task == ALL else 1.2)
    ax.set(xlabel="rationale sentences read", ylabel="answer entropy (bits)", title="Step utility")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "entropy.png", dpi=100)
    plt.close(fig)
    kinds = report["faithfulness"]["matters"].get(ALL, {})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    names = list(kinds)
    bottom = [0.0] * len(names)
    for outcome, colour in zip(OUTCOMES, ("#2ca02c", "#1f77b4", "#bbbbbb")):
        values = [kinds[k][outcome]["share"] for k in names]
        ax.bar(names, values, bottom=bottom, color=colour, label=outcome.replace("stays", "stays with image"))
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, kind in enumerate(names):  # small cells read differently from large ones: say how many edits
        ax.text(x, 101, f"n={kinds[kind]['follows']['n']}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 112)
    ax.set(ylabel="% of edits that change the implied answer",
           title=f"Answers after an edited rationale ({report['faithfulness'].get('rationales', 'own')} rationales)")
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out / "faithfulness.png", dpi=100)
    plt.close(fig)
    return [out / "entropy.png", out / "faithfulness.png"]
