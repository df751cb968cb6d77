"""The promotion gate: move a registry alias only when the candidate is not worse.

Promotion needs evaluation (both versions scored on the same samples) and the registry (aliases,
tags), so it sits above both: :mod:`recicl.registry` only talks to MLflow, and
:mod:`recicl.evaluate` only scores and measures.

"The same samples" means the same content (:meth:`SamplesFolder.content_id`), and the same
``evaluate.max_samples`` subset: a cached evaluation is reused only when both match, so a champion's
AUC measured on an older build of the samples is never compared with a candidate's on the new one.

``promote(..., live=...)`` (``recicl promote --live``) gates on live feedback instead: the pairs
of scores the champion and the candidate (in shadow) gave on the same requests, joined with the
users' events, compared by a paired bootstrap (:mod:`recicl.evaluate.paired`). The evidence is
read by the caller (:func:`recicl.serve.live_metrics.read_live_evidence`) because serving sits
beside promotion in the layer order.

**History.** Every move of an alias, promotion or rollback, is recorded on the version it moved
to as a tag ``recicl.promotion.<alias>.<unix ms>`` (and on the version it left as
``recicl.demotion.<alias>.<unix ms>``): JSON with ``kind``, ``from``, ``to``, ``who``, ``when``,
``reason``, the gate and its numbers. :func:`rollback` reads them back: the records, replayed in
time order, are a stack of previous holders (a promotion pushes the holder it replaced, a
rollback pops it), so rolling back twice goes two promotions back, never forth again.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recicl.config import ConfigError, ReciclConfig
from recicl.data.samples_folder import SamplesFolder, configured_samples_dir
from recicl.evaluate.batch import evaluate_model, subset_name
from recicl.evaluate.paired import PairedBootstrap, PairedEvidence, paired_bootstrap
from recicl.registry import (
    EVAL_KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    SAMPLES_TAG,
    SUBSET_TAG,
    RegistryError,
    Workspace,
    alias_version,
    model_uri,
    model_version,
    registered_model,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Tag prefixes of the history (see the module docstring).
PROMOTION_TAG, DEMOTION_TAG = "recicl.promotion", "recicl.demotion"


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
    live: PairedBootstrap | None = None  # the live gate's numbers (promote --live)
    live_source: str | None = None  # which feedback the live gate read
    refusal: str | None = None  # why the live gate could not compare (too few pairs, ...)

    def message(self) -> str:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        champion = f"v{self.champion}" if self.champion else "(no champion)"
        where = f"period {self.period}" if self.period is not None else "-"
        numbers = (
            f"candidate v{self.candidate} AUC {fmt(self.candidate_auc)}, champion {champion} "
            f"AUC {fmt(self.champion_auc)} on {where} (tolerance {self.tolerance})"
        )
        if self.refusal is not None:
            numbers = self.refusal
        elif self.live is not None:
            numbers = live_numbers(self.live, self.candidate, champion, self.tolerance)
            numbers += f"; {self.live_source}"
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


def evaluation_runs(
    mlc: MlflowClient, name: str, version: str, samples_digest: str | None = None
) -> list[Any]:
    """The evaluation runs of ``name`` v``version`` (on the samples with ``samples_digest``
    when given), newest first: what the gate reuses and the monitor compares with."""
    where = (
        f"tags.`{EVAL_KIND_TAG}` = 'evaluation' and "
        f"tags.`{MODEL_NAME_TAG}` = '{name}' and tags.`{MODEL_VERSION_TAG}` = '{version}'"
    )
    if samples_digest is not None:
        where += f" and tags.`{SAMPLES_TAG}` = '{samples_digest}'"
    runs: list[Any] = mlc.search_runs(
        [e.experiment_id for e in mlc.search_experiments()],
        filter_string=where,
        order_by=["attributes.start_time DESC"],
    )
    return runs


def evaluation_auc(
    cfg: ReciclConfig, workspace: Workspace, name: str, version: str, samples_dir: Path, period: int
) -> float | None:
    """AUC of ``name`` v``version`` on ``period`` of these samples: from an earlier evaluation run
    on the same samples (and the same ``evaluate.max_samples`` subset) when there is one,
    otherwise by evaluating now."""
    runs = evaluation_runs(
        workspace.client(), name, version, SamplesFolder.at(samples_dir).content_id()
    )
    key = f"p{period}_auc"
    subset = subset_name(cfg.evaluate.max_samples)  # compare on the same samples only
    for run in runs:
        if run.data.tags.get(SUBSET_TAG, "all") != subset:
            continue
        if key in run.data.metrics:
            return float(run.data.metrics[key])
    report = evaluate_model(
        cfg, model_uri(name, version), samples_dir, [period], workspace=workspace
    )
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
    live: PairedEvidence | None = None,
) -> PromotionDecision:
    """Move ``alias`` to ``version`` only if it is not worse than the current holder.

    Offline (default), both are compared on the same samples and period (the newest period with
    samples unless given), evaluating either when no earlier evaluation exists. With ``live``,
    on the joined pairs of champion and candidate in that evidence (:func:`live_gate`).
    ``force`` skips the comparison but needs a reason. Every move is recorded (module docstring).
    """
    version = str(version)
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason TEXT saying why the gate is overridden")
    if live is not None and (samples_dir is not None or period is not None):
        raise RegistryError(
            "--live compares on live feedback; --samples and --period belong to the offline "
            "gate: drop them or drop --live"
        )
    workspace = Workspace.of(cfg)
    mlc = workspace.client()
    registered_model(mlc, name, workspace.tracking_uri)
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
        passed = (
            live_gate(cfg, decision, live)
            if live is not None
            else offline_gate(cfg, workspace, decision, samples_dir)
        )
        if not passed:
            return decision
    gate = "forced" if force else "first" if champion is None else "live" if live else "offline"
    record = {
        "kind": "promote", "gate": gate, "period": decision.period,
        "candidate_auc": decision.candidate_auc, "champion_auc": decision.champion_auc,
        "tolerance": tolerance, "forced": force, "reason": reason,
        "live": dataclasses.asdict(decision.live) if decision.live else None,
        "live_source": decision.live_source,
    }  # fmt: skip
    move_alias(mlc, name, alias, champion, version, record)
    decision.promoted = True
    return decision


def offline_gate(
    cfg: ReciclConfig,
    workspace: Workspace,
    decision: PromotionDecision,
    samples_dir: str | Path | None,
) -> bool:
    """Fill in both AUCs on the same samples and period; True when the candidate passes."""
    assert decision.champion is not None
    chosen = samples_dir or configured_samples_dir(cfg)
    try:
        folder = SamplesFolder.at(chosen or "")
        folder.require_manifest()
    except ConfigError:
        raise RegistryError(
            f"promotion compares both versions on samples, but {chosen or '(none given)'} "
            "is not a samples folder: pass --samples DIR (a `recicl samples build` output), "
            "or --live to compare on live feedback"
        ) from None
    period = folder.newest_period() if decision.period is None else decision.period
    decision.period = period
    name = decision.name
    candidate, champion = decision.candidate, decision.champion
    decision.candidate_auc = evaluation_auc(cfg, workspace, name, candidate, folder.root, period)
    decision.champion_auc = evaluation_auc(cfg, workspace, name, champion, folder.root, period)
    if decision.candidate_auc is None or decision.champion_auc is None:
        raise RegistryError(
            f"AUC is undefined on period {period} (one class only); choose --period"
        )
    return decision.candidate_auc >= decision.champion_auc - decision.tolerance


def live_gate(cfg: ReciclConfig, decision: PromotionDecision, evidence: PairedEvidence) -> bool:
    """The candidate passes when the lower bound of the paired bootstrap of candidate AUC -
    champion AUC, at ``evaluate.live.confidence``, is at least ``-promotion_tolerance``.

    Refuses (``decision.refusal``) with fewer than ``evaluate.live.min_pairs`` joined pairs,
    or pairs of one class only (no AUC): not deciding beats deciding on noise."""
    lc = cfg.evaluate.live
    champion, candidate = decision.champion, decision.candidate
    assert champion is not None
    decision.live_source = evidence.source
    pairs = evidence.pairs.get((champion, candidate))
    count = 0 if pairs is None else len(pairs)
    if pairs is None or count < lc.min_pairs:
        others = sorted(
            f"v{a}/v{b}: {len(p)}"
            for (a, b), p in evidence.pairs.items()
            if (a, b) != (champion, candidate)
        )
        decision.refusal = (
            f"{count} joined pairs of champion v{champion} and candidate v{candidate} in shadow, "
            f"fewer than evaluate.live.min_pairs = {lc.min_pairs} ({evidence.source}; pairs of "
            f"other versions: {', '.join(others) or 'none'}); run v{candidate} in shadow longer "
            "(serve.traffic.shadow or PUT /admin/traffic)"
        )
        return False
    likes = int(pairs.labels.sum())
    if likes in (0, count):
        decision.refusal = (
            f"all {count} joined pairs of v{champion} and v{candidate} are "
            f"{'liked' if likes else 'disliked'}: AUC is undefined; wait for both outcomes"
        )
        return False
    result = paired_bootstrap(pairs, resamples=lc.resamples, confidence=lc.confidence, seed=lc.seed)
    decision.live = result
    decision.candidate_auc, decision.champion_auc = result.candidate_auc, result.champion_auc
    return result.lower >= -decision.tolerance


def live_numbers(result: PairedBootstrap, candidate: str, champion: str, tolerance: float) -> str:
    """The live gate's numbers in one sentence."""
    return (
        f"live AUC candidate v{candidate} {result.candidate_auc:.4f} vs champion {champion} "
        f"{result.champion_auc:.4f} (difference {result.delta:+.4f}) on {result.pairs} joined "
        f"pairs of {result.users} users ({result.likes} liked); {result.confidence:.0%} lower "
        f"bound {result.lower:+.4f}, needed >= {0.0 - tolerance:+.4f} (minus "
        f"evaluate.promotion_tolerance; paired bootstrap over users, {result.resamples} "
        f"resamples, seed {result.seed})"
    )


# -- the history: moves recorded, rollback ----------------------------------------------------


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def move_alias(
    mlc: MlflowClient,
    name: str,
    alias: str,
    previous: str | None,
    version: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Point ``alias`` at ``version`` and record the move on both versions (the one way an
    alias moves in recicl: promote and rollback both end here).

    Compare-and-set: ``previous`` is the holder the caller judged against (read before an
    evaluation that may take hours); when the alias has moved since, the gate's verdict is
    about the wrong champion, so nothing changes and the caller is told to rerun. MLflow has
    no atomic compare-and-set on aliases: the re-check narrows the race from the evaluation's
    length to the two registry calls."""
    now = alias_version(mlc, name, alias)
    if now != previous:
        raise RegistryError(
            f"{name}@{alias} moved from version {previous} to {now} while this move was "
            "decided (a concurrent promotion or rollback): nothing changed; rerun against the "
            "new holder"
        )
    when_ms = time.time_ns() // 1_000_000
    record = {
        "alias": alias, "from": previous, "to": version, "who": _who(),
        "when": when_ms // 1000, "when_ms": when_ms, **record,
    }  # fmt: skip
    mlc.set_registered_model_alias(name, alias, version)
    text = json.dumps(record)
    mlc.set_model_version_tag(name, version, f"{PROMOTION_TAG}.{alias}.{when_ms}", text)
    if previous is not None:
        mlc.set_model_version_tag(name, previous, f"{DEMOTION_TAG}.{alias}.{when_ms}", text)
    return record


def alias_history(mlc: MlflowClient, name: str, alias: str) -> list[dict[str, Any]]:
    """Every recorded move of ``alias``, oldest first (records before ``when_ms`` existed are
    ordered by their ``when`` seconds)."""
    prefix = f"{PROMOTION_TAG}.{alias}."
    records = []
    for entry in mlc.search_model_versions(f"name='{name}'"):
        for key, value in (entry.tags or {}).items():
            if not key.startswith(prefix):
                continue
            try:
                record = json.loads(value)
            except ValueError:
                continue  # not ours: skip rather than guess
            if isinstance(record, dict) and "to" in record:
                records.append(record)
    return sorted(records, key=lambda r: int(r.get("when_ms", int(r.get("when", 0)) * 1000)))


def previous_holder(records: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(the holder a rollback returns to, the holder the history ends on), by replaying the
    records as a stack (module docstring). None: no previous holder / no history."""
    stack: list[str] = []
    last: str | None = None
    for record in records:
        if record.get("kind") == "rollback":
            if stack:
                stack.pop()
        elif record.get("from") is not None:
            stack.append(str(record["from"]))
        else:  # the alias's first holder: nothing before it
            stack = []
        last = str(record["to"])
    return (stack[-1] if stack else None), last


@dataclass
class Rollback:
    """What `recicl rollback` did."""

    name: str
    alias: str
    left: str
    restored: str
    reason: str | None

    def message(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"rolled back {self.name}@{self.alias}: v{self.left} → v{self.restored}{why}"


def rollback(
    cfg: ReciclConfig, name: str, alias: str = "champion", *, reason: str | None = None
) -> Rollback:
    """Return ``alias`` to its previous holder in the history, recorded like a promotion.

    Refuses, changing nothing, when the alias has no holder, no previous holder, or was moved
    outside recicl since its last recorded move (then the history does not say what came
    before the current holder)."""
    workspace = Workspace.of(cfg)
    mlc = workspace.client()
    registered_model(mlc, name, workspace.tracking_uri)
    current = alias_version(mlc, name, alias)
    if current is None:
        raise RegistryError(f"{name}@{alias} is not set: there is nothing to roll back")
    target, last = previous_holder(alias_history(mlc, name, alias))
    if last is not None and last != current:
        raise RegistryError(
            f"{name}@{alias} is v{current} but its last recorded move was to v{last}: it was "
            "moved outside `recicl promote`/`rollback`, so the history does not say what came "
            f"before v{current}; move it with `recicl promote --force --version N --reason TEXT`"
        )
    if target is None:
        raise RegistryError(
            f"{name}@{alias} (v{current}) has no previous holder in its promotion history; "
            "nothing changed"
        )
    model_version(mlc, name, target)  # deleted since: a clear error, nothing moved
    move_alias(mlc, name, alias, current, target, {"kind": "rollback", "reason": reason})
    return Rollback(name, alias, current, target, reason)
