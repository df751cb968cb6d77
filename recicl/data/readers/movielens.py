"""MovieLens in any of its published layouts: csv (latest-small, 20m-32m), dat (1m, 10m), 100k."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from recicl.data.readers.common import (
    SourceData,
    attributes_map,
    csv_fields,
    csv_header,
    finish_catalog,
    first_line,
    parse_csv_events,
    parse_event_lines,
    read_catalog_rows,
    split_fields,
)
from recicl.data.readers.lines import read_lines
from recicl.errors import DataError

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


def read_movielens(folder: Path) -> SourceData:
    """MovieLens in any of its published layouts (ratings on a 0.5-5 or 1-5 scale)."""
    layout = detect_movielens_layout(folder)
    ratings_name, movies_name, description = MOVIELENS_LAYOUTS[layout]
    ratings_path, movies_path = (folder / ratings_name).resolve(), (folder / movies_name).resolve()
    if layout == "csv":
        events, catalog, catalog_rejects = _read_csv_layout(ratings_path, movies_path)
    else:
        events, catalog, catalog_rejects = _read_text_layout(
            folder, layout, ratings_path, movies_path
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


def _read_csv_layout(
    ratings_path: Path, movies_path: Path
) -> tuple[ray.data.Dataset, pa.Table, pa.Table]:
    """ratings.csv + movies.csv (UTF-8 CSV; titles are quoted when they hold a comma)."""
    header = first_line(ratings_path)
    if header != MOVIELENS_CSV_HEADER:
        raise DataError(
            f"{ratings_path} starts with {header!r}; expected the header "
            f"{MOVIELENS_CSV_HEADER!r} of MovieLens ratings.csv"
        )
    columns = MOVIELENS_CSV_HEADER.split(",")
    mapping = dict(zip(["user_id", "item_id", "rating", "timestamp"], columns, strict=True))
    events = read_lines([str(ratings_path)]).map_batches(
        partial(parse_csv_events, headers={str(ratings_path): columns}, mapping=mapping),
        batch_size=None,
        batch_format="pyarrow",
    )
    movie_columns = csv_header(movies_path)
    for column in ("movieId", "title", "genres"):
        if column not in movie_columns:
            raise DataError(
                f"{movies_path} has no {column!r} column in its header {movie_columns}; "
                "expected MovieLens movies.csv (movieId,title,genres)"
            )
    good, rejects = read_catalog_rows(
        [movies_path],
        partial(
            csv_fields,
            headers={str(movies_path): movie_columns},
            columns=["movieId", "title", "genres"],
        ),
        ["movieId", "title", "genres"],
    )
    genres = pc.replace_substring(good["genres"].combine_chunks(), "(no genres listed)", "")
    catalog, catalog_rejects = finish_catalog(
        good["movieId"].combine_chunks(),
        good["title"].combine_chunks(),
        attributes_map(genres=genres),
        rejects,
        origin=good,
    )
    return events, catalog, catalog_rejects


def _read_text_layout(
    folder: Path, layout: str, ratings_path: Path, movies_path: Path
) -> tuple[ray.data.Dataset, pa.Table, pa.Table]:
    """ratings.dat + movies.dat (``::``) or u.data (tab) + u.item (``|``), all latin-1."""
    names = ["user_id", "item_id", "rating", "timestamp"]
    sep = "::" if layout == "dat" else "\t"
    events = read_lines([str(ratings_path)], "latin-1").map_batches(
        partial(parse_event_lines, sep=sep, names=names),
        batch_size=None,
        batch_format="pyarrow",
    )
    if layout == "dat":
        fields = ["item_id", "title", "genres"]
        good, rejects = read_catalog_rows(
            [movies_path], partial(split_fields, sep="::", names=fields), fields, "latin-1"
        )
        genres = good["genres"].combine_chunks()
    else:
        genre_names = _genre_names(folder)
        flag_names = [f"g{i}" for i in range(len(genre_names))]
        good, rejects = read_catalog_rows(
            [movies_path],
            partial(
                split_fields,
                sep="|",
                names=["item_id", "title", None, None, None, *flag_names],
                min_fields=5 + len(genre_names),
            ),
            ["item_id", "title", *flag_names],
            "latin-1",
        )
        flags = (
            np.stack([good[name].to_numpy() == "1" for name in flag_names], axis=1)
            if good.num_rows
            else np.zeros((0, len(genre_names)), dtype=bool)
        )
        genres = pa.array(
            ["|".join(g for g, on in zip(genre_names, row, strict=True) if on) for row in flags],
            pa.string(),
        )
    catalog, catalog_rejects = finish_catalog(
        good["item_id"].combine_chunks(),
        good["title"].combine_chunks(),
        attributes_map(genres=genres),
        rejects,
        origin=good,
    )
    return events, catalog, catalog_rejects


def _genre_names(folder: Path) -> list[str]:
    """ml-100k's genre names, from u.genre (``name|index`` lines) when it is there."""
    path = folder / "u.genre"
    if not path.is_file():
        return MOVIELENS_100K_GENRES
    text = path.read_bytes().decode("latin-1")
    listed = [line.split("|")[0] for line in text.split("\n") if "|" in line]
    return listed or MOVIELENS_100K_GENRES
