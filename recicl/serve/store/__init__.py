"""The durable interaction store (see :mod:`recicl.serve.store.base` for the guarantees).

Split by concern: :mod:`~recicl.serve.store.base` holds the event record, its validation and
order and the :class:`InteractionStore` contract; the feedback log's records and join rule are
:mod:`~recicl.serve.store.feedback`; catalog items added while serving are
:mod:`~recicl.serve.store.items`; the two backends live in
:mod:`~recicl.serve.store.sqlite_store` and :mod:`~recicl.serve.store.redis_store`, and
:func:`open_store` (:mod:`~recicl.serve.store.factory`) picks one by URL. Imports run one way,
base ← feedback/items ← backends ← factory, so no module here imports one that imports it.
Everything a caller needs is importable from here.
"""

from recicl.serve.store.base import (
    DEFAULT_MAX_EVENTS_PER_USER,
    MAX_ABS_TIMESTAMP,
    Event,
    InteractionStore,
    InvalidEventError,
    StoreError,
    StoreUnavailableError,
    StoreURLError,
    event_order_key,
)
from recicl.serve.store.factory import open_store
from recicl.serve.store.feedback import (
    FeedbackCounts,
    FeedbackRow,
    FeedbackSettings,
    InvalidScoreError,
    ServedScore,
)
from recicl.serve.store.items import CatalogItem, InvalidItemError
from recicl.serve.store.redis_store import RedisStore
from recicl.serve.store.sqlite_store import SQLiteStore

__all__ = [
    "DEFAULT_MAX_EVENTS_PER_USER",
    "MAX_ABS_TIMESTAMP",
    "CatalogItem",
    "Event",
    "FeedbackCounts",
    "FeedbackRow",
    "FeedbackSettings",
    "InteractionStore",
    "InvalidEventError",
    "InvalidItemError",
    "InvalidScoreError",
    "RedisStore",
    "SQLiteStore",
    "ServedScore",
    "StoreError",
    "StoreURLError",
    "StoreUnavailableError",
    "event_order_key",
    "open_store",
]
