"""Readers: interaction logs in their native layouts → raw text events (Ray Data) + catalog.

Why everything is read as *text* first: malformed rows must be quarantined with a reason, never
dropped or allowed to crash a 30M-row job on line 29,999,999. Line-oriented formats are read with
``ray.data.read_text`` (streaming, gzip inferred from the extension) and split with vectorized
Arrow kernels; a line with the wrong number of fields becomes a quarantine row. One validator
(``validate.py``) then parses and judges all sources alike.

Catalog files are small next to the logs (≤ ~100k items for MovieLens, a few million for Amazon);
they are still read with Ray Data and collected into one Arrow table that every worker needs.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray.data

from recicl.config import DataConfig
from recicl.data.schema import CATALOG, RAW_EVENTS
from recicl.errors import DataError

#: Rejected catalog rows: what we could extract, the raw line, and why.
CATALOG_REJECTS = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("raw", pa.string()),
        ("reason", pa.string()),
    ]
)

MOVIELENS_100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


@dataclass
class SourceData:
    """What a reader hands to validation: lazy raw events, the catalog, and the source's rules."""

    events: ray.data.Dataset
    catalog: pa.Table
    catalog_rejects: pa.Table
    rating_range: tuple[float, float] | None
    timestamp_unit: str
    has_labels: bool
    layout: str


# --------------------------------------------------------------------------------------------
# Vectorized line splitting (runs inside Ray Data tasks; module-level so it pickles cheaply).
# --------------------------------------------------------------------------------------------


def split_lines(
    lines: pa.Array, sep: str, names: Sequence[str | None], min_fields: int | None = None
) -> tuple[pa.Table, pa.Array, pa.Array]:
    """Split text lines on ``sep`` into named string columns.

    Returns (good rows as a table of ``names`` that are not None, the good lines, the bad lines).
    A line is good when it has exactly ``len(names)`` fields (or at least ``min_fields``).
    """
    parts = pc.split_pattern(lines, sep)
    counts = pc.list_value_length(parts)
    good = (
        pc.equal(counts, len(names)) if min_fields is None else pc.greater_equal(counts, min_fields)
    )
    good_parts = parts.filter(good)
    columns = {
        name: pc.utf8_trim_whitespace(pc.list_element(good_parts, index))
        for index, name in enumerate(names)
        if name is not None
    }
    return pa.table(columns), lines.filter(good), lines.filter(pc.invert(good))


def _raw_events(columns: dict[str, pa.Array], length: int, keep_types: bool = False) -> pa.Table:
    """Assemble a RAW_EVENTS table from whichever canonical columns a source provides.

    With ``keep_types`` numeric rating/label/timestamp columns stay numeric (typed sources skip
    the text round trip; the validator accepts both).
    """
    nulls = pa.nulls(length, pa.string())
    arrays = []
    for field in RAW_EVENTS:
        values = columns.get(field.name, nulls)
        numeric = pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
        arrays.append(values if keep_types and numeric else values.cast(pa.string()))
    return pa.table(arrays, names=RAW_EVENTS.names)


def _malformed(lines: pa.Array, reason: str = "malformed_line") -> pa.Table:
    return _raw_events(
        {"raw": lines, "reason": pa.array([reason] * len(lines), pa.string())}, len(lines)
    )


def parse_event_lines(
    batch: pa.Table, *, sep: str, names: Sequence[str | None], header: str | None = None
) -> pa.Table:
    """Ray Data UDF: a batch of ``text`` lines → RAW_EVENTS (bad lines kept with a reason)."""
    lines = batch["text"].combine_chunks()
    if header is not None:
        lines = lines.filter(pc.not_equal(pc.utf8_trim_whitespace(lines), header))
    good, _, bad = split_lines(lines, sep, names)
    events = _raw_events({name: good[name] for name in good.column_names}, good.num_rows)
    return pa.concat_tables([events, _malformed(bad)])


_JSON_FIELDS = {
    # version: (user, item, rating, timestamp, timestamp type)
    "2018": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "2023": ("user_id", "parent_asin", "rating", "timestamp"),
}


def parse_amazon_lines(batch: pa.Table, *, version: str) -> pa.Table:
    """Ray Data UDF: JSON lines → RAW_EVENTS.

    Fast path: Arrow's JSON reader on the whole batch with the few fields we need. If any line in
    the batch is not valid JSON or has an unexpected type, fall back to per-line parsing for that
    batch only, so the bad lines can be quarantined individually.
    """
    user_key, item_key, rating_key, time_key = _JSON_FIELDS[version]
    lines = batch["text"].combine_chunks()
    names = ["user_id", "item_id", "rating", "timestamp"]
    schema = pa.schema(
        [
            (user_key, pa.string()),
            (item_key, pa.string()),
            (rating_key, pa.float64()),
            (time_key, pa.int64()),
        ]
    )
    try:
        table = pajson.read_json(
            io.BytesIO("\n".join(lines.to_pylist()).encode()),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
        if table.num_rows == len(lines):
            columns = {n: c.combine_chunks() for n, c in zip(names, table.columns, strict=True)}
            return _raw_events(columns, table.num_rows, keep_types=True)
    except (pa.ArrowInvalid, UnicodeError):
        pass
    rows: dict[str, list[str | None]] = {name: [] for name in [*names, "reason", "raw"]}
    for line in lines.to_pylist():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        ok = isinstance(record, dict)
        for name, key in zip(names, (user_key, item_key, rating_key, time_key), strict=True):
            value = record.get(key) if ok else None
            rows[name].append(None if value is None else str(value))
        rows["reason"].append(None if ok else "malformed_json")
        rows["raw"].append(None if ok else line)
    return _raw_events({k: pa.array(v, pa.string()) for k, v in rows.items()}, len(lines))


# --------------------------------------------------------------------------------------------
# Catalog helpers
# --------------------------------------------------------------------------------------------


def _attributes(**columns: pa.Array | None) -> pa.Array:
    """Build a map<string,string> column from named string columns (nulls/empties skipped)."""
    present = {k: v.cast(pa.string()) for k, v in columns.items() if v is not None}
    length = len(next(iter(present.values()))) if present else 0
    keys: list[list[str]] = [[] for _ in range(length)]
    values: list[list[str]] = [[] for _ in range(length)]
    for key, column in present.items():
        for row, value in enumerate(column.to_pylist()):
            if value:
                keys[row].append(key)
                values[row].append(value)
    offsets = np.zeros(length + 1, dtype=np.int32)
    np.cumsum([len(k) for k in keys], out=offsets[1:])
    flat_keys = pa.array([k for row in keys for k in row], pa.string())
    flat_values = pa.array([v for row in values for v in row], pa.string())
    return pa.MapArray.from_arrays(pa.array(offsets), flat_keys, flat_values)


def finish_catalog(
    item_ids: pa.Array, titles: pa.Array, attributes: pa.Array, rejects: list[pa.Table]
) -> tuple[pa.Table, pa.Table]:
    """Drop catalog rows without an id and repeated ids (first wins), recording each as a reject."""
    item_ids = pc.utf8_trim_whitespace(item_ids.cast(pa.string()))
    titles = pc.utf8_trim_whitespace(titles.cast(pa.string()))
    table = pa.table([item_ids, titles, attributes], schema=CATALOG)
    missing = pc.or_kleene(pc.is_null(item_ids), pc.equal(item_ids, "")).fill_null(True)
    if pc.any(missing).as_py():
        rejects.append(_catalog_rejects(table.filter(missing), "missing_item_id"))
        table = table.filter(pc.invert(missing))
    ids = table["item_id"].to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    keep = np.zeros(len(ids), dtype=bool)
    keep[first] = True
    if not keep.all():
        rejects.append(_catalog_rejects(table.filter(pa.array(~keep)), "duplicate_item_id"))
        table = table.filter(pa.array(keep))
    reject_table = pa.concat_tables(rejects) if rejects else CATALOG_REJECTS.empty_table()
    return table.combine_chunks(), reject_table


def _catalog_rejects(table: pa.Table, reason: str, raw: pa.Array | None = None) -> pa.Table:
    n = table.num_rows
    return pa.table(
        [
            table["item_id"] if "item_id" in table.column_names else pa.nulls(n, pa.string()),
            table["title"] if "title" in table.column_names else pa.nulls(n, pa.string()),
            raw if raw is not None else pa.nulls(n, pa.string()),
            pa.array([reason] * n, pa.string()),
        ],
        schema=CATALOG_REJECTS,
    )


def _collect(ds: ray.data.Dataset) -> pa.Table:
    """Materialize a (small) dataset on the driver as one Arrow table."""
    tables = [t for t in (ray.get(ref) for ref in ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def _read_lines_catalog(
    path: Path, sep: str, names: Sequence[str | None], encoding: str, min_fields: int | None
) -> tuple[pa.Table, list[pa.Table]]:
    """Read a small line-oriented catalog file; lines with too few fields become rejects."""
    lines = _collect(ray.data.read_text(str(path), encoding=encoding))
    text = lines["text"].combine_chunks() if lines.num_rows else pa.array([], pa.string())
    good, _, bad = split_lines(text, sep, names, min_fields)
    rejects = [_catalog_rejects(pa.table({"raw": bad}), "malformed_line", bad)] if len(bad) else []
    return good.combine_chunks(), rejects


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------

MOVIELENS_LAYOUTS = {
    # layout: (ratings file, movies file, description)
    "csv": ("ratings.csv", "movies.csv", "ml-latest-small / 20m / 25m / 32m"),
    "dat": ("ratings.dat", "movies.dat", "ml-1m / 10m"),
    "100k": ("u.data", "u.item", "ml-100k"),
}
MOVIELENS_CSV_HEADER = "userId,movieId,rating,timestamp"


def _expected_movielens() -> str:
    return "; ".join(
        f"{ratings} + {movies} ({what})" for ratings, movies, what in MOVIELENS_LAYOUTS.values()
    )


def detect_movielens_layout(folder: Path) -> str:
    """Name the MovieLens layout in ``folder`` or fail saying which files were expected."""
    for layout, (ratings, movies, _) in MOVIELENS_LAYOUTS.items():
        if (folder / ratings).is_file() and (folder / movies).is_file():
            return layout
    found = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    raise DataError(
        f"no MovieLens layout found in {folder}: expected one of {_expected_movielens()}; "
        f"found {found or 'nothing'}. Point --path (data.path) at the unpacked MovieLens folder."
    )


def _first_line(path: Path, encoding: str = "utf-8") -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding=encoding, errors="replace") as handle:
            return handle.readline().strip()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None


def read_movielens(folder: Path) -> SourceData:
    """MovieLens in any of its published layouts (ratings on a 0.5-5 or 1-5 scale)."""
    layout = detect_movielens_layout(folder)
    ratings_name, movies_name, description = MOVIELENS_LAYOUTS[layout]
    ratings_path, movies_path = folder / ratings_name, folder / movies_name
    names = ["user_id", "item_id", "rating", "timestamp"]
    rejects: list[pa.Table] = []
    if layout == "csv":
        header = _first_line(ratings_path)
        if header != MOVIELENS_CSV_HEADER:
            raise DataError(
                f"{ratings_path} starts with {header!r}; expected the header "
                f"{MOVIELENS_CSV_HEADER!r} of MovieLens ratings.csv"
            )
        events = ray.data.read_text(str(ratings_path)).map_batches(
            parse_event_lines,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"sep": ",", "names": names, "header": MOVIELENS_CSV_HEADER},
        )
        movies = pacsv.read_csv(
            movies_path,
            convert_options=pacsv.ConvertOptions(
                column_types={"movieId": pa.string(), "title": pa.string(), "genres": pa.string()}
            ),
        )
        for column in ("movieId", "title", "genres"):
            if column not in movies.column_names:
                raise DataError(f"{movies_path} has no {column!r} column (MovieLens movies.csv)")
        genres = pc.replace_substring(movies["genres"].combine_chunks(), "(no genres listed)", "")
        catalog, catalog_rejects = finish_catalog(
            movies["movieId"].combine_chunks(),
            movies["title"].combine_chunks(),
            _attributes(genres=genres),
            rejects,
        )
    else:
        sep, encoding = ("::", "latin-1") if layout == "dat" else ("\t", "latin-1")
        events = ray.data.read_text(str(ratings_path), encoding="latin-1").map_batches(
            parse_event_lines,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"sep": sep, "names": names},
        )
        if layout == "dat":
            good, rejects = _read_lines_catalog(
                movies_path, "::", ["item_id", "title", "genres"], encoding, None
            )
            genres = good["genres"].combine_chunks()
        else:
            genre_names = MOVIELENS_100K_GENRES
            if (folder / "u.genre").is_file():
                listed = [
                    line.split("|")[0]
                    for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines()
                    if "|" in line
                ]
                genre_names = listed or genre_names
            flag_names = [f"g{i}" for i in range(len(genre_names))]
            good, rejects = _read_lines_catalog(
                movies_path,
                "|",
                ["item_id", "title", None, None, None, *flag_names],
                encoding,
                5 + len(genre_names),
            )
            flags = (
                np.stack([good[name].to_numpy() == "1" for name in flag_names], axis=1)
                if good.num_rows
                else np.zeros((0, len(genre_names)), dtype=bool)
            )
            genres = pa.array(
                [
                    "|".join(g for g, on in zip(genre_names, row, strict=True) if on)
                    for row in flags
                ],
                pa.string(),
            )
        catalog, catalog_rejects = finish_catalog(
            good["item_id"].combine_chunks(),
            good["title"].combine_chunks(),
            _attributes(genres=genres),
            rejects,
        )
    return SourceData(
        events=events,
        catalog=catalog,
        catalog_rejects=catalog_rejects,
        rating_range=(0.5, 5.0) if layout == "csv" or layout == "dat" else (1.0, 5.0),
        timestamp_unit="s",
        has_labels=False,
        layout=f"movielens:{layout} ({description})",
    )


# --------------------------------------------------------------------------------------------
# Amazon reviews (2018 and 2023 releases), JSON lines, optionally gzipped
# --------------------------------------------------------------------------------------------

_JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def _json_files(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_JSON_SUFFIXES))
    meta = [p for p in files if p.name.startswith("meta")]
    reviews = [p for p in files if not p.name.startswith("meta")]
    return reviews, meta


def detect_amazon_version(first_review: dict) -> str:
    if {"reviewerID", "asin", "overall", "unixReviewTime"} <= first_review.keys():
        return "2018"
    if {"user_id", "parent_asin", "rating", "timestamp"} <= first_review.keys():
        return "2023"
    raise DataError(
        "the first review line has keys "
        f"{sorted(first_review)[:12]}; expected Amazon 2018 (reviewerID, asin, overall, "
        "unixReviewTime) or Amazon 2023 (user_id, parent_asin, rating, timestamp)"
    )


def _meta_rows(batch: pa.Table, *, version: str) -> pa.Table:
    """Ray Data UDF: meta JSON lines → item_id, title, category (strings), or a reject reason."""
    item_key = "asin" if version == "2018" else "parent_asin"
    out: dict[str, list[str | None]] = {
        "item_id": [],
        "title": [],
        "category": [],
        "raw": [],
        "reason": [],
    }
    for line in batch["text"].to_pylist():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            out["item_id"].append(None), out["title"].append(None), out["category"].append(None)
            out["raw"].append(line), out["reason"].append("malformed_json")
            continue
        if version == "2018":
            category = record.get("category") or []
            category = "|".join(map(str, category)) if isinstance(category, list) else category
        else:
            category = record.get("main_category")
        item = record.get(item_key)
        out["item_id"].append(None if item is None else str(item))
        out["title"].append(None if record.get("title") is None else str(record["title"]))
        out["category"].append(None if category is None else str(category))
        out["raw"].append(None)
        out["reason"].append(None)
    return pa.table({k: pa.array(v, pa.string()) for k, v in out.items()})


def read_amazon(folder: Path) -> SourceData:
    """Amazon reviews 2018 (seconds) or 2023 (milliseconds) with their meta files."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected Amazon review + meta JSON lines")
    reviews, meta = _json_files(folder)
    if not reviews or not meta:
        raise DataError(
            f"{folder} must hold review files (*.json[l][.gz]) and meta files (meta_*.json[l]"
            f"[.gz]); found reviews={[p.name for p in reviews]}, meta={[p.name for p in meta]}"
        )
    first = _first_line(reviews[0])
    try:
        version = detect_amazon_version(json.loads(first))
    except ValueError:
        raise DataError(f"{reviews[0]}: the first line is not JSON: {first[:120]!r}") from None
    events = ray.data.read_text([str(p) for p in reviews]).map_batches(
        parse_amazon_lines, batch_size=None, batch_format="pyarrow", fn_kwargs={"version": version}
    )
    meta_rows = _collect(
        ray.data.read_text([str(p) for p in meta]).map_batches(
            _meta_rows, batch_size=None, batch_format="pyarrow", fn_kwargs={"version": version}
        )
    )
    bad = pc.is_valid(meta_rows["reason"])
    rejects = (
        [_catalog_rejects(meta_rows.filter(bad), "malformed_json", meta_rows.filter(bad)["raw"])]
        if pc.any(bad).as_py()
        else []
    )
    good = meta_rows.filter(pc.invert(bad))
    catalog, catalog_rejects = finish_catalog(
        good["item_id"].combine_chunks(),
        good["title"].combine_chunks(),
        _attributes(category=good["category"].combine_chunks()),
        rejects,
    )
    return SourceData(
        events=events,
        catalog=catalog,
        catalog_rejects=catalog_rejects,
        rating_range=(1.0, 5.0),
        timestamp_unit="s" if version == "2018" else "ms",
        has_labels=False,
        layout=f"amazon:{version}",
    )


# --------------------------------------------------------------------------------------------
# Generic Parquet / CSV with a column mapping
# --------------------------------------------------------------------------------------------


def _generic_files(folder: Path, pattern: str, suffix: str, what: str, setting: str) -> list[str]:
    matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
    files: list[str] = []
    for match in matches:
        if match.is_dir():
            files.extend(str(p) for p in sorted(match.rglob(f"*{suffix}")))
        elif match.name.endswith(suffix):
            files.append(str(match))
    if not files:
        raise DataError(
            f"no {what} {suffix} files matching {pattern!r} in {folder}; put them there or set "
            f"{setting} to their name pattern"
        )
    return files


def _check_columns(
    available: Sequence[str], wanted: dict[str, str | None], where: str, setting: str
) -> None:
    for canonical, column in wanted.items():
        if column is not None and column not in available:
            raise DataError(
                f"column {column!r} ({setting}.{canonical}) not found in {where}; its columns are "
                f"{list(available)[:30]}. Set {setting}.{canonical} to the right column name."
            )


def _to_raw_generic(batch: pa.Table, *, mapping: dict[str, str | None]) -> pa.Table:
    """Ray Data UDF: rename mapped columns to canonical names, everything as text."""
    columns = {}
    for canonical, column in mapping.items():
        if column is None:
            continue
        values = batch[column].combine_chunks()
        if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
            values = pc.cast(values, pa.timestamp("s"), safe=False).cast(pa.int64())
        columns[canonical] = values
    return _raw_events(columns, batch.num_rows, keep_types=True)


def read_generic(folder: Path, cfg: DataConfig) -> SourceData:
    """Parquet or CSV files with a configurable column mapping (``data.columns``)."""
    suffix = ".parquet" if cfg.source == "parquet" else ".csv"
    event_files = _generic_files(folder, cfg.events_glob, suffix, "event", "data.events_glob")
    catalog_files = _generic_files(folder, cfg.catalog_glob, suffix, "catalog", "data.catalog_glob")
    mapping = cfg.columns.model_dump()
    wanted = [c for c in mapping.values() if c is not None]
    if suffix == ".parquet":
        schema = pq.read_schema(event_files[0])
        _check_columns(schema.names, mapping, event_files[0], "data.columns")
        timestamp_type = schema.field(cfg.columns.timestamp).type
        events = ray.data.read_parquet(event_files, columns=wanted)
        catalog_table = pa.concat_tables(
            [pq.read_table(f) for f in catalog_files], promote_options="permissive"
        )
    else:
        header = pacsv.open_csv(event_files[0]).schema.names
        _check_columns(header, mapping, event_files[0], "data.columns")
        timestamp_type = pa.string()
        events = ray.data.read_csv(
            event_files,
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(wanted, pa.string()), include_columns=wanted
            ),
        )
        catalog_table = pa.concat_tables(
            [
                pacsv.read_csv(
                    f,
                    convert_options=pacsv.ConvertOptions(
                        column_types=dict.fromkeys(pacsv.open_csv(f).schema.names, pa.string())
                    ),
                )
                for f in catalog_files
            ],
        )
    unit = cfg.timestamp_unit
    if pa.types.is_timestamp(timestamp_type) or pa.types.is_date(timestamp_type):
        unit = "s"
    events = events.map_batches(
        _to_raw_generic, batch_size=None, batch_format="pyarrow", fn_kwargs={"mapping": mapping}
    )
    cat_map = cfg.catalog_columns
    _check_columns(
        catalog_table.column_names,
        {"item_id": cat_map.item_id, "title": cat_map.title},
        catalog_files[0],
        "data.catalog_columns",
    )
    attributes = {}
    for name in cat_map.attributes:
        if name in catalog_table.column_names:
            column = catalog_table[name].combine_chunks()
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                column = pc.binary_join(column.cast(pa.list_(pa.string())), "|")
            attributes[name] = column
    catalog, catalog_rejects = finish_catalog(
        catalog_table[cat_map.item_id].combine_chunks(),
        catalog_table[cat_map.title].combine_chunks(),
        _attributes(**attributes)
        if attributes
        else pa.MapArray.from_arrays(
            pa.array(np.zeros(catalog_table.num_rows + 1, dtype=np.int32)),
            pa.array([], pa.string()),
            pa.array([], pa.string()),
        ),
        [],
    )
    return SourceData(
        events=events,
        catalog=catalog,
        catalog_rejects=catalog_rejects,
        rating_range=cfg.rating_range,
        timestamp_unit=unit,
        has_labels=cfg.columns.label is not None,
        layout=f"{cfg.source}:{folder.name}",
    )


def check_source_folder(cfg: DataConfig) -> Path:
    """The source folder, or a DataError before any cluster work starts."""
    folder = Path(cfg.path).expanduser()
    if not folder.exists():
        raise DataError(f"data.path {folder} does not exist; pass --path to the source folder")
    if not folder.is_dir():
        raise DataError(f"data.path {folder} is a file; pass the folder that holds it")
    if cfg.source == "movielens":
        detect_movielens_layout(folder)
    return folder


def read_source(cfg: DataConfig) -> SourceData:
    """Open the configured source; fail fast (DataError) when the path or layout is wrong."""
    folder = check_source_folder(cfg)
    if cfg.source == "movielens":
        data = read_movielens(folder)
    elif cfg.source == "amazon":
        data = read_amazon(folder)
    else:
        data = read_generic(folder, cfg)
    if cfg.rating_range is not None:
        data.rating_range = cfg.rating_range
    if data.catalog.num_rows == 0:
        raise DataError(f"the catalog of {folder} ({data.layout}) has no valid items")
    return data
