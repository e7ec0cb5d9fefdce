"""The model-card table tool: accuracies with standard errors and differences, hand-computed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_reports", ROOT / "tools" / "compare_reports.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def _report(exist: float, count: float) -> dict:
    return {"n": 200, "accuracy": (exist + count) / 2, "majority_baseline": {"exist": 0.5, "count": 0.2},
            "per_task": {"exist": {"n": 100, "accuracy": exist}, "count": {"n": 100, "accuracy": count}}}


def test_table_gives_standard_errors_and_flags_differences_inside_two_of_them():
    text = tool.table({"direct": _report(0.5, 0.2), "rationale": _report(0.8, 0.26)}, [("rationale", "direct")])
    lines = text.splitlines()
    assert lines[0] == "| task | n | majority | direct | rationale | rationale − direct |"
    exist = next(line for line in lines if line.startswith("| exist"))
    # 50% of 100: s.e. 5.0; 80%: 4.0; difference 30 ± sqrt(25 + 16) = 6.4
    assert exist == "| exist | 100 | 50.0 | 50.0 ± 5.0 | 80.0 ± 4.0 | +30.0 ± 6.4 |"
    count = next(line for line in lines if line.startswith("| count"))
    assert count.endswith("| +6.0 ± 5.9 (no difference) |")  # sqrt(16 + 19.24) = 5.9; 6 < 2 x 5.9
    assert lines[-1].startswith("| **all** | 200 | — | 35.0 ± 3.4 | 53.0 ± 3.5 |")
