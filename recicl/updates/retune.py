"""`recicl retune`: the champion re-tuned on the log plus what serving stored, as a candidate.

RecICL keeps the served model current by reading fresh events; a re-tune folds what those
events taught into the weights (the hybrid of the study recicl follows: periodic fine-tuning for
long-term knowledge, fresh context in between). One command does the whole step, in stages that
each leave a record, so that running it again with the same run name *resumes*:

1. **champion**: the version behind ``serve.alias``, pinned for the whole run (a later alias move
   does not change what a running re-tune continues), checked against this config's base model
   and LoRA shape before anything is written.
2. **export**: the events the interaction store kept after the log ends (the newest event of the
   log's samples folder, ``train.samples_dir``/``samples.output``), and the catalog items added
   while serving, into ``<workdir>/retune/<run>/served/`` (frozen: a resumed run re-tunes on the
   same events).
3. **samples**: ``samples build`` on the log *plus* that folder (``data.served_dir``) into
   ``<workdir>/retune/<run>/samples``: the same validation, quarantine and period cut.
4. **train**: from the champion's adapter (``retune.warm``) on the ``retune.recent_periods``
   before the newest period, validated on the newest; registered as a new version. A run that
   already registered its version is not trained again.
5. **evaluate**: candidate and champion on the newest period (AUC; MLflow evaluation runs, which
   the promotion gate reuses).
6. **enter**: the candidate becomes the shadow or the split arm of the served alias
   (``retune.enter_as``), through the same registry tag as ``PUT /admin/traffic``: every
   serving replica follows it within one alias poll. No alias moves: promotion stays
   ``recicl promote [--live]``.

A failure after the version was registered deletes that version (nothing half-done stays
registered or routed); the trained checkpoint stays, so the next run with the same name resumes
from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recicl.config import ConfigError, ReciclConfig, TrafficConfig
from recicl.data.periods import iso
from recicl.data.readers.served import SERVED_CATALOG, SERVED_EVENTS
from recicl.data.samples_folder import SamplesFolder, configured_samples_dir
from recicl.data.schema import CATALOG, EVENTS
from recicl.errors import ReciclError
from recicl.registry import (
    RUN_NAME_TAG,
    Workspace,
    alias_version,
    find_run,
    model_uri,
    resolve_model_uri,
)

#: Events read from the store per call; a page that ends inside one timestamp is re-read.
EXPORT_PAGE = 50_000
#: Where a run keeps its state, under its folder: what each finished stage produced.
STATE_FILE = "retune.json"


class RetuneError(ReciclError):
    """A re-tune that cannot (or must not) go on; the message says why and what to do."""


@dataclass
class RetuneResult:
    """What a re-tune did; also ``<workdir>/retune/<run>/retune.json`` (its resume state)."""

    run_name: str
    champion_version: str
    warm: bool
    cutoff_ts: int | None = None
    boundaries_ts: list[int] = field(default_factory=list)
    exported_events: int | None = None
    exported_items: int | None = None
    samples_dir: str | None = None
    newest_period: int | None = None
    train_periods: list[int] = field(default_factory=list)
    version: str | None = None
    candidate_auc: float | None = None
    champion_auc: float | None = None
    entered_as: str | None = None
    share: float | None = None
    stages_resumed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    done: bool = False  # every stage finished: running the same name again changes nothing

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def run_folder(workspace: Workspace, run_name: str) -> Path:
    return workspace.folder / "retune" / run_name


def default_run_name(champion_version: str) -> str:
    """``retune-v<N>-<UTC day>``: a crashed re-tune of the same champion resumes on the same
    day by running the same command again; a scheduler passes its own name."""
    return f"retune-v{champion_version}-{time.strftime('%Y%m%d', time.gmtime())}"


def champion_of(cfg: ReciclConfig, workspace: Workspace) -> str:
    """The version behind ``serve.alias``, or a RetuneError saying how to get one."""
    name, alias = workspace.registered_model, cfg.serve.alias
    version = alias_version(workspace.client(), name, alias)
    if version is None:
        raise RetuneError(
            f"no champion to re-tune: registered model {name!r} has no alias {alias!r}; "
            f"promote a version first (recicl promote --version N --alias {alias})"
        )
    return version


def check_champion_base(cfg: ReciclConfig, workspace: Workspace, champion: str) -> None:
    """The champion was tuned from this config's base (and, warm, with its LoRA shape):
    checked before anything is exported or built (ConfigError, one line)."""
    from recicl.modeling.packaged import read_version_manifest
    from recicl.train import same_base, warm_start_config

    uri = model_uri(workspace.registered_model, champion)
    if cfg.retune.warm:
        warm_start_config(_with_train(cfg, init_from=uri), workspace)
        return
    manifest = read_version_manifest(resolve_model_uri(uri, workspace).local_dir)
    if manifest is None or not same_base(manifest, cfg):
        raise ConfigError(
            f"the champion {uri} was tuned from "
            f"{manifest.base_model if manifest else 'an unknown base'}, this config's "
            f"model.name_or_path is {cfg.model.name_or_path}: re-tune with the champion's base"
        )


def _with_train(cfg: ReciclConfig, **changes: Any) -> ReciclConfig:
    """``cfg`` with ``train`` fields changed, validated (a run name names folders)."""
    try:
        train = type(cfg.train).model_validate({**cfg.train.model_dump(), **changes})
    except ValueError as error:
        raise ConfigError(f"retune: {error}") from None
    return cfg.model_copy(update={"train": train})


def log_samples(cfg: ReciclConfig) -> SamplesFolder:
    """The samples folder of the log alone (what the champion's log ends with)."""
    configured = configured_samples_dir(cfg)
    if not configured:
        raise ConfigError(
            "retune needs the log's samples folder (train.samples_dir or samples.output): "
            "build it with `recicl samples build` first"
        )
    return SamplesFolder.at(configured)


def read_new_events(store: Any, cutoff_ts: int, page: int = EXPORT_PAGE) -> list[Any]:
    """Every event the store kept with ``timestamp > cutoff_ts``, oldest first. A full page may
    end inside one timestamp: its last timestamp is read again with the next page (doubled
    when one timestamp fills a whole page), so no event is missed or read twice."""
    events: list[Any] = []
    since, limit = cutoff_ts, page
    while True:
        batch = store.events_since(since, limit)
        if len(batch) < limit:
            return events + batch
        last = batch[-1].timestamp
        complete = [event for event in batch if event.timestamp < last]
        if not complete:
            limit *= 2
            continue
        events += complete
        since, limit = complete[-1].timestamp, page


def export_served(cfg: ReciclConfig, cutoff_ts: int, folder: Path) -> tuple[list[int], int]:
    """Write the store's events after ``cutoff_ts`` and its added catalog items into
    ``folder`` (the files ``data.served_dir`` reads); (the events' timestamps, items).
    RetuneError, with nothing written, when fewer than ``retune.min_new_events`` are new."""
    from recicl.serve.settings import resolve_store_url
    from recicl.serve.store import open_store

    url = resolve_store_url(cfg)
    with open_store(url) as store:
        events = read_new_events(store, cutoff_ts)
        _, items = store.items_since(0)
        url = store.url  # password redacted
    if len(events) < cfg.retune.min_new_events:
        raise RetuneError(
            f"no new events to re-tune on: the store {url} holds {len(events)} event(s) after "
            f"the log ends ({iso(cutoff_ts)}), retune.min_new_events is "
            f"{cfg.retune.min_new_events}; nothing was registered"
        )
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "rating": pa.array([e.rating for e in events], pa.float64()),
            "label": pa.array([e.label for e in events], pa.int8()),
            "timestamp": pa.array([e.timestamp for e in events], pa.int64()),
        },
        schema=EVENTS,
    )
    catalog = pa.table(
        {
            "item_id": [i.item_id for i in items],
            "title": [i.title for i in items],
            "attributes": pa.array([list(i.attributes) for i in items], CATALOG.field(2).type),
        },
        schema=CATALOG,
    )
    for name, data in ((SERVED_EVENTS, table), (SERVED_CATALOG, catalog)):
        pq.write_table(data, folder / f".{name}.tmp")
        (folder / f".{name}.tmp").replace(folder / name)  # a crash never leaves half a file
    return [e.timestamp for e in events], len(items)


def retune_boundaries(log_boundaries: list[int], cutoff_ts: int, served_ts: list[int],
                      holdout_share: float) -> list[int]:  # fmt: skip
    """Period starts of the re-tune's samples: the log's own (the champion's periods), one
    where the stored events begin (just after the log's last event) and one where their
    newest ``holdout_share`` begins (RetuneError when their times cannot be split so)."""
    times = sorted(served_ts)
    split = times[min(len(times) - 1, int(len(times) * (1.0 - holdout_share)))]
    if split == times[0]:  # the older part would be empty: hold out from the next time on
        later = [t for t in times if t > times[0]]
        if not later:
            raise RetuneError(
                f"all {len(times)} new events share one timestamp ({iso(times[0])}): none can "
                "be trained on while others are held out; wait for more events"
            )
        split = later[0]
    return [*(b for b in log_boundaries if b <= cutoff_ts), cutoff_ts + 1, split]


def build_retune_samples(cfg: ReciclConfig, folder: Path, boundaries: list[int]) -> SamplesFolder:
    """The samples of log + served events cut at ``boundaries`` (reused when a finished build
    of the same config and cut is there: a resumed run does not build again)."""
    from recicl.data.pipeline import build_samples

    root = folder / "samples"
    manifest = SamplesFolder(root).manifest()  # None before the first build
    wanted = cfg.fingerprint("data", "samples")
    if manifest is None or (manifest.config_hash, manifest.boundaries_ts) != (wanted, boundaries):
        build_samples(cfg, boundaries_ts=boundaries)
    return SamplesFolder.at(root)


def registered_version_of_run(workspace: Workspace, run_name: str) -> str | None:
    """The version a training run of this name already registered (a resumed re-tune that
    crashed after registering must not register a second one)."""
    uri = workspace.tracking_uri
    run_id = find_run(uri, workspace.ensure_experiment(), {RUN_NAME_TAG: run_name})
    if run_id is None:
        return None
    name = workspace.registered_model
    found = workspace.client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(max(int(v.version) for v in found)) if found else None


def retune_periods(cfg: ReciclConfig, samples: SamplesFolder) -> tuple[list[int], int]:
    """(training periods, held-out newest period) of the rebuilt samples."""
    newest = samples.newest_period()
    before = [p for p in samples.periods() if p < newest]
    if cfg.retune.warm and cfg.retune.recent_periods is not None:
        before = before[-cfg.retune.recent_periods :]
    if not before:
        raise RetuneError(
            f"{samples.root} has no period before the newest ({newest}) to train on: "
            "raise samples.periods"
        )
    return before, newest


def enter_candidate(cfg: ReciclConfig, workspace: Workspace, version: str) -> TrafficConfig:
    """Make ``version`` the shadow or split arm of the served alias (the registry tag that
    ``PUT /admin/traffic`` writes), keeping the other arm unless it names the same version."""
    from recicl.serve.traffic import TRAFFIC_TAG, decode_override, encode_override

    mlc = workspace.client()
    name, alias = workspace.registered_model, cfg.serve.alias
    tag = f"{TRAFFIC_TAG}.{alias}"
    current = decode_override(mlc.get_registered_model(name).tags.get(tag)) or cfg.serve.traffic
    raw = current.model_dump(mode="json")
    arm = cfg.retune.enter_as
    other = "split" if arm == "shadow" else "shadow"
    raw[arm].update(version=int(version), share=cfg.retune.share)
    if str(raw[other].get("version")) == str(version):
        raw[other]["version"] = None
    traffic = TrafficConfig.model_validate(raw)
    mlc.set_registered_model_tag(name, tag, encode_override(traffic, int(time.time())))
    return traffic


def run_retune(cfg: ReciclConfig, run_name: str | None = None) -> RetuneResult:
    """The whole re-tune (module doc); resumes a run of the same name where it stopped."""
    started = time.perf_counter()
    workspace = Workspace.of(cfg)
    run_name = run_name or cfg.train.run_name
    # the default name needs the champion; a named run that is resumed uses the champion it
    # pinned, even if the alias has moved (or been removed) since
    champion = None if run_name else champion_of(cfg, workspace)
    run_name = run_name or default_run_name(str(champion))
    cfg = _with_train(cfg, run_name=run_name)  # validates the name (it names folders)
    folder = run_folder(workspace, run_name)
    state_path = folder / STATE_FILE
    if state_path.is_file():
        state = RetuneResult(**json.loads(state_path.read_text()))
        champion = state.champion_version  # pinned when the run started
        if state.done:  # never re-enter a candidate someone has promoted or withdrawn since
            print(f"[retune] {run_name} already finished: version {state.version}", flush=True)
            return state
        state.stages_resumed = []
        print(f"[retune] resuming {run_name} (champion v{champion})", flush=True)
    else:
        champion = champion or champion_of(cfg, workspace)
        state = RetuneResult(run_name=run_name, champion_version=champion, warm=cfg.retune.warm)
    check_champion_base(cfg, workspace, champion)
    _export_stage(cfg, state, folder)
    served_cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"served_dir": str(folder / "served")}),
            "samples": cfg.samples.model_copy(update={"output": str(folder / "samples")}),
        }
    )
    samples = build_retune_samples(served_cfg, folder, state.boundaries_ts)
    state.samples_dir = str(samples.root)
    state.train_periods, state.newest_period = retune_periods(cfg, samples)
    state.save(folder)
    train_cfg = _with_train(
        served_cfg,
        samples_dir=str(samples.root),
        train_periods=state.train_periods,
        val_periods=[state.newest_period],
        init_from=model_uri(workspace.registered_model, champion) if cfg.retune.warm else None,
    )
    _train_stage(train_cfg, workspace, state, folder)
    try:
        _evaluate_and_enter(train_cfg, workspace, state, samples)
    except BaseException:
        _unregister(workspace, state)
        state.save(folder)
        raise
    state.seconds = round(time.perf_counter() - started, 1)
    state.done = True
    state.save(folder)
    return state


def _export_stage(cfg: ReciclConfig, state: RetuneResult, folder: Path) -> None:
    if state.boundaries_ts and (folder / "served" / SERVED_EVENTS).is_file():
        state.stages_resumed.append("export")
        return
    log = log_samples(cfg)
    state.cutoff_ts = log.last_event_ts()
    times, state.exported_items = export_served(cfg, state.cutoff_ts, folder / "served")
    state.exported_events = len(times)
    log_boundaries = log.require_manifest().boundaries_ts
    state.boundaries_ts = retune_boundaries(
        log_boundaries, state.cutoff_ts, times, cfg.retune.holdout_share
    )
    print(
        f"[retune] exported {state.exported_events} events after {iso(state.cutoff_ts)} and "
        f"{state.exported_items} added items from the store; the newest from "
        f"{iso(state.boundaries_ts[-1])} on are held out",
        flush=True,
    )
    state.save(folder)


def _train_stage(
    cfg: ReciclConfig, workspace: Workspace, state: RetuneResult, folder: Path
) -> None:
    from recicl.train import train

    assert cfg.train.run_name is not None
    existing = registered_version_of_run(workspace, cfg.train.run_name)
    if existing is not None:
        state.version = existing
        state.stages_resumed.append("train")
        return
    result = train(cfg, workspace=workspace)
    if result.version is None:
        raise RetuneError(
            f"training run {cfg.train.run_name} registered no version (mlflow.register_version "
            "is off, or no checkpoint): a re-tune needs a version to enter as the candidate"
        )
    state.version = result.version
    mlc = workspace.client()
    tags = {"recicl.retune.run": state.run_name, "recicl.retune.from": state.champion_version,
            "recicl.retune.warm": str(state.warm).lower()}  # fmt: skip
    for key, value in tags.items():
        mlc.set_model_version_tag(workspace.registered_model, state.version, key, value)
    state.save(folder)


def _evaluate_and_enter(
    cfg: ReciclConfig, workspace: Workspace, state: RetuneResult, samples: SamplesFolder
) -> None:
    from recicl.promotion import evaluation_auc

    name = workspace.registered_model
    assert state.version is not None and state.newest_period is not None
    state.candidate_auc = evaluation_auc(
        cfg, workspace, name, state.version, samples.root, state.newest_period
    )
    state.champion_auc = evaluation_auc(
        cfg, workspace, name, state.champion_version, samples.root, state.newest_period
    )
    if cfg.retune.enter_as != "none":
        enter_candidate(cfg, workspace, state.version)
        state.entered_as, state.share = cfg.retune.enter_as, cfg.retune.share


def _unregister(workspace: Workspace, state: RetuneResult) -> None:
    """Delete the version this run registered: a failed re-tune leaves none behind."""
    if state.version is None:
        return
    workspace.client().delete_model_version(workspace.registered_model, state.version)
    print(
        f"[retune] failed after registering version {state.version}: deleted it; run again "
        f"with --run-name {state.run_name} to resume",
        flush=True,
    )
    state.version = None
