"""Item embeddings: catalog text → unit vectors, written as ``item_embeddings.parquet``.

:mod:`~recicl.embeddings.encoders` holds the encoders (bundled WordLlama by default, the LLM's
own hidden states, or a local sentence-transformers model) and :func:`item_text`, the text an
item is embedded from; :mod:`~recicl.embeddings.job` runs them over a catalog on a Ray Data
actor pool. The file format and search live below, in :mod:`recicl.data.item_embeddings`, so
that the sample builder and serving read vectors without importing any encoder.

Heavy imports (Ray, torch, wordllama) wait until a name is used, as in :mod:`recicl.modeling`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recicl.lazy import lazy_exports

if TYPE_CHECKING:
    from recicl.embeddings.encoders import (
        EncoderSpec,
        catalog_texts,
        item_text,
        load_encoder,
    )
    from recicl.embeddings.job import embed_catalog, embed_in_process, embed_items, embedder_for

__all__ = [
    "EncoderSpec",
    "catalog_texts",
    "embed_catalog",
    "embed_in_process",
    "embed_items",
    "embedder_for",
    "item_text",
    "load_encoder",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EncoderSpec": "encoders",
        "catalog_texts": "encoders",
        "item_text": "encoders",
        "load_encoder": "encoders",
        "embed_catalog": "job",
        "embed_in_process": "job",
        "embed_items": "job",
        "embedder_for": "job",
    },
)
