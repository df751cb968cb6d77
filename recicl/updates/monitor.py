"""`recicl monitor`: should the champion be re-tuned, rolled back, or left alone?

RecICL keeps a model current between re-tunes by reading fresh events; the monitor says when
that stops being enough. It reads what serving recorded (the feedback log of the store the
server writes, ``serve.store_url``) and compares the champion's live AUC over the last
``monitor.window_seconds`` with two references:

* the previous window of the same length: a drop of ``monitor.max_drop_vs_previous`` is drift,
  unless the alias moved within ``monitor.rollback_within_seconds`` — then the new champion,
  not the users, changed, and the decision is **rollback**;
* the champion's latest offline evaluation (mean AUC over its evaluated periods, from the MLflow
  evaluation run): a drop of ``monitor.max_drop_vs_offline`` is decay, and the decision is
  **retune**.

Too few joined scores give **no-data**, never a guess. The decision is printed with its reasons,
logged as an MLflow run (experiment ``<mlflow.experiment>-monitor``) and returned as an exit
code a scheduler can act on (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recicl.config import ReciclConfig
from recicl.promotion import alias_history, evaluation_runs
from recicl.registry import Workspace, alias_version
from recicl.serve.live_metrics import arm_figures
from recicl.serve.store.feedback import ARM_CHAMPION, FeedbackSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Exit codes of `recicl monitor` (and of its Ray job): 0 leaves the champion alone.
EXIT_CODES = {"ok": 0, "retune": 10, "rollback": 11, "no-data": 12}


@dataclass
class MonitorDecision:
    """What the monitor concluded, why, and the figures it used."""

    decision: str
    reasons: list[str]
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]


def offline_auc(mlc: MlflowClient, name: str, version: str) -> float | None:
    """Mean AUC over the periods of ``version``'s latest evaluation run (None: never evaluated)."""
    runs = evaluation_runs(mlc, name, version)
    if not runs:
        return None
    values = [
        v for k, v in runs[0].data.metrics.items() if k.startswith("p") and k.endswith("_auc")
    ]
    return sum(values) / len(values) if values else None


def champion_windows(
    cfg: ReciclConfig, version: str, now: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Live figures of ``version`` answering as champion in the current and previous window."""
    from recicl.serve.settings import resolve_store_url
    from recicl.serve.store import open_store

    window = cfg.monitor.window_seconds
    settings = FeedbackSettings.from_config(cfg.serve.feedback)
    with open_store(resolve_store_url(cfg), feedback=settings) as store:
        rows = store.feedback_rows(now - 2 * window, now=now)
    mine = [r for r in rows if r.served.version == version and r.served.arm == ARM_CHAMPION]
    current = [r for r in mine if r.served.served_at >= now - window]
    previous = [r for r in mine if r.served.served_at < now - window]
    return arm_figures(current), arm_figures(previous)


def decide(
    cfg: ReciclConfig,
    current: dict[str, Any],
    previous: dict[str, Any],
    offline: float | None,
    moved_seconds_ago: float | None,
) -> MonitorDecision:
    """The decision from the figures (pure: the rules of the module docstring)."""
    mc = cfg.monitor
    figures = {"current": current, "previous": previous, "offline_auc": offline}
    live = current.get("auc")
    if current["joined"] < mc.min_joined or live is None:
        return MonitorDecision(
            "no-data",
            [
                f"{current['joined']} joined scores in the last {mc.window_seconds} s "
                f"(monitor.min_joined {mc.min_joined}, both labels needed): nothing to judge"
            ],
            figures,
        )
    reasons = []
    before = previous.get("auc") if previous["joined"] >= mc.min_joined else None
    if before is not None and live < before - mc.max_drop_vs_previous:
        drop = f"live AUC {live:.3f} fell from {before:.3f} in the previous window"
        if moved_seconds_ago is not None and moved_seconds_ago <= mc.rollback_within_seconds:
            return MonitorDecision(
                "rollback",
                [
                    f"{drop} (more than monitor.max_drop_vs_previous {mc.max_drop_vs_previous}) "
                    f"right after the alias moved {moved_seconds_ago / 3600:.1f} h ago: the new "
                    "champion is worse; `recicl rollback`"
                ],
                figures,
            )
        reasons.append(f"{drop} (more than {mc.max_drop_vs_previous}): drift")
    if offline is not None and live < offline - mc.max_drop_vs_offline:
        reasons.append(
            f"live AUC {live:.3f} is more than {mc.max_drop_vs_offline} below the champion's "
            f"offline AUC {offline:.3f}: decay"
        )
    if reasons:
        return MonitorDecision("retune", [*reasons, "re-tune: `recicl train` with "
                               "train.init_from models:/<name>@<alias>"], figures)  # fmt: skip
    checks = [f"live AUC {live:.3f} on {current['joined']} joined scores"]
    checks += [f"previous window {before:.3f}"] if before is not None else []
    checks += [f"offline {offline:.3f}"] if offline is not None else []
    return MonitorDecision("ok", [", ".join(checks) + ": within the thresholds"], figures)


def run_monitor(cfg: ReciclConfig, now: int | None = None) -> MonitorDecision:
    """Read the champion's live figures and references, decide, and log the decision to MLflow."""
    from recicl.registry import registered_model

    now = int(time.time()) if now is None else now
    workspace = Workspace.of(cfg)
    mlc = workspace.client()
    wanted = cfg.serve.model_name or workspace.registered_model
    name = registered_model(mlc, wanted, workspace.tracking_uri).name
    alias = cfg.serve.alias
    version = alias_version(mlc, name, alias)
    if version is None:
        decision = MonitorDecision("no-data", [f"{name}@{alias} points at no version"])
    else:
        current, previous = champion_windows(cfg, version, now)
        moves = [r for r in alias_history(mlc, name, alias) if str(r.get("to")) == version]
        moved = now - int(moves[-1]["when"]) if moves else None
        decision = decide(cfg, current, previous, offline_auc(mlc, name, version), moved)
        decision.figures["version"] = version
    _log(workspace, decision, name, alias, now)
    return decision


def _log(workspace: Workspace, decision: MonitorDecision, name: str, alias: str, now: int) -> None:
    """One MLflow run per decision: the history a team reads when a re-tune fired."""
    mlc = workspace.client()
    experiment = f"{workspace.experiment}-monitor"
    found = mlc.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlc.create_experiment(experiment)
    run = mlc.create_run(
        experiment_id,
        tags={
            "mlflow.runName": f"monitor-{now}",
            "recicl.kind": "monitor",
            "recicl.decision": decision.decision,
            "recicl.model": f"{name}@{alias}",
            "recicl.version": str(decision.figures.get("version")),
            "recicl.reasons": " | ".join(decision.reasons)[:5000],
        },
    ).info.run_id
    for window in ("current", "previous"):
        for key, value in (decision.figures.get(window) or {}).items():
            if isinstance(value, (int, float)):
                mlc.log_metric(run, f"{window}_{key}", float(value), step=now)
    if decision.figures.get("offline_auc") is not None:
        mlc.log_metric(run, "offline_auc", float(decision.figures["offline_auc"]), step=now)
    mlc.set_terminated(run)
