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
    return _save(figure, path)


def plot_live_timeline(
    timeline: dict[str, list[tuple[float, float | None, int]]],
    path: str | Path,
    title: str = "live AUC per arm",
) -> Path:
    """One PNG: live AUC of each version and arm over serving time (seconds since the first
    score), one point per time bucket; the point's size grows with its joined scores."""
    path = Path(path)
    figure, axis = plt.subplots(figsize=(8, 4))
    for name, points in sorted(timeline.items()):
        kept = [(t, a, n) for t, a, n in points if a is not None]
        if not kept:
            continue
        xs, ys, sizes = zip(*kept, strict=True)
        axis.plot(xs, ys, marker="o", label=name, markersize=4)
        axis.scatter(xs, ys, s=[4 + 2 * n**0.5 for n in sizes], alpha=0.3)
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xlabel("serving time (s)")
    axis.set_ylabel("AUC of joined scores")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    axis.set_title(title)
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
