"""Readers on small fixture files of every supported layout, malformed rows included."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recicl.config import build_config
from recicl.data.manifest import SamplesManifest
from recicl.data.pipeline import build_samples
from recicl.data.samples_folder import SamplesFolder
from recicl.errors import DataError

pytestmark = pytest.mark.integration


def _build(tmp_path, source: str, folder, **data) -> dict:
    cfg = build_config(
        {
            "data": {"source": source, "path": str(folder), "max_date": "2030-01-01", **data},
            "samples": {"output": str(tmp_path / "out"), "periods": 2},
        }
    )
    return build_samples(cfg)


def _reasons(manifest: SamplesManifest) -> dict[str, int]:
    return manifest.quarantine.by_reason


def test_movielens_csv_layout(tmp_path, ray_local):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Heat (1995),(no genres listed)\n"
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,2,3.0,964982704\n"
        "1,3,5.0,964982705\n"
        "1,3,5.0,964982705\n"  # exact duplicate
        "2,1,9.0,964982703\n"  # rating out of the 0.5-5 scale
        "2,77,4.0,964982703\n"  # movie not in the catalog
        "2,1,4.0\n"  # wrong number of fields
        ",1,4.0,964982703\n"  # missing user
        "2,2,4.0,12\n"  # 1970
    )
    manifest = _build(tmp_path, "movielens", folder)
    assert manifest.source.layout.startswith("movielens:csv")
    assert manifest.rating_range == (0.5, 5.0)  # what serving will range-check against
    assert _reasons(manifest) == {
        "duplicate_event": 1, "item_not_in_catalog": 1, "malformed_line": 1,
        "missing_user_id": 1, "rating_out_of_range": 1, "timestamp_out_of_range": 1,
    }  # fmt: skip
    assert manifest.rows_read == 9
    assert manifest.events == 3
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    titles = dict(zip(catalog["item_id"].to_pylist(), catalog["title"].to_pylist(), strict=True))
    assert titles["2"] == "American President, The (1995)"
    attributes = dict(catalog["attributes"].to_pylist()[0])
    assert attributes == {"genres": "Adventure|Animation"}
    assert catalog["attributes"].to_pylist()[2] == []  # "(no genres listed)" → no genres
    quarantine = pq.read_table(tmp_path / "out" / "quarantine" / "events.parquet")
    assert "2,1,4.0" in quarantine["raw"].to_pylist()
    samples = SamplesFolder.at(tmp_path / "out").read_table()
    assert sorted(samples["item_id"].to_pylist()) == ["2", "3"]


def test_movielens_dat_layout_latin1(tmp_path, ray_local):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's\n2::Amélie (2001)::Comedy\nbroken line\n".encode(
            "latin-1"
        )
    )
    (folder / "ratings.dat").write_text(
        "1::1::5::978300760\n1::2::3::978302109\n1::2::x::978302110\n1::1::3\n"
    )
    manifest = _build(tmp_path, "movielens", folder)
    assert manifest.source.layout.startswith("movielens:dat")
    assert _reasons(manifest) == {"malformed_line": 1, "unparseable_rating": 1}
    assert manifest.quarantine.catalog == {"malformed_line": 1}
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert "Amélie (2001)" in catalog["title"].to_pylist()


def test_movielens_100k_layout(tmp_path, ray_local):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    flags = ["0"] * 19
    action = flags.copy()
    action[1] = "1"
    (folder / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(action) + "\n"
            "2|GoldenEye (1995)|01-Jan-1995||http://y|" + "|".join(flags) + "\n"
        ).encode("latin-1")
    )
    (folder / "u.data").write_text("196\t1\t3\t881250949\n196\t2\t5\t881250950\n196\t2\n")
    manifest = _build(tmp_path, "movielens", folder)
    assert manifest.source.layout.startswith("movielens:100k")
    assert manifest.rating_range == (1.0, 5.0)
    assert _reasons(manifest) == {"malformed_line": 1}
    assert manifest.events == 2
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert dict(catalog["attributes"].to_pylist()[0]) == {"genres": "Action"}


def test_unknown_movielens_layout_is_a_clear_error(tmp_path, ray_local):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"ratings\.csv \+ movies\.csv.*found \['notes\.txt'\]"):
        _build(tmp_path, "movielens", folder)


def test_movielens_csv_wrong_header_is_a_clear_error(tmp_path, ray_local):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\n")
    (folder / "ratings.csv").write_text("user,item,score,time\n1,1,4,964982703\n")
    with pytest.raises(DataError, match="expected the header"):
        _build(tmp_path, "movielens", folder)


def _write_jsonl_gz(path, rows: list) -> None:
    with gzip.open(path, "wt") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def test_amazon_2018_gzipped(tmp_path, ray_local):
    folder = tmp_path / "amazon18"
    folder.mkdir()
    _write_jsonl_gz(
        folder / "Books_5.json.gz",
        [
            {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1400000000},
            {"reviewerID": "A1", "asin": "B2", "overall": 2.0, "unixReviewTime": 1400000100},
            {"reviewerID": "A1", "asin": "B2", "overall": "bad", "unixReviewTime": 1400000200},
            "{not json",
        ],
    )
    _write_jsonl_gz(
        folder / "meta_Books.json.gz",
        [
            {"asin": "B1", "title": "Dune", "category": ["Books", "Sci-Fi"]},
            {"asin": "B2", "title": "Emma", "category": []},
        ],
    )
    manifest = _build(tmp_path, "amazon", folder)
    assert manifest.source.layout == "amazon:2018"
    assert manifest.rating_range == (1.0, 5.0)
    assert _reasons(manifest) == {"malformed_json": 1, "unparseable_rating": 1}
    assert manifest.events == 2
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert dict(catalog["attributes"].to_pylist()[0]) == {"category": "Books|Sci-Fi"}


def test_amazon_2023_milliseconds(tmp_path, ray_local):
    folder = tmp_path / "amazon23"
    folder.mkdir()
    rows = [
        {"user_id": "U1", "parent_asin": "P1", "rating": 4.0, "timestamp": 1600000000000},
        {"user_id": "U1", "parent_asin": "P2", "rating": 1.0, "timestamp": 1600000500000},
        {"user_id": "U1", "parent_asin": "P9", "rating": 1.0, "timestamp": 1600000600000},
    ]
    (folder / "Toys.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "meta_Toys.jsonl").write_text(
        json.dumps({"parent_asin": "P1", "title": "Ball", "main_category": "Toys"}) + "\n"
        + json.dumps({"parent_asin": "P2", "title": "Kite", "main_category": "Toys"}) + "\n"
    )  # fmt: skip
    manifest = _build(tmp_path, "amazon", folder)
    assert manifest.source.layout == "amazon:2023"
    assert _reasons(manifest) == {"item_not_in_catalog": 1}
    samples = SamplesFolder.at(tmp_path / "out").read_table()
    assert samples["timestamp"].to_pylist() == [1600000500]  # ms → s


def test_generic_csv_with_column_mapping(tmp_path, ray_local):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "events.csv").write_text(
        "who,what,liked,when\nu1,a,1,2020-01-01T00:00:00\nu1,b,no,2020-01-02T00:00:00\n"
        "u1,c,maybe,2020-01-03T00:00:00\nu1,a,1,not a date\n"
    )
    (folder / "catalog.csv").write_text("id,name,genres\na,Alpha,X\nb,Beta,Y\nc,Gamma,Z\n")
    manifest = _build(
        tmp_path, "csv", folder,
        columns={"user_id": "who", "item_id": "what", "rating": None, "label": "liked",
                 "timestamp": "when"},
        catalog_columns={"item_id": "id", "title": "name"}, timestamp_unit="iso",
    )  # fmt: skip
    assert _reasons(manifest) == {"missing_rating": 1, "unparseable_timestamp": 1}
    assert manifest.events == 2
    samples = SamplesFolder.at(tmp_path / "out").read_table()
    assert samples.to_pylist()[0]["label"] == 0


def test_generic_parquet_missing_column_is_named(tmp_path, ray_local):
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"user": ["u"], "item_id": ["a"]}), folder / "events.parquet")
    pq.write_table(pa.table({"item_id": ["a"], "title": ["A"]}), folder / "catalog.parquet")
    with pytest.raises(DataError, match=r"column 'user_id' \(data\.columns\.user_id\)"):
        _build(tmp_path, "parquet", folder)


def test_generic_parquet_native_timestamps(tmp_path, ray_local):
    folder = tmp_path / "pq"
    folder.mkdir()
    events = pa.table(
        {
            "user_id": ["u", "u"],
            "item_id": ["a", "b"],
            "rating": [5, 1],
            "timestamp": pa.array([1_600_000_000_000, 1_600_000_100_000], pa.timestamp("ms")),
        }
    )
    pq.write_table(events, folder / "events.parquet")
    pq.write_table(
        pa.table({"item_id": ["a", "b"], "title": ["A", "B"], "genres": [["x", "y"], []]}),
        folder / "catalog.parquet",
    )
    manifest = _build(tmp_path, "parquet", folder)
    assert manifest.events == 2 and manifest.quarantine.total == 0
    samples = SamplesFolder.at(tmp_path / "out").read_table()
    assert samples["timestamp"].to_pylist() == [1_600_000_100]
    assert samples["demos"].to_pylist()[0][0]["item_id"] == "a"
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert dict(catalog["attributes"].to_pylist()[0]) == {"genres": "x|y"}


# Bad bytes, ragged rows and stray line separators (issue 26): each is quarantined with its
# reason, file and line; the good rows around it are all kept; nothing crashes.


def _quarantine(tmp_path, name: str = "events") -> list[dict]:
    return pq.read_table(tmp_path / "out" / "quarantine" / f"{name}.parquet").to_pylist()


def _where(rows: list[dict]) -> set[tuple[str, str, int]]:
    """(reason, file name, line) of each quarantine row (file names only: tmp paths vary)."""
    return {(r["reason"], r["file"].rsplit("/", 1)[-1], r["line"]) for r in rows}


def test_invalid_utf8_byte_in_a_csv_row_and_title_is_quarantined(tmp_path, ray_local):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_bytes(
        b"movieId,title,genres\n1,Toy Story (1995),Animation\n"
        b"2,Caf\xe9 (1995),Drama\n"  # a latin-1 byte in a UTF-8 file
        b"3,Heat (1995),Action\n"
    )
    (folder / "ratings.csv").write_bytes(
        b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
        b"1,3,5.0,96498\xff2704\n"
        b"2,3,3.0,964982705\n2,1,5.0,964982706\n"
    )
    manifest = _build(tmp_path, "movielens", folder)
    assert _reasons(manifest) == {"invalid_utf8": 1}
    assert manifest.events == 3 and manifest.catalog_items == 2
    (bad,) = _quarantine(tmp_path)
    assert _where([bad]) == {("invalid_utf8", "ratings.csv", 3)}
    assert bad["raw"] == "1,3,5.0,96498\\xff2704"  # the bad byte shown, the rest readable
    assert manifest.quarantine.catalog == {"invalid_utf8": 1}
    assert _where(_quarantine(tmp_path, "catalog")) == {("invalid_utf8", "movies.csv", 3)}


def test_ragged_csv_rows_are_quarantined_with_their_line(tmp_path, ray_local):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "events.csv").write_text(
        "user,item,rating,ts\nu1,a,5,1600000000\n"
        "u1,b,4,1600000100,extra\n"  # one field too many
        "u1,c\n"  # two too few
        "u2,a,1,1600000200\nu2,b,5,1600000300\n"
    )
    (folder / "catalog.csv").write_text(
        'item_id,title\na,Alpha\nb,"Beta, the"\nc,Gamma,oops\n'  # c: a ragged catalog row
    )
    manifest = _build(
        tmp_path, "csv", folder,
        columns={"user_id": "user", "item_id": "item", "rating": "rating", "timestamp": "ts"},
    )  # fmt: skip
    assert _reasons(manifest) == {"malformed_line": 2}
    assert manifest.events == 3
    assert _where(_quarantine(tmp_path)) == {
        ("malformed_line", "events.csv", 3), ("malformed_line", "events.csv", 4),
    }  # fmt: skip
    assert {r["raw"] for r in _quarantine(tmp_path)} == {"u1,b,4,1600000100,extra", "u1,c"}
    assert _where(_quarantine(tmp_path, "catalog")) == {("malformed_line", "catalog.csv", 4)}
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert catalog["title"].to_pylist() == ["Alpha", "Beta, the"]


def test_amazon_bad_byte_and_broken_json_line_are_quarantined(tmp_path, ray_local):
    folder = tmp_path / "amazon23"
    folder.mkdir()
    good = [
        {"user_id": "U1", "parent_asin": "P1", "rating": 4.0, "timestamp": 1600000000000},
        {"user_id": "U1", "parent_asin": "P2", "rating": 1.0, "timestamp": 1600000500000},
        {"user_id": "U2", "parent_asin": "P1", "rating": 5.0, "timestamp": 1600000600000},
    ]
    lines = [json.dumps(r).encode() for r in good]
    lines.insert(1, b'{"user_id": "U\xc3", "parent_asin": "P1", "rating": 3.0, "timestamp": 1}')
    lines.insert(3, b'{"user_id": "U2", "parent_asin": ')  # cut short
    (folder / "Toys.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "meta_Toys.jsonl").write_bytes(
        b'{"parent_asin": "P1", "title": "Ball", "main_category": "Toys"}\n'
        b'{"parent_asin": "P3", "title": "Bad \xff", "main_category": "Toys"}\n'
        b'{"parent_asin": "P2", "title": "Kite", "main_category": "Toys"}\n'
    )
    manifest = _build(tmp_path, "amazon", folder)
    assert _reasons(manifest) == {"invalid_utf8": 1, "malformed_json": 1}
    assert manifest.events == 3
    assert _where(_quarantine(tmp_path)) == {
        ("invalid_utf8", "Toys.jsonl", 2), ("malformed_json", "Toys.jsonl", 4),
    }  # fmt: skip
    assert _where(_quarantine(tmp_path, "catalog")) == {("invalid_utf8", "meta_Toys.jsonl", 2)}
    assert manifest.catalog_items == 2


def test_only_newlines_split_lines(tmp_path, ray_local):
    """\\u2028, \\x85 (NEL), \\x1c-\\x1e, \\x0b and a lone \\r are characters, not line ends
    (Python's str.splitlines splits on all of them); \\r\\n ends a line like \\n."""
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\r\n"
        "1,Toy\u2028Story (1995),Animation\r\n"
        "2,Heat\x85 (1995),Action\n"
        '3,"Se7en\rTwo (1995)",Crime\n'  # a quoted \r: part of the title
        "4,Up\x1c\x1d\x1e\x0b (2009),Animation\n",
        newline="",
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\r\n"
        "1,1,4.0,964982703\r\n1,2,3.0,964982704\n1,3,5.0,964982705\n1,4,5.0,964982706\n"
        "2,1\u20281,4.0,964982707\n",  # the \u2028 stays in the movie id: not in the catalog
        newline="",
    )
    manifest = _build(tmp_path, "movielens", folder)
    assert manifest.catalog_items == 4
    assert manifest.quarantine.catalog == {}
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert catalog["title"].to_pylist() == [
        "Toy\u2028Story (1995)", "Heat\x85 (1995)", "Se7en\rTwo (1995)",
        "Up\x1c\x1d\x1e\x0b (2009)",
    ]  # fmt: skip
    assert manifest.events == 4
    assert _reasons(manifest) == {"item_not_in_catalog": 1}  # one line, not two malformed halves
    assert _where(_quarantine(tmp_path)) == {("item_not_in_catalog", "ratings.csv", 6)}
    # latin-1 sources: the byte 0x85 decodes to NEL, which must not split a line either
    dat = tmp_path / "ml-1m"
    dat.mkdir()
    (dat / "movies.dat").write_bytes(b"1::Toy Story\x85 (1995)::Animation\n2::Heat::Action\n")
    (dat / "ratings.dat").write_bytes(b"1\x85a::1::5::978300760\n1\x85a::2::3::978302109\n")
    manifest = _build(tmp_path, "movielens", dat)
    assert manifest.catalog_items == 2 and manifest.quarantine.catalog == {}
    assert manifest.events == 2 and manifest.quarantine.total == 0
    samples = SamplesFolder.at(tmp_path / "out").read_table()
    assert samples["user_id"].to_pylist() == ["1\x85a"]
