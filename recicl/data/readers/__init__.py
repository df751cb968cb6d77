"""Readers: interaction logs in their native layouts → raw text events (Ray Data) + catalog.

Why everything is read as *text* first: malformed rows must be quarantined with a reason and
their file and line, never dropped or allowed to crash a 30M-row job on line 29,999,999. Text
formats are read as numbered lines by :mod:`~recicl.data.readers.lines` (a Ray Data source: split
on ``\\n`` only, gzip inferred from the extension, a line that is not valid UTF-8 flagged
``invalid_utf8`` instead of failing the read), then split into fields with vectorized Arrow
kernels, or parsed with ``pyarrow.csv`` (CSV) or ``pyarrow.json`` (JSON lines); a line with the
wrong number of fields becomes a quarantine row. One validator (``validate.py``) then parses and
judges all sources alike.

Catalog files are small next to the logs (≤ ~100k items for MovieLens, a few million for Amazon);
they are still read with Ray Data and collected into one Arrow table that every worker needs.

Modules: :mod:`~recicl.data.readers.lines` (numbered lines, CSV lines),
:mod:`~recicl.data.readers.common` (field splitting, raw events, catalog checks), one
per source family (:mod:`~recicl.data.readers.movielens`, :mod:`~recicl.data.readers.amazon`,
:mod:`~recicl.data.readers.generic`), and :mod:`~recicl.data.readers.source` (the configured
source). Import from ``recicl.data.readers``.
"""

from recicl.data.readers.amazon import detect_amazon_version, parse_amazon_lines, read_amazon
from recicl.data.readers.common import (
    CATALOG_REJECTS,
    SourceData,
    csv_fields,
    finish_catalog,
    parse_csv_events,
    parse_event_lines,
    raw_events,
    split_fields,
)
from recicl.data.readers.generic import read_generic
from recicl.data.readers.lines import LINES, TextLines, parse_csv_lines, read_lines
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
    "LINES",
    "MOVIELENS_100K_GENRES",
    "MOVIELENS_CSV_HEADER",
    "MOVIELENS_LAYOUTS",
    "SourceData",
    "TextLines",
    "check_source_folder",
    "csv_fields",
    "detect_amazon_version",
    "detect_movielens_layout",
    "finish_catalog",
    "parse_amazon_lines",
    "parse_csv_events",
    "parse_csv_lines",
    "parse_event_lines",
    "raw_events",
    "read_amazon",
    "read_generic",
    "read_lines",
    "read_movielens",
    "read_source",
    "split_fields",
]
