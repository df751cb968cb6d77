"""Item embeddings: vectors of catalog items for retrieval-based demonstration policies.

- :mod:`~recicl.embeddings.vectors`: the file format (``item_embeddings.parquet``), loading and
  exact search (:class:`ItemEmbeddings`).
"""

from recicl.embeddings.vectors import (
    EMBEDDINGS_FILE,
    EmbeddingsError,
    ItemEmbeddings,
    embeddings_table,
    unit_rows,
)

__all__ = ["EMBEDDINGS_FILE", "EmbeddingsError", "ItemEmbeddings", "embeddings_table", "unit_rows"]
