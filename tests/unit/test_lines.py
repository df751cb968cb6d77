"""The line reader's splitting and the CSV parser under it, without Ray: line ends, bad bytes,
ragged rows, quotes left open (issue 26)."""

from __future__ import annotations

import pyarrow as pa

from recicl.data.readers.lines import line_blocks, lines_block, parse_csv_lines

#: Characters that Python's str.splitlines ends a line at, but a text file line does not hold.
NOT_LINE_ENDS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_only_newline_ends_a_line_and_crlf_reads_like_lf():
    data = f"a{NOT_LINE_ENDS}b\r\nc\n\nd\r\r\n".encode()
    rows = lines_block(data, "f.txt", 1, "utf-8").to_pylist()
    assert [r["text"] for r in rows] == [f"a{NOT_LINE_ENDS}b", "c", "", "d\r"]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert {r["file"] for r in rows} == {"f.txt"} and {r["reason"] for r in rows} == {None}


def test_invalid_utf8_lines_are_flagged_with_their_bytes_shown():
    data = b"ok\nbad \xff here\n\xc3\nfine \xc3\xa9\ncut \xe2\x82\n"
    rows = lines_block(data, "f.txt", 10, "utf-8").to_pylist()
    assert [(r["line"], r["reason"]) for r in rows] == [
        (10, None), (11, "invalid_utf8"), (12, "invalid_utf8"), (13, None), (14, "invalid_utf8"),
    ]  # fmt: skip
    assert rows[1]["text"] == "bad \\xff here" and rows[3]["text"] == "fine é"


def test_latin1_bytes_are_characters_even_0x85():
    rows = lines_block(b"caf\xe9\x85x\r\n", "f.dat", 1, "latin-1").to_pylist()
    assert rows == [{"text": "café\x85x", "file": "f.dat", "line": 1, "reason": None}]


def test_chunks_never_cut_a_line_and_numbers_run_on():
    data = b"one\ntwo \xff\nthree\nfour"  # no "\n" at the end
    blocks = list(line_blocks(pa.BufferReader(data), "f.txt", "utf-8", chunk_bytes=5))
    rows = [r for block in blocks for r in block.to_pylist()]
    assert [(r["line"], r["text"]) for r in rows] == [
        (1, "one"), (2, "two \\xff"), (3, "three"), (4, "four"),
    ]  # fmt: skip
    assert [r["reason"] for r in rows] == [None, "invalid_utf8", None, None]


def test_csv_lines_ragged_rows_and_open_quotes_are_named():
    lines = pa.array(
        [
            "1,a,b",
            '2,"x, y",c',
            "3,d",  # too few
            '4,"open,e',  # a quote left open: would swallow the lines after it
            "5,f,g",
            "6,h\ri,j",  # a bare \r is data, not a line end
            '7,"q\rr",k',
            "8,a,b,c",  # too many
            "9,\u2028,\x85",
        ]
    )
    table, ragged = parse_csv_lines(lines, ["n", "a", "b"])
    assert ragged.tolist() == [2, 3, 7]
    assert table.to_pylist() == [
        {"n": "1", "a": "a", "b": "b"}, {"n": "2", "a": "x, y", "b": "c"},
        {"n": "5", "a": "f", "b": "g"}, {"n": "6", "a": "h\ri", "b": "j"},
        {"n": "7", "a": "q\rr", "b": "k"}, {"n": "9", "a": "\u2028", "b": "\x85"},
    ]  # fmt: skip
