"""The model lifecycle on the command line: versions, live figures, promotion, rollback, the
monitor and the re-tune (one library call per command, as in :mod:`recicl.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from recicl.cli import app, console, friendly_errors, models_app, resolve_config
from recicl.config import ConfigError
from recicl.registry import Workspace, list_versions
from recicl.reports import print_versions


@models_app.command("list")
@friendly_errors
def models_list(
    name: str | None = typer.Option(None, "--name", help="Registered model (default: config)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
) -> None:
    """Versions of a registered model with aliases, training and evaluation metrics."""
    cfg = resolve_config(config, {})
    name = name or cfg.mlflow.registered_model
    print_versions(name, list_versions(Workspace.of(cfg).tracking_uri, name))


@models_app.command("live")
@friendly_errors
def models_live(
    version: str = typer.Option(..., "--version", help="Version whose MLflow run gets them."),
    url: str | None = typer.Option(
        None, "--url", help="The running API (default http://<serve.host>:<serve.port>)."
    ),
    window: int | None = typer.Option(
        None,
        "--window",
        min=1,
        help="Seconds back (default serve.feedback.metrics_window_seconds).",
    ),
    name: str | None = typer.Option(None, "--name", help="Registered model (default: config)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
) -> None:
    """Log a version's live AUC, LogLoss, joins and like rate (GET /v1/metrics/live) to its run."""
    from recicl.serve.live_metrics import log_live_metrics

    cfg = resolve_config(config, {})
    url = url or f"http://{cfg.serve.host}:{cfg.serve.port}"
    name = name or cfg.mlflow.registered_model
    tracking_uri = Workspace.of(cfg).tracking_uri
    run_id, _, rows = log_live_metrics(tracking_uri, name, version, url, window)
    for key, value, _ in rows:
        console.print(f"{key} = {value:.6g}", highlight=False)
    console.print(f"logged {len(rows)} live metrics of {name}/{version} to run {run_id}")


@app.command("monitor")
@friendly_errors
def monitor_command(config: Path | None = typer.Option(None, "--config", help="YAML.")) -> None:
    """Champion live AUC vs last window/offline: exit 0 ok, 10 retune, 11 rollback, 12 no data."""
    from recicl.updates.monitor import run_monitor

    decision = run_monitor(resolve_config(config, {}))
    console.print(f"[bold]{decision.decision}[/bold]: " + "; ".join(decision.reasons))
    raise typer.Exit(decision.exit_code)


@app.command("promote")
@friendly_errors
def promote_command(
    version: str = typer.Option(..., "--version", help="Candidate version number."),
    name: str | None = typer.Option(None, "--name", help="Registered model (default: config)."),
    alias: str = typer.Option("champion", "--alias", help="Alias to move."),
    samples: Path | None = typer.Option(
        None, "--samples", help="Samples to compare on (default: train.samples_dir)."
    ),
    period: int | None = typer.Option(None, "--period", help="Period compared (default newest)."),
    force: bool = typer.Option(False, "--force", help="Move the alias even if worse."),
    reason: str | None = typer.Option(None, "--reason", help="Why (required with --force)."),
    live: bool = typer.Option(
        False, "--live", help="Compare on joined live feedback (candidate in shadow), not samples."
    ),
    window: int | None = typer.Option(
        None, "--window", min=1, help="--live: seconds back (default evaluate.live.window_seconds)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
) -> None:
    """Move an alias only if the version is not worse (AUC on samples, or live with --live)."""
    from recicl.promotion import promote
    from recicl.serve.live_metrics import read_live_evidence

    if window is not None and not live:
        raise ConfigError("--window is the window of --live; add --live or drop --window")
    cfg = resolve_config(config, {})
    decision = promote(
        cfg,
        name or cfg.mlflow.registered_model,
        version,
        alias,
        samples_dir=samples,
        period=period,
        force=force,
        reason=reason,
        live=read_live_evidence(cfg, window) if live else None,
    )
    if decision.promoted:
        console.print(f"[green]{decision.message()}[/]", highlight=False)
        return
    console.print(f"[yellow]{decision.message()}[/]", highlight=False)
    sys.exit(1)


@app.command("rollback")
@friendly_errors
def rollback_command(
    name: str | None = typer.Option(None, "--name", help="Registered model (default: config)."),
    alias: str = typer.Option("champion", "--alias", help="Alias to move back."),
    reason: str | None = typer.Option(None, "--reason", help="Why (recorded in MLflow)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
) -> None:
    """Return an alias to its previous holder in the promotion history (recorded in MLflow)."""
    from recicl.promotion import rollback

    cfg = resolve_config(config, {})
    done = rollback(cfg, name or cfg.mlflow.registered_model, alias, reason=reason)
    console.print(f"[green]{done.message()}[/]", highlight=False)


@app.command("retune")
@friendly_errors
def retune_command(
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
    run_name: str | None = typer.Option(
        None, "--run-name", help="Run name (default retune-v<champion>-<UTC day>); reuse to resume."
    ),
) -> None:
    """Re-tune the champion on the log plus stored events; enter it as shadow/split candidate."""
    from recicl.updates.retune import run_retune

    result = run_retune(resolve_config(config, {}), run_name)
    auc = (
        f"AUC on period {result.newest_period}: candidate {result.candidate_auc:.4f}, "
        f"champion {result.champion_auc:.4f}"
        if result.candidate_auc is not None and result.champion_auc is not None
        else "AUC not available (a period with one class)"
    )
    entered = (
        f"entered as {result.entered_as} (share {result.share})" if result.entered_as else
        "registered only (retune.enter_as: none)"
    )  # fmt: skip
    console.print(
        f"[green]re-tuned v{result.champion_version} → v{result.version}[/] "
        f"({'warm' if result.warm else 'cold'}, periods {result.train_periods}, "
        f"{result.exported_events} new events): {auc}; {entered}. Promote it with "
        f"`recicl promote --live --version {result.version}` once it has live evidence.",
        highlight=False,
    )
    print(f"version={result.version}")
