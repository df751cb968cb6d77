"""The sample-building job: read → validate/quarantine → per-user samples → periods → Parquet.

Stages (all Ray Data, streaming until the two materialization points):

1. ``read_source``: raw text events (lazy) + catalog (small, on the driver).
2. ``validate_batch``: typed events or a reason; materialized once because both the good rows
   and the quarantine are written from it.
3. ``groupby(user_id).map_groups(annotate_events)``: duplicates flagged, histories and demos built
   per user, vectorized. Materialized once: period boundaries need the timestamps of all events,
   and samples + duplicate quarantine rows are both written from it.
4. Periods are cut on the driver from the gathered ``timestamp``/``label``/``kind`` columns
   (17 bytes per event), then samples are written partitioned by period.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data.dataset import MaterializedDataset

from recicl import __version__
from recicl.config import ConfigError, ReciclConfig, parse_periods
from recicl.data.item_embeddings import ItemEmbeddings
from recicl.data.item_stats import (
    item_codes_from_events,
    item_stats_from_events,
    with_item_codes,
    write_item_stats,
)
from recicl.data.manifest import SamplesManifest
from recicl.data.periods import (
    assign_periods,
    date_boundaries,
    describe_periods,
    equal_count_boundaries,
    iso,
)
from recicl.data.readers import check_source_folder, read_source
from recicl.data.retrieval import DemoQuality
from recicl.data.samples import KIND_DUPLICATE, KIND_SAMPLE, Selection, annotate_events, to_samples
from recicl.data.samples_folder import SamplesFolder
from recicl.data.schema import QUARANTINE
from recicl.data.validate import quarantined, valid_events, validate_batch
from recicl.raycluster import ensure_ray, local_core_limit

log = logging.getLogger(__name__)


#: Embeds a catalog table (``recicl.embeddings.embedder_for(cfg)``; injected by the callers above
#: the data layer, since the encoders may load an LLM).
Embedder = Callable[[pa.Table], ItemEmbeddings]


def _with_periods(
    batch: pa.Table, *, boundaries: np.ndarray, policy: str | None = None
) -> pa.Table:
    """Ray Data UDF: annotated rows → SAMPLES rows with their period (demos of augmentation
    policy ``policy`` when given)."""
    periods = assign_periods(batch["timestamp"].to_numpy(), boundaries)
    return to_samples(batch, pa.array(periods), policy=policy)


def _selection(
    cfg: ReciclConfig, catalog: pa.Table, embedder: Embedder | None
) -> tuple[Selection, str | None]:
    """The build's policies with their item vectors, and where the vectors came from."""
    samples = cfg.samples
    embeddings, origin = None, None
    if samples.needs_embeddings():
        if samples.embeddings:
            embeddings = ItemEmbeddings.load(Path(samples.embeddings).expanduser())
            origin = str(samples.embeddings)
        elif embedder is not None:
            started = time.perf_counter()
            embeddings = embedder(catalog)
            origin = "embedded by this build"
            log.info(
                "embedded %d catalog items in %.1f s (%s)",
                len(embeddings),
                time.perf_counter() - started,
                embeddings.metadata.get("encoder"),
            )
        else:
            raise ConfigError(
                f"samples.demo_policy {samples.demo_policy!r} / history_policy "
                f"{samples.history_policy!r} / augment {samples.augment} retrieve by item "
                "similarity: set samples.embeddings to an item_embeddings.parquet (`recicl embed "
                "items`), or build with `recicl samples build`, which embeds the catalog"
            )
        known = embeddings.rows(catalog["item_id"].to_pylist())
        if not (known >= 0).any():
            raise ConfigError(
                f"samples.embeddings ({origin}) has no vector for any catalog item: it was made "
                "for another catalog; re-run `recicl embed items` on this one"
            )
    quality = None
    if samples.demo_quality:
        path = Path(samples.demo_quality).expanduser()
        try:
            quality = DemoQuality.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"samples.demo_quality {path}: {error}; write it with `recicl samples "
                "demo-quality --samples DIR --model M`"
            ) from None
    selection = Selection(
        demo_policy=samples.demo_policy,
        history_policy=samples.history_policy,
        recent_share=samples.recent_share,
        window=samples.retrieval_window,
        augment=tuple(samples.augment),
        augment_replaces=samples.augment_replaces,
        embeddings=embeddings,
        quality=quality,
    )
    return selection, origin


def _duplicates_as_quarantine(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: duplicate events of an annotated batch as QUARANTINE rows."""
    dup = batch.filter(pc.equal(batch["kind"], KIND_DUPLICATE))
    n = dup.num_rows
    text = {
        "user_id": dup["user_id"],
        "item_id": dup["item_id"],
        "rating": dup["rating"].cast(pa.string()),
        "label": dup["label"].cast(pa.string()),
        "timestamp": dup["timestamp"].cast(pa.string()),
        "raw": pa.nulls(n, pa.string()),
        "reason": pa.array(["duplicate_event"] * n, pa.string()),
        # judged after validation, from typed events: where the repeat was read is not kept
        "file": pa.nulls(n, pa.string()),
        "line": pa.nulls(n, pa.int64()),
    }
    return pa.table([text[f.name] for f in QUARANTINE], schema=QUARANTINE)


def _period_columns(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: the few columns the driver needs to cut periods and count them."""
    small = batch.select(["user_id", "sample_id", "timestamp", "label", "kind"])
    kept = small.filter(pc.not_equal(small["kind"], KIND_DUPLICATE))
    first = pc.ends_with(kept["sample_id"], "#0")  # the event at position 0 of its user
    first_user = pc.if_else(first, kept["user_id"], pa.scalar(None, pa.string()))
    return kept.select(["timestamp", "label", "kind"]).append_column("first_user", first_user)


def _check_users_whole(stats: pa.Table) -> None:
    """Fail loudly if a user's events were split across partitions (they'd get two position 0s)."""
    if not stats.num_rows:
        return
    firsts = pc.drop_null(stats["first_user"])
    if len(pc.unique(firsts)) != len(firsts):
        raise RuntimeError(
            "internal error: a user's events were split across partitions; samples would be "
            "wrong. Please report this with your Ray version."
        )


@ray.remote
def _apply_to_block(block: pa.Table, fn: Any) -> pa.Table:
    # An empty block may have no columns at all (Ray Data passes a block that an earlier step
    # emptied, e.g. one that held only a CSV header line, through map_batches without them).
    return fn(block) if block.num_rows else block


def _gather(ds: MaterializedDataset, fn: Any, max_in_flight: int | None = None) -> pa.Table:
    """Apply small-result UDFs to every block of a *materialized* dataset and collect the results
    on the driver. Plain Ray tasks on the existing block refs: only the small results travel,
    and no new Ray Data execution (about 2 s of fixed cost each on a small machine) is started.
    ``max_in_flight`` bounds the tasks running at once (the job's CPU limit): more tasks than
    that only make Ray start more worker processes.
    """
    refs: list[ray.ObjectRef] = []
    pending: list[ray.ObjectRef] = []
    for block in ds.to_arrow_refs():
        if max_in_flight and len(pending) >= max_in_flight:
            _, pending = ray.wait(pending, num_returns=1)
        refs.append(_apply_to_block.remote(block, fn))
        pending.append(refs[-1])
    tables = [t for t in ray.get(refs) if t.num_rows]  # in block order
    return pa.concat_tables(tables).combine_chunks() if tables else pa.table({})


def _default_partitions(cpus: int | None) -> int:
    cpus = cpus or int(ray.cluster_resources().get("CPU", 1))
    return max(2, min(64, cpus * 2))


@contextlib.contextmanager
def _data_cpu_limit(cpus: int | None) -> Iterator[None]:
    """Datasets created inside this block run on at most ``cpus`` CPUs (None: no limit).

    Ray Data snapshots the current DataContext when a dataset is created, and datasets derived
    from it keep that snapshot, so the limit applies to this job's datasets only; the context
    is restored on exit (a Ray Train job in the same process must not inherit it).
    """
    if cpus is None:
        yield
        return
    context = ray.data.DataContext.get_current()
    saved = context.execution_options
    options = copy.deepcopy(saved)
    options.resource_limits = options.resource_limits.copy(cpu=float(cpus))
    context.execution_options = options
    try:
        yield
    finally:
        context.execution_options = saved


def item_stats_until(cfg: ReciclConfig) -> int | None:
    """The last period the item statistics count: ``samples.item_stats_until``, else the last
    of ``experiment.train_periods`` (the periods the variants are tuned on)."""
    if cfg.samples.item_stats_until is not None:
        return cfg.samples.item_stats_until
    periods = parse_periods(cfg.experiment.train_periods) or []
    return max(periods) if periods else None


def _write_item_stats(
    cfg: ReciclConfig, annotated: ray.data.Dataset, boundaries: np.ndarray, folder: SamplesFolder
) -> dict[str, Any] | None:
    """Count events and likes per item up to the configured period and write them with the
    time they stop at; the manifest entry (None when no period is configured)."""
    until = item_stats_until(cfg)
    if until is None:
        return None
    until = min(until, len(boundaries))  # a period past the last one: every event
    counted = list(range(until + 1))
    table = item_stats_from_events(annotated, boundaries, counted)
    bits = 0
    if cfg.samples.item_code_bits:
        codes, bits = item_codes_from_events(
            annotated,
            boundaries,
            counted,
            cfg.samples.item_code_bits,
            cfg.samples.item_code_min_events,
        )
        table = with_item_codes(table, codes)
    until_ts = int(boundaries[until]) if until < len(boundaries) else None
    meta = {"until_period": until, "until_ts": until_ts, "code_bits": bits}
    write_item_stats(table, folder.item_stats_path, meta)
    return {
        "file": folder.item_stats_path.name,
        **meta,
        "until": iso(until_ts),
        "items": table.num_rows,
        "coded_items": table.num_rows - table["code"].null_count,
        "events": int(pc.sum(table["events"]).as_py() or 0),
    }


def build_samples(
    cfg: ReciclConfig,
    *,
    dashboard: bool = True,
    embedder: Embedder | None = None,
    boundaries_ts: Sequence[int] | None = None,
) -> SamplesManifest:
    """Run the whole job and return the manifest (also written to ``<output>/manifest.json``).

    ``dashboard=False`` when this process will not run Ray Train afterwards and Ray is not
    running yet: a local runtime then starts without the dashboard (see ``ensure_ray``).
    ``embedder``: embeds the catalog when a policy retrieves by similarity and
    ``samples.embeddings`` is not set. ``boundaries_ts``: period starts in unix seconds,
    ascending, instead of the configured cut (a re-tune keeps the log's periods and adds its
    own for the events serving stored).

    Everything is written into a staging folder first and moved into ``samples.output`` at
    the end (:meth:`SamplesFolder.replace_outputs`): a failed or running rebuild never leaves
    the previous samples half-deleted."""
    if not cfg.samples.output:
        raise ConfigError("samples.output is not set: pass --output DIR (or set samples.output)")
    output = Path(cfg.samples.output).expanduser().resolve()
    started = time.perf_counter()
    check_source_folder(cfg.data)
    ensure_ray(cfg.ray, dashboard=dashboard)
    # On a local runtime that advertises more logical CPUs than the machine has (for Train),
    # run on the real cores; on a cluster, None: Ray Data uses all of it.
    cpus = local_core_limit()
    with _data_cpu_limit(cpus):
        source = read_source(cfg.data)
    log.info("reading %s from %s", source.layout, cfg.data.path)
    selection, embeddings_origin = _selection(cfg, source.catalog, embedder)
    validated, annotated = _validate_and_annotate(cfg, source, selection, cpus)

    stats = _gather(annotated, _period_columns, cpus)
    _check_users_whole(stats)
    timestamps = stats["timestamp"].to_numpy() if stats.num_rows else np.zeros(0, np.int64)
    labels = stats["label"].to_numpy().astype(np.float64) if stats.num_rows else np.zeros(0)
    is_sample = (stats["kind"].to_numpy() == KIND_SAMPLE) if stats.num_rows else np.zeros(0, bool)
    if boundaries_ts is not None:
        boundaries = np.asarray(boundaries_ts, dtype=np.int64)
    elif cfg.samples.boundaries:
        boundaries = date_boundaries(cfg.samples.boundaries)
    else:
        boundaries = equal_count_boundaries(timestamps, cfg.samples.periods)

    target = SamplesFolder(output)
    folder = target.staging()
    if is_sample.any():
        for policy in (None, *selection.extra_policies):
            root = folder.samples_root if policy is None else folder.augmented_root(policy)
            annotated.map_batches(
                functools.partial(_with_periods, boundaries=boundaries, policy=policy),
                batch_size=None,
                batch_format="pyarrow",
            ).write_parquet(str(root), partition_cols=["period"])
    item_stats = _write_item_stats(cfg, annotated, boundaries, folder)
    if selection.embeddings is not None:  # serving reads the vectors from the samples folder
        selection.embeddings.save(folder.embeddings_path)
    if selection.quality is not None:  # and the estimator, for the quality policy
        folder.demo_quality_path.write_text(json.dumps(selection.quality.to_json(), indent=2))
    quarantine = _write_quarantine(folder, source, validated, annotated, cpus)
    pq.write_table(source.catalog, folder.catalog_path)

    manifest = SamplesManifest.model_validate(
        {
            "recicl_version": __version__,
            "created_at": iso(int(time.time())),
            "config_hash": cfg.fingerprint("data", "samples"),
            "content_id": folder.content_id(),
            "source": {
                "name": cfg.data.source,
                "path": str(cfg.data.path),
                "layout": source.layout,
            },
            "rows_read": validated.count(),  # from block metadata: no new execution
            "events": len(timestamps),
            # where the log ends: events serving stores later are new to a version tuned here
            "last_event_ts": int(timestamps.max()) if len(timestamps) else None,
            "users": len(pc.drop_null(stats["first_user"])) if stats.num_rows else 0,
            "catalog_items": source.catalog.num_rows,
            # the scale ratings were validated against (null: unchecked); serving refuses others
            "rating_range": source.rating_range,
            "samples": int(is_sample.sum()),
            "like_rate": round(float(labels.mean()), 6) if len(labels) else None,
            "quarantine": quarantine,
            "boundaries": [iso(b) for b in boundaries.tolist()],
            "boundaries_ts": boundaries.tolist(),
            "periods": describe_periods(boundaries, timestamps, labels, is_sample),
            "selection": _selection_facts(selection, embeddings_origin, folder),
            "item_stats": item_stats,
            "config": cfg.model_dump(mode="json", include={"data", "samples"}),
            "seconds": round(time.perf_counter() - started, 2),
            "warnings": _build_warnings(cfg, selection, boundaries),
        }
    )
    manifest.write(folder.manifest_path)
    target.replace_outputs(folder)
    return manifest


def _validate_and_annotate(
    cfg: ReciclConfig, source: Any, selection: Selection, cpus: int | None
) -> tuple[MaterializedDataset, MaterializedDataset]:
    """Stages 2 and 3: the validated events (good rows and reasons, materialized once because
    both the samples and the quarantine are written from them) and the annotated events."""
    validated = source.events.map_batches(
        functools.partial(
            validate_batch,
            catalog_ids=source.catalog["item_id"].combine_chunks(),
            rating_range=source.rating_range,
            like_threshold=cfg.data.like_threshold,
            time_bounds=cfg.data.time_bounds(),
            timestamp_unit=source.timestamp_unit,
            has_labels=source.has_labels,
        ),
        batch_size=None,
        batch_format="pyarrow",
    ).materialize()
    # Hash-partition by user and apply the vectorized transform to whole partitions. This is the
    # mechanism behind Ray's own ``map_groups`` (shuffle blocks are never split, so a user never
    # spans two blocks) without its one-Python-call-per-user cost; _check_users_whole checks it.
    annotated = (
        validated.map_batches(valid_events, batch_size=None, batch_format="pyarrow")
        .repartition(
            cfg.samples.num_partitions or _default_partitions(cpus), keys=["user_id"], sort=True
        )
        .map_batches(
            annotate_events,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={
                "num_demos": cfg.samples.num_demos,
                "history_len": cfg.samples.history_len,
                "min_demos": cfg.samples.min_demos,
                "selection": selection,
            },
        )
        .materialize()
    )
    return validated, annotated


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    if not len(column):
        return {}
    counts = pc.value_counts(column.combine_chunks())
    return {c["values"].as_py(): c["counts"].as_py() for c in counts}


def _write_quarantine(
    folder: SamplesFolder,
    source: Any,
    validated: MaterializedDataset,
    annotated: MaterializedDataset,
    cpus: int | None,
) -> dict[str, Any]:
    """Rejected events (invalid rows and duplicates) and catalog rows, with the counts by
    reason that the manifest reports."""
    parts = [
        part
        for part in (
            _gather(validated, quarantined, cpus),
            _gather(annotated, _duplicates_as_quarantine, cpus),
        )
        if part.num_rows
    ]
    table = pa.concat_tables(parts) if parts else QUARANTINE.empty_table()
    folder.quarantine_dir.mkdir()
    pq.write_table(table, folder.quarantine_dir / "events.parquet")
    pq.write_table(source.catalog_rejects, folder.quarantine_dir / "catalog.parquet")
    reasons = _value_counts(table["reason"])
    return {
        "total": int(sum(reasons.values())),
        "by_reason": dict(sorted(reasons.items())),
        "catalog": dict(sorted(_value_counts(source.catalog_rejects["reason"]).items())),
    }


def _selection_facts(
    selection: Selection, embeddings_origin: Any, folder: SamplesFolder
) -> dict[str, Any]:
    """How demonstrations and histories were chosen, for the manifest."""
    vectors = selection.embeddings
    return {
        "demo_policy": selection.demo_policy,
        "history_policy": selection.history_policy,
        "recent_share": selection.recent_share,
        "retrieval_window": selection.window,
        "augmented": list(selection.extra_policies),
        "augment_replaces": selection.augment_replaces,
        "demo_quality": None if selection.quality is None else selection.quality.to_json(),
        "embeddings": None
        if vectors is None
        else {
            "file": folder.embeddings_path.name,
            "from": embeddings_origin,
            "items": len(vectors),
            **vectors.metadata,
        },
    }


def _build_warnings(cfg: ReciclConfig, selection: Selection, boundaries: np.ndarray) -> list[str]:
    warnings = []
    if not cfg.samples.boundaries and len(boundaries) + 1 < cfg.samples.periods:
        warnings.append(
            f"asked for {cfg.samples.periods} periods but timestamp ties allow only "
            f"{len(boundaries) + 1}"
        )
    uses_quality = "quality" in (selection.demo_policy, *selection.extra_policies)
    if uses_quality and selection.quality is not None and (weak := selection.quality.weakness()):
        warnings.append(f"samples.demo_quality: {weak}")
    return warnings
