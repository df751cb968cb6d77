"""Item embedding vectors: the file format, loading, and exact nearest-neighbour search.

One owner for ``item_embeddings.parquet`` (written by :mod:`recicl.embeddings`, read by the
sample builder's retrieval policies and by serving). Columns: ``item_id`` (string) and
``vector`` (fixed-size list of float32, unit L2 norm); the schema metadata records the encoder
and its settings, so a folder says what produced its vectors.

Why unit-normalized vectors on a fixed-point grid: every consumer wants cosine similarity, which
is then one matrix product. Components are rounded to multiples of 2**-16 (error < 8e-6, far below
what retrieval can notice), so every product of two components is an integer multiple of 2**-32
and every dot product of up to 2**21 components is exact in float64, whatever the summation order.
Sample building (large blocks) and serving (one request) therefore compute *bit-identical*
similarities, and a near-tie can never be broken one way offline and the other online.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recicl.errors import ReciclError

EMBEDDINGS_FILE = "item_embeddings.parquet"
_META_KEY = b"recicl.embeddings"


class EmbeddingsError(ReciclError, ValueError):
    """An embeddings file is missing, malformed, or does not match what uses it."""


#: Vector components are multiples of this (see the module doc: exact similarities).
GRID = 2.0**-16


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero) and rounded to the ``GRID``, as
    C-contiguous float32 (exact: every grid value in [-1, 1] is a float32)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(np.round(unit / GRID) * GRID, dtype=np.float32)


def similarities(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine similarities (queries x vectors) of grid vectors, exact (float64, see the module
    doc), so any batching of the same pairs gives the same bits."""
    return np.asarray(queries, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T


def embeddings_table(
    item_ids: Sequence[str], vectors: np.ndarray, metadata: dict[str, Any]
) -> pa.Table:
    """The on-disk table: ids, unit-norm float32 vectors, ``metadata`` in the schema."""
    vectors = unit_rows(vectors)
    if vectors.ndim != 2 or len(item_ids) != vectors.shape[0]:
        raise EmbeddingsError(
            f"{len(item_ids)} item ids but vectors of shape {vectors.shape}: one row per item"
        )
    dim = int(vectors.shape[1])
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    meta = {**metadata, "dim": dim}
    schema = pa.schema(
        [("item_id", pa.string()), ("vector", pa.list_(pa.float32(), dim))],
        metadata={_META_KEY: json.dumps(meta, sort_keys=True).encode()},
    )
    return pa.table([pa.array(list(item_ids), pa.string()), column], schema=schema)


@dataclass(frozen=True)
class ItemEmbeddings:
    """Unit-norm vectors of catalog items, addressable by item id.

    ``rows(ids)`` maps ids to matrix rows (-1 for an item without a vector); ``similarity``
    is cosine similarity, 0 for an unknown item (neither similar nor dissimilar: retrieval then
    falls back to recency, see :mod:`recicl.data.retrieval`).
    """

    ids: tuple[str, ...]
    matrix: np.ndarray  # (n, d) float32, unit rows
    metadata: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._index:
            self._index.update({item: i for i, item in enumerate(self.ids)})

    @classmethod
    def from_table(cls, table: pa.Table) -> ItemEmbeddings:
        missing = {"item_id", "vector"} - set(table.column_names)
        if missing:
            raise EmbeddingsError(
                f"embeddings table lacks column(s) {sorted(missing)}: write it with "
                "`recicl embed items`"
            )
        raw = (table.schema.metadata or {}).get(_META_KEY)
        metadata = json.loads(raw) if raw else {}
        vectors = table["vector"].combine_chunks()
        if not pa.types.is_fixed_size_list(vectors.type):
            vectors = vectors.cast(pa.list_(pa.float32(), len(vectors[0]) if len(vectors) else 0))
        dim = vectors.type.list_size
        flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        matrix = unit_rows(flat.reshape(len(vectors), dim))
        ids = tuple(str(i) for i in table["item_id"].to_pylist())
        if len(set(ids)) != len(ids):
            raise EmbeddingsError("embeddings table repeats item ids: one row per item")
        return cls(ids, matrix, metadata)

    @classmethod
    def load(cls, path: str | Path) -> ItemEmbeddings:
        path = Path(path)
        if not path.is_file():
            raise EmbeddingsError(
                f"no item embeddings at {path}: run `recicl embed items --samples DIR` or set "
                "samples.embeddings"
            )
        return cls.from_table(pq.read_table(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(embeddings_table(self.ids, self.matrix, self.metadata), path)
        return path

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Matrix row of each id (int64), -1 where the item has no vector."""
        return np.fromiter(
            (self._index.get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids)
        )

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """(len(item_ids), d) vectors; zero rows for items without one (similarity 0)."""
        rows = self.rows(item_ids)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        known = rows >= 0
        out[known] = self.matrix[rows[known]]
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by cosine similarity for each query row: ``(scores, rows)``, best
        first. Uses FAISS (``IndexFlatIP``, also exact) when it is installed, NumPy otherwise
        (ties broken by the lower row); both give the same neighbours up to the order of
        exactly tied scores."""
        queries = unit_rows(np.atleast_2d(queries))
        k = max(0, min(int(k), len(self.ids)))
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        try:
            import faiss  # optional: pip install faiss-cpu
        except ImportError:
            faiss = None
        if faiss is not None:
            index = faiss.IndexFlatIP(self.dim)
            index.add(self.matrix)
            scores, rows = index.search(queries, k)
            return scores.astype(np.float32), rows.astype(np.int64)
        scores = similarities(queries, self.matrix).astype(np.float32)
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, axis=1), rows
