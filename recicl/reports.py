"""Console reports: the tables a user reads after a build, an evaluation or an experiment.

Why one module: the CLI, the demo and the job scripts print the same reports, and the tables share
one way of writing a metric. Before this module the demo imported its table from the CLI (an
import cycle) and three copies of the metric formatter existed. It sits just above the data
layer (it needs ``rich`` and the typed records it prints, such as the samples manifest), so every
layer that runs a job may print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from recicl.data.manifest import SamplesManifest

#: Tables go to stdout (they are the command's output); paths and run ids to stderr.
_out = Console()
_err = Console(stderr=True)


def metric(value: float | None) -> str:
    """A metric as the tables show it: 4 decimals, ``-`` when undefined (e.g. one class)."""
    return "-" if value is None else f"{value:.4f}"


def _metric_cells(values: dict[str, Any]) -> list[str]:
    """like rate, AUC, UAUC (users), LogLoss of one metrics row of ``metrics_by_period``."""
    return [
        metric(values["like_rate"]),
        metric(values["auc"]),
        f"{metric(values['uauc'])} ({values['uauc_users']})",
        metric(values["logloss"]),
    ]


def print_samples_summary(manifest: SamplesManifest) -> None:
    """A build's summary (events, quarantine by reason, samples per period) from its manifest."""
    head = Table(title=f"recicl samples — {manifest.source.layout}", show_header=False)
    head.add_row("rows read", f"{manifest.rows_read:,}")
    head.add_row("valid events", f"{manifest.events:,}")
    head.add_row("users / catalog items", f"{manifest.users:,} / {manifest.catalog_items:,}")
    quarantine = manifest.quarantine
    head.add_row("quarantined", f"{quarantine.total:,}")
    for reason, count in quarantine.by_reason.items():
        head.add_row(f"  {reason}", f"{count:,}")
    for reason, count in quarantine.catalog.items():
        head.add_row(f"  catalog {reason}", f"{count:,}")
    head.add_row("samples", f"{manifest.samples:,}")
    selection = manifest.selection
    policies = f"demos {selection.demo_policy}, history {selection.history_policy}"
    if selection.augmented:
        policies += f", augmented: {', '.join(selection.augmented)}"
    head.add_row("policies", policies)
    if selection.embeddings:
        vectors = selection.embeddings
        head.add_row(
            "item vectors", f"{vectors['items']:,} x {vectors['dim']} ({vectors.get('encoder')})"
        )
    stats = manifest.item_stats
    if stats:
        head.add_row(
            "item statistics",
            f"{stats['items']:,} items, {stats['events']:,} events of D0-D{stats['until_period']}"
            + (
                f"; taste codes of {stats['code_bits']} bits for {stats['coded_items']:,} items"
                if stats.get("code_bits")
                else ""
            ),
        )
    head.add_row("seconds", f"{manifest.seconds}")
    _out.print(head)
    periods = Table(title="periods")
    for column in ("period", "from", "to", "events", "like rate", "samples"):
        periods.add_column(column, justify="right")
    for row in manifest.periods:
        periods.add_row(
            f"D{row.period}",
            (row.first_event or "-")[:10],
            (row.last_event or "-")[:10],
            f"{row.events:,}",
            f"{row.like_rate:.3f}" if row.like_rate is not None else "-",
            f"{row.samples:,}",
        )
    _out.print(periods)
    for warning in manifest.warnings:
        _out.print(f"[yellow]warning:[/] {warning}")


def print_evaluation(report: dict[str, Any]) -> None:
    """Metrics per period and overall, then where the report, plot and MLflow run went."""
    table = Table(title=f"evaluation of {report['model']['label']}")
    for column in ("period", "n", "like rate", "AUC", "UAUC (users)", "LogLoss"):
        table.add_column(column, justify="right")
    rows = [(f"D{p}", v) for p, v in sorted(report["periods"].items(), key=lambda kv: int(kv[0]))]
    for name, values in [*rows, ("all", report["overall"])]:
        table.add_row(name, f"{values['count']:,}", *_metric_cells(values))
    _out.print(table)
    _err.print(f"report: {report['report_path']}  plot: {report['plot_path']}")
    if report.get("mlflow_run_id"):
        _err.print(f"MLflow evaluation run: {report['mlflow_run_id']}")


def print_instruction_report(report: dict[str, Any]) -> None:
    """The one-row table of an instruction-file evaluation."""
    table = Table(
        title=f"{report['model']['label']} on {Path(report['file']['path']).name} "
        f"({report['file']['template']} template)"
    )
    for column in ("records", "yes rate", "AUC", "UAUC (users)", "LogLoss"):
        table.add_column(column, justify="right")
    values = report["overall"]
    table.add_row(f"{values['count']:,}", *_metric_cells(values))
    _out.print(table)
    _err.print(f"report: {report['report_path']}")


def print_streaming(result: dict[str, Any]) -> None:
    """The streaming experiment's variant × period table."""
    table = Table(title="streaming protocol (no updates after training)")
    for column in ("variant", "period", "AUC", "UAUC", "LogLoss", "n"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(
            row["variant"],
            f"D{row['period']}",
            metric(row["auc"]),
            metric(row["uauc"]),
            metric(row["logloss"]),
            f"{row['count']:,}",
        )
    _out.print(table)


def print_versions(name: str, rows: list[dict[str, Any]]) -> None:
    """`recicl models list`: versions with aliases, training and evaluation metrics."""
    from datetime import datetime, timezone

    table = Table(title=f"registered model {name}")
    for column in ("version", "aliases", "created", "base model", "format", "val AUC", "eval AUC"):
        table.add_column(column)
    for row in rows:
        tags, evaluation = row["tags"], row["evaluation"]
        created = datetime.fromtimestamp(row["created"] / 1000, tz=timezone.utc)
        eval_auc = evaluation.get("auc")
        table.add_row(
            row["version"],
            ", ".join(row["aliases"]) or "-",
            created.strftime("%Y-%m-%d %H:%M"),
            tags.get("base_model", "-")[-40:],
            tags.get("prompt_format", "-"),
            tags.get("val_auc", "-")[:6],
            "-" if eval_auc is None else f"{eval_auc:.4f}",
        )
    _out.print(table)
