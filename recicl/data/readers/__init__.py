"""Readers: interaction logs in their native layouts → raw text events (Ray Data) + catalog.

Why everything is read as *text* first: malformed rows must be quarantined with a reason, never
dropped or allowed to crash a 30M-row job on line 29,999,999. Line-oriented formats are read with
``ray.data.read_text`` (streaming, gzip inferred from the extension) and split with vectorized
Arrow kernels; a line with the wrong number of fields becomes a quarantine row. One validator
(``validate.py``) then parses and judges all sources alike.

Catalog files are small next to the logs (≤ ~100k items for MovieLens, a few million for Amazon);
they are still read with Ray Data and collected into one Arrow table that every worker needs.

Modules: :mod:`~recicl.data.readers.common` (line splitting, raw events, catalog checks), one
per source family (:mod:`~recicl.data.readers.movielens`, :mod:`~recicl.data.readers.amazon`,
:mod:`~recicl.data.readers.generic`), and :mod:`~recicl.data.readers.source` (the configured
source). Import from ``recicl.data.readers``.
"""

from recicl.data.readers.amazon import detect_amazon_version, parse_amazon_lines, read_amazon
from recicl.data.readers.common import (
    CATALOG_REJECTS,
    SourceData,
    finish_catalog,
    parse_event_lines,
    raw_events,
    split_lines,
)
from recicl.data.readers.generic import read_generic
from recicl.data.readers.movielens import (
    MOVIELENS_100K_GENRES,
    MOVIELENS_CSV_HEADER,
    MOVIELENS_LAYOUTS,
    detect_movielens_layout,
    read_movielens,
)
from recicl.data.readers.source import check_source_folder, read_source

__all__ = [
    "CATALOG_REJECTS",
    "MOVIELENS_100K_GENRES",
    "MOVIELENS_CSV_HEADER",
    "MOVIELENS_LAYOUTS",
    "SourceData",
    "check_source_folder",
    "detect_amazon_version",
    "detect_movielens_layout",
    "finish_catalog",
    "parse_amazon_lines",
    "parse_event_lines",
    "raw_events",
    "read_amazon",
    "read_generic",
    "read_movielens",
    "read_source",
    "split_lines",
]
