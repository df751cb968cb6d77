"""The configured source: check its folder before any cluster work, then open it."""

from __future__ import annotations

from pathlib import Path

from recicl.config import DataConfig
from recicl.data.readers.amazon import read_amazon
from recicl.data.readers.common import SourceData
from recicl.data.readers.generic import read_generic
from recicl.data.readers.movielens import detect_movielens_layout, read_movielens
from recicl.data.readers.served import add_served
from recicl.errors import DataError


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
    if cfg.served_dir:  # what serving stored since the log ended (recicl retune)
        data = add_served(data, Path(cfg.served_dir))
    if data.catalog.num_rows == 0:
        raise DataError(f"the catalog of {folder} ({data.layout}) has no valid items")
    return data
