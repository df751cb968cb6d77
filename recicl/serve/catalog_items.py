"""Catalog items added while serving, laid over a loaded version (no Ray: replicas call it).

``POST /admin/items`` writes items to the interaction store (:mod:`recicl.serve.store.items`,
the one source of truth, so a restart keeps them); every model replica then *catches up* from
the store: it reads the items written since the store revision it last saw and lays them over the
version's trained catalog. Why pull from the store rather than push from the ingress: Serve has
no broadcast to all replicas of a deployment, a replica that starts later (autoscaling, a
restart, a version loaded after the POST) must learn the same items, and one integer per
version (the revision) makes "am I current?" one indexed read. Replicas catch up when a batch
needs it (:func:`behind`: a job carries a newer revision than they have, since the ingress stamps
every job with the revision it validated events against, or names a candidate they do not
know), on every alias poll, and on every version load.

What catching up changes on a :class:`~recicl.serve.serving_model.ServingModel`:

* its item ids and default candidate order (the new items become scoreable);
* its prompt builder, rebuilt over the trained catalog with the added rows in front (an added
  row wins over a trained row of the same id), so prompts render the new titles and attributes;
* its item vectors, **only when the version selects context by similarity** (a semantic or mixed
  demo policy, or the semantic history policy): each new item is embedded with the encoder that
  made the version's ``item_embeddings.parquet`` (its metadata names it), so its vector lives in
  the same space as the trained items'. With the ``recent`` policies nothing is embedded: no
  vector is ever read. An item that cannot be embedded keeps no vector, which retrieval treats as
  "similar to nothing" (it falls back to recency, :mod:`recicl.data.item_embeddings`); the error
  is reported in the model's info and by the POST, and the item is still scoreable.

Everything is built aside and swapped in under the model's lock, so a batch never sees half an
update. Rebuilding the prompt builder costs a read of the trained catalog (tens of ms for a
MovieLens catalog); it happens once per revision per replica, not per request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from recicl.data.item_embeddings import ItemEmbeddings, unit_rows
from recicl.data.samples import Selection
from recicl.serve.settings import ServeError
from recicl.serve.store import CatalogItem, InteractionStore

if TYPE_CHECKING:
    from recicl.config import ReciclConfig
    from recicl.embeddings.encoders import Encoder
    from recicl.prompts import PromptBuilder
    from recicl.serve.api.backend import ModelJob
    from recicl.serve.serving_model import ServingModel

log = logging.getLogger("recicl.serve")


def needs_vectors(selection: Selection) -> bool:
    """True when the version retrieves context by similarity (so new items need vectors)."""
    return selection.demo_policy != "recent" or selection.history_policy != "recent"


@dataclass
class CatalogOverlay:
    """What a version needs to take items added while serving, and what it has taken."""

    trained_catalog: pa.Table  # the version's catalog.parquet, as loaded
    trained_order: list[str]  # its item ids, in order (the default candidate order)
    make_builder: Callable[[pa.Table], PromptBuilder]  # a builder over a catalog table
    config: ReciclConfig  # the serving config (the llm encoder reads its model section)
    revision: int = 0  # store revision caught up to
    items: dict[str, CatalogItem] = field(default_factory=dict)  # added, by id
    embedded: int = 0  # vectors computed for added items (an update counts again)
    error: str | None = None  # why the last additions could not be embedded
    encoder: Encoder | None = None  # loaded on first use, kept for the version's lifetime

    trained_ids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.trained_ids = frozenset(self.trained_order)

    def describe(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "items": len(self.items),
            "embedded": self.embedded,
            "error": self.error,
        }


def catalog_rows(items: Sequence[CatalogItem], schema: pa.Schema) -> pa.Table:
    """``items`` as rows of a catalog table with ``schema`` (the trained catalog's: its
    ``attributes`` column may be a map or a struct; other columns are left null)."""
    columns: dict[str, list[Any]] = {name: [None] * len(items) for name in schema.names}
    columns["item_id"] = [i.item_id for i in items]
    columns["title"] = [i.title for i in items]
    if "attributes" in schema.names:
        kind = schema.field("attributes").type
        if pa.types.is_struct(kind):  # its fields are fixed: other names have no column
            names = [kind.field(k).name for k in range(kind.num_fields)]
            columns["attributes"] = [
                {name: dict(i.attributes).get(name) for name in names} for i in items
            ]
        else:
            columns["attributes"] = [list(i.attributes) for i in items]
    return pa.table(columns, schema=schema)


def load_encoder_of(embeddings: ItemEmbeddings, cfg: ReciclConfig) -> Encoder:
    """The encoder that made ``embeddings`` (as its file's metadata records it), so that new
    items land in the same vector space as the version's trained items."""
    from recicl.config import ConfigError
    from recicl.embeddings.encoders import EncoderSpec, load_encoder

    meta = embeddings.metadata
    name = meta.get("encoder")
    if name not in ("wordllama", "llm", "sentence-transformers"):
        raise ServeError(
            f"the version's item vectors record no known encoder (metadata {meta}), so new "
            "items cannot be embedded alike: rebuild them with `recicl embed items`"
        )
    update = {
        "encoder": name,
        "model": None if name == "wordllama" else meta.get("model"),
        "dim": None if name == "llm" else meta.get("dim"),
    }
    section = cfg.embeddings.model_copy(update=update)
    try:
        spec = EncoderSpec.from_config(cfg.model_copy(update={"embeddings": section}))
        encoder = load_encoder(spec)
    except (ConfigError, OSError) as error:
        raise ServeError(
            f"cannot load the {name} encoder of the version's vectors: {error}"
        ) from error
    if encoder.dim != embeddings.dim:
        raise ServeError(
            f"the {name} encoder gives {encoder.dim}-d vectors, the version's are "
            f"{embeddings.dim}-d: rebuild them with `recicl embed items`"
        )
    return encoder


def with_vectors(embeddings: ItemEmbeddings, ids: Sequence[str], raw: np.ndarray) -> ItemEmbeddings:
    """``embeddings`` with the vectors of ``ids`` set (replaced or appended); a new object, so
    a batch holding the old one is unaffected."""
    rows = unit_rows(raw)
    at = embeddings.rows(ids)
    known = at >= 0
    matrix = np.concatenate([embeddings.matrix, rows[~known]])  # a copy: the old one is intact
    matrix[at[known]] = rows[known]
    added = tuple(i for i, k in zip(ids, known, strict=True) if not k)
    return ItemEmbeddings(embeddings.ids + added, matrix, embeddings.metadata)


def _embed(
    model: ServingModel, overlay: CatalogOverlay, new: list[CatalogItem]
) -> tuple[Selection, int, str | None]:
    """The model's selection with vectors for ``new`` (unchanged when it needs none)."""
    from recicl.embeddings.encoders import item_text

    selection = model.selection
    if not needs_vectors(selection) or selection.embeddings is None:
        return selection, 0, None
    try:
        if overlay.encoder is None:
            overlay.encoder = load_encoder_of(selection.embeddings, overlay.config)
        raw = overlay.encoder.encode([item_text(i.title, dict(i.attributes)) for i in new])
    except Exception as error:  # the items stay scoreable, retrieved by recency
        reason = f"{type(error).__name__}: {error}"
        log.warning("%s: %d added item(s) not embedded: %s", model.label, len(new), reason)
        return selection, 0, reason
    embeddings = with_vectors(selection.embeddings, [i.item_id for i in new], raw)
    return dataclasses.replace(selection, embeddings=embeddings), len(new), None


def behind(model: ServingModel, jobs: Sequence[ModelJob]) -> bool:
    """Should the replica read the store before scoring ``jobs``? Yes when a job was validated
    against a newer revision than the model holds, or names a candidate the model does not know
    (candidates are checked here, not by the ingress: it may have been added through another
    ingress replica). Only such batches pay the one store read."""
    overlay = model.overlay
    if overlay is None:
        return False
    if any(job.items_revision > overlay.revision for job in jobs):
        return True
    known = model.catalog_ids
    return any(
        not job.allow_unknown and any(item not in known for item in job.candidates)
        for job in jobs
        if job.candidates is not None
    )


def catch_up(model: ServingModel, store: InteractionStore) -> dict[str, Any]:
    """Lay the items added since the model's revision over it; returns the overlay's state.
    Callers serialize calls per model (the replica's lock): two would embed the same items."""
    overlay = model.overlay
    if overlay is None:
        raise ServeError(f"{model.label} was not loaded to take added catalog items")
    revision, new = store.items_since(overlay.revision)
    if not new:
        overlay.revision = revision
        return overlay.describe()
    items = {**overlay.items, **{i.item_id: i for i in new}}
    trained = overlay.trained_catalog
    added_rows = catalog_rows(list(items.values()), trained.schema)
    builder = overlay.make_builder(pa.concat_tables([added_rows, trained]))  # added rows win
    trained_ids = overlay.trained_ids
    # added ids after the trained ones, by id: the same order on every replica, whatever
    # revisions each read them in
    order = overlay.trained_order + sorted(i for i in items if i not in trained_ids)
    selection, embedded, error = _embed(model, overlay, new)
    with model.lock:  # swap everything at once: no batch sees half of it
        model.scorer.builder = builder
        model.catalog_ids = frozenset(order)
        model.catalog_order = order
        model.selection = selection
        overlay.items, overlay.revision, overlay.error = items, revision, error
        overlay.embedded += embedded
    log.info("%s: %d catalog item(s) added or updated (rev %d)", model.label, len(new), revision)
    return {**overlay.describe(), "new": len(new)}
