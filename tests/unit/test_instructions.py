"""Instruction-format (Alpaca-style) Yes/No files: parsing, clear errors, templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recicl.prompts.instructions import (
    ALPACA_CUE,
    InstructionFileError,
    answer_cue,
    is_instruction_file,
    read_instruction_file,
    render,
)

RECORDS = [
    {"instruction": "Will the user like it?", "input": "Liked: A", "output": "Yes."},
    {"instruction": "Will the user like it?", "input": "", "output": "No."},
    {"instruction": "Will the user like it?", "output": " yes ", "user_id": "u7"},
]  # fmt: skip


def test_json_array_and_jsonl_read_the_same(tmp_path: Path) -> None:
    array, lines = tmp_path / "set.json", tmp_path / "set.jsonl"
    array.write_text(json.dumps(RECORDS, indent=1))
    lines.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    a, b = read_instruction_file(array), read_instruction_file(lines)
    assert a.equals(b)
    assert a["label"].to_pylist() == [1, 0, 1]
    assert a["input"].to_pylist() == ["Liked: A", "", ""]
    assert a["user_id"].to_pylist() == ["record-0", "record-1", "u7"]
    assert is_instruction_file(array) and is_instruction_file(lines)
    assert not is_instruction_file(tmp_path)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"input": "x", "output": "Yes."}], "record 0: field 'instruction'"),
        ([*RECORDS, {"instruction": "q", "output": "Maybe."}], "record 3: field 'output'"),
        ([*RECORDS, {"instruction": "q", "input": 3, "output": "No."}], "record 3: field 'input'"),
        ([*RECORDS, "text"], "record 3: not a JSON object"),
        ([RECORDS[0], RECORDS[2]], "every record answers Yes"),
        ([], "no records"),
    ],
)
def test_bad_records_are_named(tmp_path: Path, records, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(InstructionFileError, match=message):
        read_instruction_file(path)


def test_invalid_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "q", "output": "Yes."},\n {"instruction": ]')
    with pytest.raises(InstructionFileError, match="line 2"):
        read_instruction_file(path)


def test_templates() -> None:
    alpaca = render("alpaca", "Will they like it?", "Liked: A")
    assert alpaca.startswith("Below is an instruction")
    assert "### Instruction:\nWill they like it?\n\n### Input:\nLiked: A\n\n" in alpaca
    assert alpaca.endswith(ALPACA_CUE)
    assert "### Input" not in render("alpaca", "Will they like it?", "  ")
    assert render("answer", "Will they like it?", "Liked: A") == (
        "Will they like it?\nLiked: A\nAnswer:"
    )
    assert answer_cue("alpaca") == (ALPACA_CUE, ("Yes", "No"))
    assert answer_cue("answer") == ("Answer:", (" Yes", " No"))
    with pytest.raises(InstructionFileError, match="unknown instruction template"):
        render("chatml", "q", "")
