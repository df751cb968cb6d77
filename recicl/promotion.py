"""The promotion gate: move a registry alias only when the candidate is not worse.

Promotion needs evaluation (both versions scored on the same samples) and the registry (aliases,
tags), so it sits above both: :mod:`recicl.registry` only talks to MLflow, and
:mod:`recicl.evaluate` only scores and measures.

"The same samples" means the same content (:meth:`SamplesFolder.content_id`), and the same
``evaluate.max_samples`` subset: a cached evaluation is reused only when both match, so a champion's
AUC measured on an older build of the samples is never compared with a candidate's on the new one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from recicl.config import ConfigError, ReciclConfig
from recicl.data.samples_folder import SamplesFolder, configured_samples_dir
from recicl.evaluate.batch import evaluate_model, subset_name
from recicl.registry import (
    EVAL_KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    SAMPLES_TAG,
    SUBSET_TAG,
    RegistryError,
    alias_version,
    client,
    model_uri,
    model_version,
    registered_model,
    resolve_tracking_uri,
)


@dataclass
class PromotionDecision:
    """What `recicl promote` decided, with both numbers it decided on."""

    promoted: bool
    name: str
    alias: str
    candidate: str
    champion: str | None
    period: int | None
    candidate_auc: float | None
    champion_auc: float | None
    tolerance: float
    forced: bool = False
    reason: str | None = None

    def message(self) -> str:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        champion = f"v{self.champion}" if self.champion else "(no champion)"
        where = f"period {self.period}" if self.period is not None else "-"
        numbers = (
            f"candidate v{self.candidate} AUC {fmt(self.candidate_auc)}, champion {champion} "
            f"AUC {fmt(self.champion_auc)} on {where} (tolerance {self.tolerance})"
        )
        if self.promoted and self.champion is None and not self.forced:
            return (
                f"promoted {self.name}@{self.alias} → v{self.candidate}: the alias had no holder, "
                "so there was nothing to compare against"
            )
        if self.promoted and self.forced:
            return f"forced {self.name}@{self.alias} → v{self.candidate} ({self.reason}); {numbers}"
        if self.promoted:
            return f"promoted {self.name}@{self.alias} → v{self.candidate}; {numbers}"
        return (
            f"refused: {self.name}@{self.alias} stays on {champion}; {numbers}. "
            "Use --force --reason TEXT to override."
        )


def evaluation_auc(
    cfg: ReciclConfig, name: str, version: str, samples_dir: Path, period: int
) -> float | None:
    """AUC of ``name`` v``version`` on ``period`` of these samples: from an earlier evaluation run
    on the same samples (and the same ``evaluate.max_samples`` subset) when there is one,
    otherwise by evaluating now."""
    tracking_uri = resolve_tracking_uri(cfg)
    mlc = client(tracking_uri)
    digest = SamplesFolder.at(samples_dir).content_id()
    runs = mlc.search_runs(
        [e.experiment_id for e in mlc.search_experiments()],
        filter_string=f"tags.`{EVAL_KIND_TAG}` = 'evaluation' and "
        f"tags.`{MODEL_NAME_TAG}` = '{name}' and tags.`{MODEL_VERSION_TAG}` = '{version}' and "
        f"tags.`{SAMPLES_TAG}` = '{digest}'",
        order_by=["attributes.start_time DESC"],
    )
    key = f"p{period}_auc"
    subset = subset_name(cfg.evaluate.max_samples)  # compare on the same samples only
    for run in runs:
        if run.data.tags.get(SUBSET_TAG, "all") != subset:
            continue
        if key in run.data.metrics:
            return float(run.data.metrics[key])
    report = evaluate_model(cfg, model_uri(name, version), samples_dir, [period])
    value = report["periods"].get(str(period), {}).get("auc")
    return None if value is None else float(value)


def promote(
    cfg: ReciclConfig,
    name: str,
    version: str | int,
    alias: str = "champion",
    *,
    samples_dir: str | Path | None = None,
    period: int | None = None,
    force: bool = False,
    reason: str | None = None,
) -> PromotionDecision:
    """Move ``alias`` to ``version`` only if it is not worse than the current holder.

    Both are compared on the same samples and period (the newest period with samples unless
    given), evaluating either when no earlier evaluation exists. ``force`` skips the comparison
    but needs a reason. Every move is recorded on the candidate version as a tag
    ``recicl.promotion.<alias>.<unix time>`` holding from/to/when/metrics/reason as JSON.
    """
    version = str(version)
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason TEXT saying why the gate is overridden")
    tracking_uri = resolve_tracking_uri(cfg)
    mlc = client(tracking_uri)
    registered_model(mlc, name, tracking_uri)
    model_version(mlc, name, version)
    champion = alias_version(mlc, name, alias)
    tolerance = cfg.evaluate.promotion_tolerance
    decision = PromotionDecision(
        promoted=False, name=name, alias=alias, candidate=version, champion=champion,
        period=period, candidate_auc=None, champion_auc=None, tolerance=tolerance,
        forced=force, reason=reason,
    )  # fmt: skip
    if champion == version:
        decision.promoted = True
        return decision
    if champion is not None and not force:
        chosen = samples_dir or configured_samples_dir(cfg)
        try:
            folder = SamplesFolder.at(chosen or "")
            folder.require_manifest()
        except ConfigError:
            raise RegistryError(
                f"promotion compares both versions on samples, but {chosen or '(none given)'} "
                "is not a samples folder: pass --samples DIR (a `recicl samples build` output)"
            ) from None
        period = folder.newest_period() if period is None else period
        decision.period = period
        decision.candidate_auc = evaluation_auc(cfg, name, version, folder.root, period)
        decision.champion_auc = evaluation_auc(cfg, name, champion, folder.root, period)
        if decision.candidate_auc is None or decision.champion_auc is None:
            raise RegistryError(
                f"AUC is undefined on period {period} (one class only); choose --period"
            )
        if decision.candidate_auc < decision.champion_auc - tolerance:
            return decision
    mlc.set_registered_model_alias(name, alias, version)
    decision.promoted = True
    when = int(time.time())
    record = {
        "alias": alias, "from": champion, "to": version, "when": when, "period": decision.period,
        "candidate_auc": decision.candidate_auc, "champion_auc": decision.champion_auc,
        "tolerance": tolerance, "forced": force, "reason": reason,
    }  # fmt: skip
    mlc.set_model_version_tag(name, version, f"recicl.promotion.{alias}.{when}", json.dumps(record))
    if champion is not None:
        mlc.set_model_version_tag(
            name, champion, f"recicl.demotion.{alias}.{when}", json.dumps(record)
        )
    return decision
