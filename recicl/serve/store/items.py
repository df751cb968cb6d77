"""Catalog items added while serving (``POST /admin/items``): the record and its rules.

Why in the interaction store: an item added at run time must outlive a restart and reach every
replica of every deployment, and the store is already the one durable thing they all share. The
trained catalog (``catalog.parquet`` of the version's samples) stays read-only; the store holds
only what was added or updated since, and serving lays it over the trained catalog.

Decisions every caller may rely on:

* **Revisions.** Every ``put_items`` call is one atomic write that stamps all its items with the
  next revision (1, 2, ...). ``items_since(r)`` returns the items written after revision ``r``
  and the revision they bring the reader to, so a replica that remembers one integer catches up
  with one cheap, indexed read (nothing new: an empty answer).
* **Last write wins per item id**: a later ``put_items`` of the same id replaces its title and
  attributes (and moves it to the new revision).
* **Invalid records are refused, not stored** (:class:`InvalidItemError`, nothing of the batch
  written); friendly field-level 4xx messages stay in the API layer, this is the last line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from recicl.serve.store.base import StoreError


class InvalidItemError(StoreError, ValueError):
    """A catalog item that must never be stored (empty id, empty title, non-text attribute)."""


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One catalog row as the CATALOG schema has it (``attributes``: sorted (key, value) pairs,
    so that equal items compare equal and the record stays hashable and picklable)."""

    item_id: str
    title: str
    attributes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, item_id: str, title: str, attributes: Mapping[str, str] | None = None
    ) -> CatalogItem:
        return cls(item_id, title, tuple(sorted((attributes or {}).items())))

    def attributes_json(self) -> str:
        """The attributes as a JSON object (how both backends store them)."""
        return json.dumps(dict(self.attributes), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_stored(cls, item_id: str, title: str, attributes: str) -> CatalogItem:
        return cls.of(item_id, title, json.loads(attributes))


def _text(value: object, what: str, index: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value.strip() and not empty_ok):
        raise InvalidItemError(
            f"item #{index}: {what} must be a non-empty string (got {value!r}); send it as text"
        )
    if "\x00" in value:
        raise InvalidItemError(f"item #{index}: {what} {value!r} contains a NUL character")
    return value


def checked_items(items: Iterable[CatalogItem]) -> list[CatalogItem]:
    """Validate a batch; a repeated id in one batch is refused (which one should win?)."""
    batch: list[CatalogItem] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, CatalogItem):
            raise InvalidItemError(
                f"item #{index}: expected recicl.serve.store.CatalogItem, got {type(item).__name__}"
            )
        item_id = _text(item.item_id, "item_id", index)
        if item_id in seen:
            raise InvalidItemError(f"item #{index}: item_id {item_id!r} repeats in the batch")
        seen.add(item_id)
        title = _text(item.title, "title", index)
        pairs = tuple(
            (_text(k, "attribute key", index), _text(v, f"attribute {k!r}", index, empty_ok=True))
            for k, v in item.attributes
        )
        batch.append(CatalogItem(item_id, title, tuple(sorted(pairs))))
    return batch
