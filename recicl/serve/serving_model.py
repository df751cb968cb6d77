"""One loaded model version and the scoring of ingress jobs on it (no Ray: replicas call it).

A :class:`ServingModel` bundles what answering a request needs besides the weights: the catalog
(valid item ids, the default candidate order), the context sizes the version was trained with,
and its rating scale. :func:`run_jobs` turns a batch of :class:`~recicl.serve.api.backend.ModelJob`
into replies, scoring all candidates of the batch together on shared prefix caches. Catalog items
added while serving are laid over a loaded version by :mod:`recicl.serve.catalog_items`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow.parquet as pq

from recicl.config import ReciclConfig
from recicl.data.item_embeddings import EMBEDDINGS_FILE, EmbeddingsError, ItemEmbeddings
from recicl.data.manifest import SamplesManifest
from recicl.data.retrieval import DemoQuality
from recicl.data.samples import Selection
from recicl.data.samples_folder import CATALOG_FILE, DEMO_QUALITY_FILE, MANIFEST_FILE
from recicl.modeling.packaged import (
    load_packaged_model,
    read_version_manifest,
    require_samples_prompts,
)
from recicl.modeling.signals import SignalModel, blend_with, demo_labels
from recicl.prompts import PromptBuilder, PromptError
from recicl.registry import load_version
from recicl.serve.api.backend import ModelError, ModelJob, ModelReply
from recicl.serve.context import Context, contexts_for
from recicl.serve.settings import ServeError

if TYPE_CHECKING:
    from recicl.modeling.prefix_sharing import CandidateScorer, ScoreJob
    from recicl.serve.catalog_items import CatalogOverlay

log = logging.getLogger("recicl.serve")


def _read_text(location: str) -> str | None:
    """A small text file from a local path or a filesystem URI (s3://, gs://, ...)."""
    try:
        if "://" in location and not location.startswith("file://"):
            import pyarrow.fs as pafs

            filesystem, path = pafs.FileSystem.from_uri(location)
            with filesystem.open_input_stream(path) as stream:
                text: str = stream.read().decode()
                return text
        local = Path(location.removeprefix("file://"))
        return local.read_text() if local.is_file() else None
    except (OSError, ValueError):
        return None


def _join(base: str, name: str) -> str:
    """A file of a samples folder that may sit on object storage (so not a SamplesFolder)."""
    return base.rstrip("/") + "/" + name


def trained_rating_range(
    samples_manifest: SamplesManifest | None, cfg: ReciclConfig
) -> tuple[float, float] | None:
    """The rating scale the version was trained on, as its samples build recorded it (the scale
    the readers validated against; null: unchecked). Samples built before the build recorded
    it fall back to the serving config's explicit ``data.rating_range`` (else unchecked)."""
    if samples_manifest is not None and samples_manifest.records_rating_range:
        recorded = samples_manifest.rating_range
    else:
        recorded = cfg.data.rating_range
        if recorded is None:
            log.warning(
                "the samples manifest records no rating scale (built by an older recicl) and "
                "data.rating_range is null: ratings are not range-checked; rebuild the samples"
            )
    return None if recorded is None else (float(recorded[0]), float(recorded[1]))


@dataclass
class ServingModel:
    """A model version ready to score: scorer + catalog + the context it was trained with."""

    version: str
    label: str  # "recicl/3"
    scorer: CandidateScorer
    catalog_ids: frozenset[str]
    catalog_order: list[str]
    catalog_path: str
    num_demos: int
    history_len: int
    prompt_format: str
    rating_range: tuple[float, float] | None
    selection: Selection = field(default_factory=Selection)
    loaded_at: float = field(default_factory=time.time)
    #: Items added while serving (:mod:`recicl.serve.catalog_items`); None: built without the
    #: trained catalog at hand (tests, benchmarks), so it takes none.
    overlay: CatalogOverlay | None = None
    #: the signal model its scores are blended with (``train.blend``; evaluation blends the
    #: same way: :func:`recicl.modeling.signals.blend_with`), else None
    blend: SignalModel | None = None
    #: Held while a batch is scored and while added items are swapped in, so that no batch sees
    #: the catalog, the prompt builder and the vectors of two different revisions.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "model": self.label,
            "catalog_path": self.catalog_path,
            "catalog_items": len(self.catalog_order),
            "num_demos": self.num_demos,
            "history_len": self.history_len,
            "prompt_format": self.prompt_format,
            "demo_policy": self.selection.demo_policy,
            "history_policy": self.selection.history_policy,
            "blend": "logistic" if self.blend is not None else None,  # train.blend
            "rating_range": list(self.rating_range) if self.rating_range else None,
            "loaded_at": self.loaded_at,
            "added_items": self.overlay.describe() if self.overlay else None,
            "scoring": {
                "attention": sorted(set(self.scorer.layout.kinds)),
                "sliding_window": self.scorer.layout.window,
                "prefix_fallbacks": dict(self.scorer.fallbacks),
            },
        }


def load_serving_model(
    cfg: ReciclConfig,
    tracking_uri: str,
    name: str,
    version: str,
    *,
    device: str = "cpu",
    on_fallback: Callable[[str], None] | None = None,
) -> ServingModel:
    """Download ``name`` version ``version`` from the registry and make it ready to score.
    ``on_fallback(reason)``: called whenever prefix-shared scoring falls back to full prompts."""
    from recicl.modeling.prefix_sharing import CandidateScorer
    from recicl.serve.catalog_items import CatalogOverlay

    download = Path(tempfile.mkdtemp(prefix=f"recicl-serve-{name}-{version}-"))
    try:
        folder = load_version(name, version, tracking_uri=tracking_uri, dst=download)
        require_samples_prompts(read_version_manifest(folder), f"{name}/{version}")
        packaged = load_packaged_model(
            folder, prompt=cfg.prompt, model_cfg=cfg.model, label=f"{name}/{version}", device=device
        )
    finally:  # weights are in memory now (an unlinked mmapped file stays readable on Linux)
        shutil.rmtree(download, ignore_errors=True)
    samples_dir = packaged.manifest.data.samples_dir if packaged.manifest else None
    catalog_path = cfg.serve.catalog_path or (
        _join(samples_dir, CATALOG_FILE) if samples_dir else None
    )
    if not catalog_path:
        raise ServeError(
            f"{name}/{version} records no samples folder, so its catalog is unknown: set "
            "serve.catalog_path to the catalog.parquet it was trained with"
        )
    try:
        catalog = pq.read_table(catalog_path)
    except (OSError, ValueError) as error:
        raise ServeError(
            f"cannot read the catalog of {name}/{version} at {catalog_path}: {error}; "
            "set serve.catalog_path"
        ) from error
    samples_manifest = None
    if samples_dir:
        where = _join(samples_dir, MANIFEST_FILE)
        text = _read_text(where)
        samples_manifest = SamplesManifest.parse(text, where) if text else None
    trained = samples_manifest.samples_config if samples_manifest else {}
    num_demos = cfg.serve.num_demos
    if num_demos is None:
        num_demos = int(trained.get("num_demos", cfg.samples.num_demos))
    history_len = cfg.serve.history_len
    if history_len is None:
        history_len = int(trained.get("history_len", cfg.samples.history_len))
    selection = trained_selection(trained, samples_dir, f"{name}/{version}")
    item_stats = packaged.prompt_item_stats(samples_dir)

    def make_builder(table: Any) -> PromptBuilder:  # also over the catalog with added items
        return PromptBuilder(packaged.prompt, table, packaged.tokenizer, item_stats=item_stats)

    builder = make_builder(catalog)
    scorer = CandidateScorer(
        packaged.model,
        packaged.tokenizer,
        builder,
        packaged.answer_columns(),
        max_rows=cfg.serve.score_batch_rows,
        per_row=cfg.serve.candidates_per_row,
        on_fallback=on_fallback,
    )
    order = [str(i) for i in catalog.column("item_id").to_pylist() if i is not None]
    log.info("loaded %s/%s (catalog %s, %d items)", name, version, catalog_path, len(order))
    return ServingModel(
        version=str(version),
        label=f"{name}/{version}",
        scorer=scorer,
        catalog_ids=frozenset(order),
        catalog_order=order,
        catalog_path=catalog_path,
        num_demos=num_demos,
        history_len=history_len,
        prompt_format=packaged.prompt.format,
        rating_range=trained_rating_range(samples_manifest, cfg),
        selection=selection,
        overlay=CatalogOverlay(catalog, list(order), make_builder, cfg),
        blend=packaged.blend,
    )


def trained_selection(trained: dict[str, Any], samples_dir: str | None, label: str) -> Selection:
    """The demonstration/history policies a version was trained with (its samples config;
    recent for folders built before the policies existed), with the item vectors built with
    them when a policy retrieves by similarity."""
    selection = Selection(
        demo_policy=str(trained.get("demo_policy", "recent")),
        history_policy=str(trained.get("history_policy", "recent")),
        recent_share=float(trained.get("recent_share", 0.5)),
        window=int(trained.get("retrieval_window", 200)),
    )
    if selection.demo_policy == "recent" and selection.history_policy == "recent":
        return selection
    location = _join(samples_dir, EMBEDDINGS_FILE) if samples_dir else None
    try:
        if location is None:
            raise OSError("the version records no samples folder")
        embeddings = ItemEmbeddings.from_table(pq.read_table(location))
    except (OSError, ValueError, EmbeddingsError) as error:
        raise ServeError(
            f"{label} was trained with demo_policy {selection.demo_policy!r} / history_policy "
            f"{selection.history_policy!r}, which need its item vectors ({location}): {error}. "
            "Restore that file (`recicl embed items --samples DIR`)"
        ) from error
    quality = None
    if selection.demo_policy == "quality":
        location = _join(samples_dir or "", DEMO_QUALITY_FILE)
        text = _read_text(location)
        try:
            quality = DemoQuality.from_json(json.loads(text or ""))
        except (ValueError, KeyError, TypeError) as error:
            raise ServeError(
                f"{label} was trained with the quality demo policy, whose estimator "
                f"({location}) cannot be read: {error}"
            ) from error
    log.info("%s selects context by %s/%s", label, selection.demo_policy, selection.history_policy)
    return dataclasses.replace(selection, embeddings=embeddings, quality=quality)


def fill_pool(model: ServingModel, job: ModelJob) -> list[str]:
    """Up to ``job.pool_size`` candidates: the job's pool first, then the catalog order,
    skipping excluded, repeated and unknown items."""
    out: list[str] = []
    chosen: set[str] = set()
    sources: Iterable[Sequence[str]] = (job.pool, model.catalog_order)
    for source in sources:
        for item in source:
            if len(out) >= job.pool_size:
                return out
            if item in job.exclude or item in chosen or item not in model.catalog_ids:
                continue
            out.append(item)
            chosen.add(item)
    return out


def _reply(
    model: ServingModel, items: Sequence[str], scores: Iterable[float], n: int
) -> ModelReply:
    return ModelReply(
        model_version=model.version,
        model=model.label,
        catalog_path=model.catalog_path,
        scores=tuple((str(i), float(s)) for i, s in zip(items, scores, strict=True)),
        context_events=n,
        rating_range=model.rating_range,
        policy=f"{model.selection.demo_policy}/{model.selection.history_policy}",
    )


def run_jobs(model: ServingModel, jobs: Sequence[ModelJob]) -> list[ModelReply | ModelError]:
    """Score a batch of ingress jobs on one model version (runs in a worker thread).

    Per-job problems (unknown candidates) become :class:`ModelError`; the rest are scored
    together (prefixes batched, candidates on shared prefix caches). Holds the model's lock:
    the catalog, builder and vectors stay one revision for the whole batch.
    """
    with model.lock:
        return _run_jobs(model, jobs)


def _run_jobs(model: ServingModel, jobs: Sequence[ModelJob]) -> list[ModelReply | ModelError]:

    results: list[ModelReply | ModelError | None] = [None] * len(jobs)
    # (job index, the job's candidates, one ScoreJob per distinct context, each candidate's
    # (ScoreJob, position) in it, the labels of each candidate's demonstrations: train.blend)
    work: list[tuple[int, list[str], list[ScoreJob], list[tuple[int, int]], list[list[int]]]] = []
    for i, job in enumerate(jobs):
        if job.candidates is None:
            candidates = fill_pool(model, job)
        else:
            candidates = list(job.candidates)
            unknown = [c for c in candidates if c not in model.catalog_ids]
            if unknown and not job.allow_unknown:
                results[i] = ModelError(
                    422,
                    "unknown_items",
                    f"candidates: {len(unknown)} item id(s) are not in the catalog of "
                    f"{model.label}: {unknown[:20]}",
                    field="candidates",
                    unknown=tuple(unknown[:100]),
                )
                continue
        if not candidates:
            results[i] = _reply(model, [], [], len(job.events))
            continue
        contexts = contexts_for(
            job.events, candidates, model.num_demos, model.history_len, model.selection
        )
        prompts, where = group_by_context(candidates, contexts)
        work.append((i, candidates, prompts, where, [demo_labels(demos) for _, demos in contexts]))
    if work:
        try:
            scores = model.scorer.score([p for _, _, prompts, *_ in work for p in prompts])
        except PromptError as error:
            for i, *_ in work:
                results[i] = ModelError(500, "prompt_error", str(error))
        else:
            at = 0
            for i, candidates, prompts, where, labels in work:
                mine, at = scores[at : at + len(prompts)], at + len(prompts)
                values = [mine[group][slot] for group, slot in where]
                user = [jobs[i].user_id] * len(candidates)
                blended = blend_with(model.blend, np.asarray(values), user, candidates, labels)
                results[i] = _reply(model, candidates, blended, len(jobs[i].events))
    return [r for r in results if r is not None]


def group_by_context(
    candidates: list[str], contexts: list[Context]
) -> tuple[list[ScoreJob], list[tuple[int, int]]]:
    """One ScoreJob per distinct context (its candidates share a prefix cache), and where each
    candidate's score will be: (ScoreJob index, position among its candidates). With the
    recent policies every candidate has the same context: one ScoreJob, as before."""
    from recicl.modeling.prefix_sharing import ScoreJob

    if contexts and all(context is contexts[0] for context in contexts):  # recent: one prefix
        history, demos = contexts[0]
        return [ScoreJob(history, demos, list(candidates))], [
            (0, i) for i in range(len(candidates))
        ]
    groups: dict[Any, int] = {}
    jobs: list[ScoreJob] = []
    where: list[tuple[int, int]] = []
    for candidate, (history, demos) in zip(candidates, contexts, strict=True):
        key = (
            tuple(history),
            tuple((d["item_id"], d["label"], d["timestamp"], tuple(d["history"])) for d in demos),
        )
        if key not in groups:
            groups[key] = len(jobs)
            jobs.append(ScoreJob(history, demos, []))
        index = groups[key]
        members = cast("list[str]", jobs[index].candidates)
        where.append((index, len(members)))
        members.append(candidate)
    return jobs, where
