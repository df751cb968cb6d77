"""The item-embedding job: every catalog item's text → one vector, on a Ray Data actor pool.

Why an actor pool (``map_batches`` with a callable class and ``concurrency=``): loading an
encoder is the fixed cost (WordLlama's 32k x 256 table, or a whole LLM), so each replica
loads it once and then encodes a stream of batches; the same code runs one replica on a laptop
and one per node on a cluster. The catalog is cut into at least as many batches as there are
replicas, so that every replica gets work even for a small catalog.

The output is in the catalog's order, whatever order batches come back in, and every vector
depends on its own item's text only (:mod:`recicl.embeddings.encoders`): the same catalog and
encoder give bit-identical files at any concurrency (WordLlama; an LLM's float sums may differ
in the last bits when batches are padded differently).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import recicl
from recicl.config import ConfigError, ReciclConfig
from recicl.data.item_embeddings import EMBEDDINGS_FILE, ItemEmbeddings, embeddings_table
from recicl.data.samples_folder import SamplesFolder
from recicl.embeddings.encoders import (
    TEXT_RECIPE,
    EncoderSpec,
    catalog_texts,
    load_encoder,
)
from recicl.raycluster import ensure_ray, local_core_limit

#: Catalog columns the job reads (``attributes`` when the table has it).
TEXT_COLUMNS = ("item_id", "title", "attributes")


class EmbedBatch:
    """Ray Data callable class: one encoder replica turning catalog rows into vectors."""

    def __init__(self, spec: dict[str, Any], threads: int | None) -> None:
        self.encoder = load_encoder(EncoderSpec(**spec), threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.encoder.encode(catalog_texts(batch))
        return pa.table({"item_id": batch["item_id"], "vector": _vector_column(vectors)})


def _vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def _metadata(spec: EncoderSpec, dim: int) -> dict[str, Any]:
    return {
        "encoder": spec.encoder,
        "model": spec.model,
        "dim": dim,
        "text": TEXT_RECIPE,
        "recicl_version": recicl.__version__,
    }


def _text_columns(catalog: pa.Table) -> pa.Table:
    missing = {"item_id", "title"} - set(catalog.column_names)
    if missing:
        raise ConfigError(
            f"the catalog lacks column(s) {sorted(missing)}: it must have the CATALOG schema "
            "(item_id, title, attributes) that `recicl samples build` writes"
        )
    return catalog.select([c for c in TEXT_COLUMNS if c in catalog.column_names])


def _check_ids(item_ids: pa.ChunkedArray | pa.Array) -> None:
    if len(item_ids) == 0:
        raise ConfigError("the catalog has no items: nothing to embed")
    if item_ids.null_count or len(pc.unique(item_ids)) != len(item_ids):
        raise ConfigError(
            "the catalog repeats an item_id or has an empty one: one row per item (rebuild it "
            "with `recicl samples build`, which validates the catalog)"
        )


def pool_plan(items: int, cfg: ReciclConfig) -> dict[str, Any]:
    """Replicas, rows per batch, torch threads and CPUs per replica for ``items`` items.

    Replicas: ``embeddings.concurrency``, else the real cores of a local runtime (it advertises
    more logical CPUs for Ray Train, :func:`recicl.raycluster.ensure_ray`) or the cluster's
    CPUs; never more than there are items. A batch is at most ``embeddings.batch_size`` rows
    and small enough that every replica gets one. Each replica asks for at most one CPU (less
    when there are more replicas than CPUs, so that the pool can always start).
    """
    import ray

    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    local_cores = local_core_limit()
    replicas = cfg.embeddings.concurrency or local_cores or cluster_cpus
    replicas = max(1, min(replicas, items))
    rows = max(1, min(cfg.embeddings.batch_size, math.ceil(items / replicas)))
    return {
        "replicas": replicas,
        "batch_rows": rows,
        # torch threads: a local runtime's real cores shared out; elsewhere Ray's default
        # (OMP_NUM_THREADS from the CPUs an actor holds)
        "threads": max(1, local_cores // replicas) if local_cores else None,
        "num_cpus": min(1.0, cluster_cpus / replicas),
    }


def _run_pool(dataset: Any, order: pa.Array, spec: EncoderSpec, cfg: ReciclConfig) -> np.ndarray:
    """Encode ``dataset`` (catalog rows) on the actor pool; the vectors in ``order``'s order."""
    import ray
    import ray.data

    plan = pool_plan(len(order), cfg)
    # A catalog is usually one file of one row group, read as one block, and one block goes
    # to one replica: cut it into batch-sized blocks (a streaming split, no shuffle).
    dataset = dataset.repartition(target_num_rows_per_block=plan["batch_rows"])
    encoded = dataset.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"spec": spec.to_dict(), "threads": plan["threads"]},
        batch_size=plan["batch_rows"],
        batch_format="pyarrow",
        # a fixed pool (what ``concurrency=N`` meant before Ray 2.51 deprecated it for this)
        compute=ray.data.ActorPoolStrategy(size=plan["replicas"]),
        num_cpus=plan["num_cpus"],
    )
    tables = [ray.get(ref) for ref in encoded.to_arrow_refs()]
    result = pa.concat_tables([t for t in tables if t.num_rows])
    return _in_order(result, order)


def _in_order(result: pa.Table, order: pa.Array) -> np.ndarray:
    """The ``vector`` rows of ``result`` rearranged to follow the ids in ``order``."""
    positions = pc.index_in(order, value_set=result["item_id"].combine_chunks())
    if positions.null_count or result.num_rows != len(order):
        raise ConfigError(
            f"the embedding job returned {result.num_rows} vectors for {len(order)} items"
        )
    vectors = result["vector"].combine_chunks()
    dim = vectors.type.list_size
    flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(vectors), dim)[positions.to_numpy()]


def embed_catalog(catalog: pa.Table, cfg: ReciclConfig) -> ItemEmbeddings:
    """Embed every item of an in-memory catalog table (CATALOG columns) with the encoder of
    ``cfg.embeddings`` on a Ray Data actor pool; rows in the catalog's order. Starts or joins
    Ray (``ensure_ray``, no dashboard). The sample builder calls this for similarity policies."""
    import ray.data

    spec = EncoderSpec.from_config(cfg)  # fail on a bad setting before Ray starts
    catalog = _text_columns(catalog)
    order = catalog["item_id"].combine_chunks()
    _check_ids(order)
    ensure_ray(cfg.ray, dashboard=False)
    vectors = _run_pool(ray.data.from_arrow(catalog), order, spec, cfg)
    return _embeddings(order, vectors, spec)


def embedder_for(cfg: ReciclConfig) -> Callable[[pa.Table], ItemEmbeddings]:
    """:func:`embed_catalog` bound to ``cfg``: what ``build_samples(cfg, embedder=...)`` takes
    (the data layer cannot import the encoders, so the caller hands it this)."""
    return functools.partial(embed_catalog, cfg=cfg)


def embed_in_process(catalog: pa.Table, cfg: ReciclConfig) -> ItemEmbeddings:
    """The same vectors without Ray: one encoder in this process, batch after batch (the
    benchmark's baseline; also what the job must equal)."""
    spec = EncoderSpec.from_config(cfg)
    catalog = _text_columns(catalog)
    order = catalog["item_id"].combine_chunks()
    _check_ids(order)
    encoder = load_encoder(spec)
    size = cfg.embeddings.batch_size
    parts = [
        encoder.encode(catalog_texts(catalog.slice(start, size)))
        for start in range(0, catalog.num_rows, size)
    ]
    return _embeddings(order, np.concatenate(parts), spec)


def _embeddings(order: pa.Array, vectors: np.ndarray, spec: EncoderSpec) -> ItemEmbeddings:
    ids = [str(i) for i in order.to_pylist()]
    table = embeddings_table(ids, vectors, _metadata(spec, int(vectors.shape[1])))
    return ItemEmbeddings.from_table(table)


def embed_items(
    samples_dir: str | Path, cfg: ReciclConfig, output: str | Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """`recicl embed items`: read a samples folder's ``catalog.parquet`` with Ray Data, embed
    every item, write ``item_embeddings.parquet`` (default: into the samples folder).

    Returns the written path and a summary: items, dim, encoder, model, replicas, seconds (the
    job itself, Ray start-up excluded) and items_per_s.
    """
    import ray.data

    spec = EncoderSpec.from_config(cfg)
    folder = SamplesFolder.at(samples_dir)
    catalog_path = folder.require_catalog()
    order = pq.read_table(catalog_path, columns=["item_id"])["item_id"].combine_chunks()
    _check_ids(order)
    columns = [c for c in TEXT_COLUMNS if c in pq.read_schema(catalog_path).names]
    path = Path(output).expanduser() if output else folder.root / EMBEDDINGS_FILE
    ensure_ray(cfg.ray, dashboard=False)
    started = time.perf_counter()
    dataset = ray.data.read_parquet(str(catalog_path), columns=columns)
    vectors = _run_pool(dataset, order, spec, cfg)
    embeddings = _embeddings(order, vectors, spec)
    embeddings.save(path)
    seconds = time.perf_counter() - started
    summary = {
        "items": len(embeddings),
        "dim": embeddings.dim,
        "encoder": spec.encoder,
        "model": spec.model,
        "replicas": pool_plan(len(order), cfg)["replicas"],
        "seconds": seconds,
        "items_per_s": len(embeddings) / seconds if seconds > 0 else float("inf"),
        "output": str(path),
    }
    return path, summary
