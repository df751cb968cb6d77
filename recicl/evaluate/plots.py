"""Plots people would rather look at than read: AUC / UAUC by period, one line per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: servers, CI, Ray workers
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def plot_by_period(
    reports: dict[str, dict[str, Any]], path: str | Path, title: str = "AUC by period"
) -> Path:
    """One PNG: AUC (solid) and UAUC (dashed) per period for each named report."""
    path = Path(path)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, report in reports.items():
        periods = sorted(report["periods"], key=int)
        xs = [int(p) for p in periods]
        for axis, metric in zip(axes, ("auc", "uauc"), strict=True):
            ys = [report["periods"][p][metric] for p in periods]
            ys = [float("nan") if y is None else y for y in ys]
            axis.plot(xs, ys, marker="o", label=name)
    for axis, metric in zip(axes, ("AUC", "UAUC"), strict=True):
        axis.set_xlabel("period")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(metric)
        axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    axes[1].legend(loc="best", fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
