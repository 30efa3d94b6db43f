"""The comparison plots (PNG, matplotlib): accuracy vs MACs reduction, accuracy vs measured speed-up,
and each run's pruning trajectory."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def accuracy_vs_flops(table: pd.DataFrame, task: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method, g in table.groupby("method"):
        g = g.sort_values("MACs ↓ %")
        ax.errorbar(g["MACs ↓ %"], g["final acc %"], yerr=g["± std"].fillna(0), marker="o", capsize=4, label=method)
    ax.axhline(table["base acc %"].mean(), color="grey", ls="--", lw=1, label="baseline (mean)")
    ax.set_xlabel("MACs reduction (%)  [1 MAC = 2 FLOPs; batch 1]")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"{task}: accuracy vs MACs reduction\n(mean ± std over seeds; n per point in the table)")
    return _finish(fig, ax, path)


def accuracy_vs_latency(table: pd.DataFrame, task: str, path: Path) -> Path | None:
    plt = _plt()
    speed_cols = sorted(
        (c for c in table.columns if re.fullmatch(r"speed-up b\d+", c)), key=lambda c: int(c[len("speed-up b") :])
    )
    if not speed_cols:
        return None
    col = speed_cols[-1]  # the largest batch
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method, g in table.groupby("method"):
        g = g.sort_values(col)
        ax.errorbar(g[col], g["final acc %"], yerr=g["± std"].fillna(0), marker="s", capsize=4, label=method)
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    device = ", ".join(sorted(set(table["latency device"])))
    ax.set_xlabel(f"measured speed-up, batch {col[len('speed-up b') :]} (dense ms / pruned ms; {device})")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"{task}: accuracy vs measured speed-up")
    return _finish(fig, ax, path)


def trajectories(histories: dict[str, pd.DataFrame], task: str, path: Path) -> Path | None:
    """``histories``: label -> DataFrame(step, macs, acc) of one run's prune/* metrics."""
    if not histories:
        return None
    plt = _plt()
    fig, (ax_macs, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    # Longest first, so that a shorter run that follows the same path (gbn@50% inside gbn@70%) stays visible.
    for label, h in sorted(histories.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        ax_macs.plot(h["step"], h["macs"] / 1e6, marker=".", label=label)
        ax_acc.plot(h["step"], h["acc"] * 100, marker=".", label=label)
    ax_macs.set_xlabel("pruning step (tick for gbn; one step for one-shot methods)")
    ax_macs.set_ylabel("MACs left (M, batch 1)")
    ax_acc.set_xlabel("pruning step")
    ax_acc.set_ylabel("held-out accuracy before fine-tuning (%)")
    for ax in (ax_macs, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{task}: pruning trajectories (one run per method and target, first seed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
