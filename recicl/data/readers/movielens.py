"""MovieLens in any of its published layouts: csv (latest-small, 20m-32m), dat (1m, 10m), 100k."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import ray.data

from recicl.data.readers.common import (
    SourceData,
    attributes_map,
    finish_catalog,
    first_line,
    parse_event_lines,
    read_lines_catalog,
)
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
    ratings_path, movies_path = folder / ratings_name, folder / movies_name
    names = ["user_id", "item_id", "rating", "timestamp"]
    rejects: list[pa.Table] = []
    if layout == "csv":
        header = first_line(ratings_path)
        if header != MOVIELENS_CSV_HEADER:
            raise DataError(
                f"{ratings_path} starts with {header!r}; expected the header "
                f"{MOVIELENS_CSV_HEADER!r} of MovieLens ratings.csv"
            )
        events = ray.data.read_text(str(ratings_path)).map_batches(
            partial(parse_event_lines, sep=",", names=names, header=MOVIELENS_CSV_HEADER),
            batch_size=None,
            batch_format="pyarrow",
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
            attributes_map(genres=genres),
            rejects,
        )
    else:
        sep, encoding = ("::", "latin-1") if layout == "dat" else ("\t", "latin-1")
        events = ray.data.read_text(str(ratings_path), encoding="latin-1").map_batches(
            partial(parse_event_lines, sep=sep, names=names),
            batch_size=None,
            batch_format="pyarrow",
        )
        if layout == "dat":
            good, rejects = read_lines_catalog(
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
            good, rejects = read_lines_catalog(
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
            attributes_map(genres=genres),
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
