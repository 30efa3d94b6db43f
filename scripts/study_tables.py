"""Shared by the study scripts: mean ± std cells and writing a markdown report."""

from __future__ import annotations

import statistics
from pathlib import Path


def mean_std(values: list[float], fmt: str) -> str:
    """'0.9911 ± 0.0022': mean and sample std (0 for a single value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(sd, fmt)}"


def write_report(path: Path, lines: list[str]) -> None:
    """Write the markdown lines to ``path`` and print them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
