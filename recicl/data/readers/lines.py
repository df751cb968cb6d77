"""Text files as numbered lines on Ray Data: split on ``\\n`` only, bad bytes flagged, not fatal.

Why not ``ray.data.read_text``: it decodes each whole file with ``bytes.decode`` (one invalid
UTF-8 byte fails the job) and splits with ``str.splitlines``, which also ends a line at ``\\r``,
``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85`` (NEL) and ``\\u2028``/``\\u2029``: a title with
one of those became two malformed rows, and every later line number was off. It also drops where
a line came from. :class:`TextLines` reads each file in chunks, splits on the byte ``\\n`` (a
``\\r`` right before it is dropped: ``\\r\\n`` files read like ``\\n`` files), and yields blocks of
``text``, ``file``, ``line`` (1-based) and ``reason``: ``invalid_utf8`` for a line that is not
valid UTF-8, whose ``text`` then shows the bad bytes as ``\\xNN`` escapes. Readers turn such lines
into quarantine rows; every other line is parsed.

Why not ``pyarrow.csv`` for the line splitting of CSV files: its parser also ends a row at a bare
``\\r`` (it accepts old Mac line ends, with no option to turn that off), fails the whole file on an
invalid byte in a string column, and reports no line number for good rows. It still parses the
lines of each block (quoting, and ``invalid_row_handler`` to name the ragged rows):
:func:`parse_csv_lines`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import ray.data
from ray.data.datasource import FileBasedDatasource

from recicl.data.schema import SOURCE_FILE

#: The encodings a line reader accepts. Both are ASCII-compatible, so the byte ``\\n`` is always a
#: line end and never part of a character: files can be split before they are decoded.
Encoding = Literal["utf-8", "latin-1"]

#: The columns of every block :class:`TextLines` yields.
LINES = pa.schema(
    [("text", pa.string()), ("file", SOURCE_FILE), ("line", pa.int64()), ("reason", pa.string())]
)

_CHUNK_BYTES = 32 << 20  # one block per ~32 MiB of a file: well under Ray's 128 MiB block target
_UTF8_WINDOW = 64 << 10


class TextLines(FileBasedDatasource):
    """Ray Data source of numbered lines (see the module docstring); gzip inferred from ``.gz``."""

    def __init__(
        self, paths: Sequence[str], *, encoding: Encoding, chunk_bytes: int = _CHUNK_BYTES
    ) -> None:
        super().__init__(list(paths))
        self._encoding = encoding
        self._chunk_bytes = chunk_bytes

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from line_blocks(f, path, self._encoding, self._chunk_bytes)


def line_blocks(
    f: pa.NativeFile, path: str, encoding: Encoding, chunk_bytes: int = _CHUNK_BYTES
) -> Iterator[pa.Table]:
    """The lines of an open file as :data:`LINES` tables, one per ``chunk_bytes`` read (a line
    cut by a chunk's end waits for the next chunk)."""
    first, rest = 1, b""
    while chunk := f.read(chunk_bytes):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            block = lines_block(data[:cut], path, first, encoding)
            first += block.num_rows
            yield block
    if rest:  # the last line has no "\n"
        yield lines_block(rest + b"\n", path, first, encoding)


def read_lines(paths: Sequence[str], encoding: Encoding = "utf-8") -> ray.data.Dataset:
    """The lines of ``paths`` as a lazy dataset of :data:`LINES` blocks."""
    return ray.data.read_datasource(TextLines(paths, encoding=encoding))


def lines_block(data: bytes, path: str, first: int, encoding: Encoding) -> pa.Table:
    """``data`` (whole lines, each ending with ``\\n``) → a :data:`LINES` table, vectorized."""
    if encoding == "latin-1":  # every byte is a character: transcode, nothing can fail
        data = data.decode("latin-1").encode("utf-8")
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])
    crlf = (ends > starts) & (buffer[np.maximum(ends - 1, 0)] == ord("\r"))
    keep = np.ones(len(buffer), dtype=bool)
    keep[ends] = False
    keep[ends[crlf] - 1] = False
    offsets = np.zeros(len(ends) + 1, dtype=np.int32)
    np.cumsum(ends - starts - crlf, out=offsets[1:])
    raw = pa.Array.from_buffers(
        pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(buffer[keep])]
    )
    bad = _invalid_utf8_lines(data, ends) if encoding == "utf-8" else []
    reason = pa.nulls(len(ends), pa.string())
    if len(bad):
        mask = np.zeros(len(ends), dtype=bool)
        mask[bad] = True
        shown = [line.decode("utf-8", "backslashreplace") for line in raw.filter(mask).to_pylist()]
        raw = pc.replace_with_mask(raw, pa.array(mask), pa.array(shown, pa.binary()))
        reason = pc.if_else(pa.array(mask), "invalid_utf8", reason)
    files = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(len(ends), dtype=np.int32)), pa.array([path], pa.string())
    )
    numbers = pa.array(np.arange(first, first + len(ends), dtype=np.int64))
    return pa.table([raw.cast(pa.string()), files, numbers, reason], schema=LINES)


def _invalid_utf8_lines(data: bytes, ends: np.ndarray) -> list[int]:
    """Indexes of the lines (ending at ``ends``) that are not valid UTF-8.

    Python's decoder says where the first bad byte is; decoding resumes after that byte's line.
    It decodes windows of whole lines (~64 KiB), because each error copies the input it was
    given into the exception: a whole chunk per bad line would cost seconds per thousand.
    """
    bad: list[int] = []
    view, start = memoryview(data), 0
    while start < len(data):
        last = min(int(np.searchsorted(ends, start + _UTF8_WINDOW)), len(ends) - 1)
        stop = int(ends[last]) + 1
        try:
            codecs.utf_8_decode(view[start:stop], "strict", True)
            start = stop
        except UnicodeDecodeError as error:
            index = int(np.searchsorted(ends, start + error.start))
            bad.append(index)
            start = int(ends[index]) + 1
    return bad


#: Stands in for ``\\r`` while pyarrow parses a CSV block (see :func:`parse_csv_lines`): a
#: private-use character that text hardly ever holds.
_CR_STAND_IN = "\ue00d"


def parse_csv_lines(lines: pa.Array, names: Sequence[str]) -> tuple[pa.Table, np.ndarray]:
    """CSV lines (valid UTF-8, one record each) → (the good rows as string columns ``names``,
    the indexes of the ragged lines: too many or too few fields, or a quote left open).

    pyarrow parses the block at once; its ``invalid_row_handler`` names the ragged rows by
    number. A quote left open swallows the lines after it into one row: the rows then fall
    short of the lines, and the block is parsed again in halves until each ragged line stands
    alone (a few extra parses per bad line, none for a clean block).
    """
    empty = pa.schema([(n, pa.string()) for n in names]).empty_table()
    if len(lines) == 0:
        return empty, np.zeros(0, dtype=np.int64)
    parsed = _parse_block(lines, names)
    if parsed is not None:
        return parsed
    if len(lines) == 1:
        return empty, np.array([0])
    half = len(lines) // 2
    head, head_bad = parse_csv_lines(lines[:half], names)
    tail, tail_bad = parse_csv_lines(lines[half:], names)
    return pa.concat_tables([head, tail]), np.concatenate([head_bad, tail_bad + half])


def _parse_block(lines: pa.Array, names: Sequence[str]) -> tuple[pa.Table, np.ndarray] | None:
    """One pyarrow parse of ``lines``; None unless its rows are the lines, one to one.

    pyarrow ends a row at a bare ``\\r`` (see the module docstring), so each ``\\r`` is swapped
    for a stand-in while it parses, and back; a block that already holds the stand-in is not
    parsed whole (None), so only the line that holds both is ever quarantined for it.
    """
    has_cr = pc.any(pc.match_substring(lines, "\r")).as_py()
    if has_cr:
        if pc.any(pc.match_substring(lines, _CR_STAND_IN)).as_py():
            return None
        lines = pc.replace_substring(lines, "\r", _CR_STAND_IN)
    ragged: list[int] = []

    def skip(row: pacsv.InvalidRow) -> str:
        ragged.append(-1 if row.number is None else row.number - 1)  # None: threaded parsing only
        return "skip"

    whole = pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines)
    data = pc.binary_join(whole, "\n")[0].as_buffer().to_pybytes() + b"\n"
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(
                column_names=list(names), use_threads=False, block_size=len(data) + 1
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid:  # e.g. a quote still open at the end of the block
        return None
    if table.num_rows + len(ragged) != len(lines) or -1 in ragged:
        return None
    if has_cr:
        columns = [pc.replace_substring(c, _CR_STAND_IN, "\r") for c in table.columns]
        table = pa.table(columns, names=table.column_names)
    return table, np.array(ragged, dtype=np.int64)
