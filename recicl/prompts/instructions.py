"""Instruction-format (Alpaca/TALLRec) Yes/No records: reading, rendering, encoding.

TALLRec and the papers after it publish their recommendation sets as Alpaca-style records::

    {"instruction": "Given the user's preference and unpreference, identify whether the user will
                     like the target movie by answering \\"Yes.\\" or \\"No.\\".",
     "input": "User Preference: \\"A\\", \\"B\\"\\nUser Unpreference: \\"C\\"\\nWhether the user
               will like the target movie \\"T\\"?",
     "output": "Yes."}

Why here, below training and evaluation: ``recicl train --instructions`` tunes on such files and
``recicl evaluate --samples FILE.json`` scores them, and a model must be scored on exactly the
token ids it was tuned on. Both read records with :func:`read_instruction_file`, encode them with
:func:`encode_instructions` and read the answer logits of :func:`instruction_answer_tokens`, so
the rendered text, the answer position (the last id) and the answer ids are the same by
construction. Templates:

* ``alpaca`` (default; what TALLRec trained and evaluated with): the Alpaca preamble,
  ``### Instruction:``, ``### Input:`` (left out when empty), ``### Response:`` and a newline;
  the answer tokens are those of "Yes"/"No" after that newline.
* ``answer``: ``instruction``, ``input`` and ``Answer:`` on lines of their own; the answer tokens
  are recicl's " Yes"/" No" after ``Answer:`` (what models tuned on recicl's samples have learnt
  to answer after).

A record's ``output`` must read Yes or No (case, spaces and a final period ignored); anything else
is an error naming the record and the field, never a silently dropped row. An optional
``user_id`` field per record enables UAUC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from recicl.errors import ReciclError
from recicl.prompts.answers import AnswerTokens, answer_token_ids
from recicl.prompts.wording import ANSWER_CUE, answer_text

InstructionTemplate = Literal["alpaca", "answer"]
TEMPLATES: tuple[str, ...] = ("alpaca", "answer")
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
ALPACA_CUE = "### Response:\n"
MAX_RECORD_ERRORS = 5
SUFFIXES = (".json", ".jsonl")


class InstructionFileError(ReciclError):
    """An instruction-format file that cannot be used (path, syntax, fields, labels)."""


def is_instruction_file(path: str | Path) -> bool:
    """Whether ``path`` names an instruction-format file rather than a samples folder."""
    path = Path(path)
    return path.suffix.lower() in SUFFIXES and not path.is_dir()


def _label(output: Any) -> int | None:
    if not isinstance(output, str):
        return None
    word = output.strip().rstrip(".").strip().lower()
    return {"yes": 1, "no": 0}.get(word)


def _load_records(path: Path, option: str) -> list[Any]:
    """The file's records (a JSON array, or one JSON record a line)."""
    if not is_instruction_file(path):
        raise InstructionFileError(
            f"{option} {path}: not a .json or .jsonl file; give a JSON array of instruction "
            "records or a JSON-lines file with one record a line"
        )
    if not path.is_file():
        raise InstructionFileError(f"{option} {path}: no such file")
    text = path.read_text(encoding="utf-8")
    records: list[Any]
    try:
        if path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("["):
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as error:
        raise InstructionFileError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            "expected a JSON array of records or one JSON record per line"
        ) from None
    if not isinstance(records, list) or not records:
        raise InstructionFileError(
            f"{option} {path}: no records; expected a non-empty JSON array or one JSON record "
            "per line"
        )
    return records


def read_instruction_file(path: str | Path, option: str = "--samples") -> pa.Table:
    """Records → table (``record``, ``user_id``, ``instruction``, ``input``, ``label``).

    ``option``: the flag or config key that named the file, for the errors. Raises
    :class:`InstructionFileError` listing up to five bad records by number and field.
    """
    path = Path(path)
    records = _load_records(path, option)
    problems: list[str] = []
    rows: dict[str, list[Any]] = {
        "record": [],
        "user_id": [],
        "instruction": [],
        "input": [],
        "label": [],
    }
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            problems.append(f"record {number}: not a JSON object")
            continue
        instruction, given, output = (record.get(k) for k in ("instruction", "input", "output"))
        label = _label(output)
        if not isinstance(instruction, str) or not instruction.strip():
            problems.append(f"record {number}: field 'instruction' is missing or not a string")
        elif given is not None and not isinstance(given, str):
            problems.append(f"record {number}: field 'input' must be a string (or absent)")
        elif label is None:
            problems.append(
                f"record {number}: field 'output' is {output!r}; it must read 'Yes.' or 'No.'"
            )
        else:
            rows["record"].append(number)
            rows["user_id"].append(str(record.get("user_id", f"record-{number}")))
            rows["instruction"].append(instruction)
            rows["input"].append(given or "")
            rows["label"].append(label)
    if problems:
        shown = "; ".join(problems[:MAX_RECORD_ERRORS])
        more = len(problems) - MAX_RECORD_ERRORS
        raise InstructionFileError(
            f"{path}: {len(problems)} of {len(records)} records cannot be used: {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + ". Fix or remove them (each needs 'instruction', optional 'input', and 'output' "
            "'Yes.'/'No.')"
        )
    if len(set(rows["label"])) < 2:
        raise InstructionFileError(
            f"{path}: every record answers {'Yes' if rows['label'][0] else 'No'}; AUC and tuning "
            "need both answers: add records answering the other way"
        )
    return pa.table(
        {
            "record": pa.array(rows["record"], pa.int64()),
            "user_id": pa.array(rows["user_id"], pa.string()),
            "instruction": pa.array(rows["instruction"], pa.string()),
            "input": pa.array(rows["input"], pa.string()),
            "label": pa.array(rows["label"], pa.int8()),
        }
    )


def check_template(template: str, option: str = "--template") -> str:
    """``template`` when it is one of :data:`TEMPLATES`, else a one-line error naming ``option``."""
    if template not in TEMPLATES:
        raise InstructionFileError(
            f"{option}: unknown instruction template {template!r}; use one of "
            f"{', '.join(TEMPLATES)}"
        )
    return template


def render(template: str, instruction: str, given: str) -> str:
    """The prompt text of one record, ending where the answer token goes."""
    check_template(template)
    if template == "alpaca":
        parts = [ALPACA_PREAMBLE, "", "### Instruction:", instruction.strip(), ""]
        if given.strip():
            parts += ["### Input:", given.strip(), ""]
        return "\n".join(parts) + "\n" + ALPACA_CUE
    body = instruction.strip() + ("\n" + given.strip() if given.strip() else "")
    return body + "\n" + ANSWER_CUE


def answer_cue(template: str) -> tuple[str, tuple[str, str]]:
    """(cue, (yes word, no word)) whose next-token logits the template is scored on."""
    check_template(template)
    if template == "alpaca":
        return ALPACA_CUE, ("Yes", "No")
    return ANSWER_CUE, (answer_text(1), answer_text(0))


def instruction_answer_tokens(tokenizer: Any, template: str) -> AnswerTokens:
    """The [no, yes] ids a model reads after ``template``'s cue, in training and scoring."""
    cue, words = answer_cue(template)
    return answer_token_ids(tokenizer, cue, words)


def encode_instructions(
    tokenizer: Any, template: str, instructions: Iterable[Any], inputs: Iterable[Any]
) -> list[list[int]]:
    """Token ids of each rendered record, the answer position being the last id.

    The tokenizer's own leading special tokens (BOS) come first, as in recicl's prompts; a
    trailing EOS is cut, since it would hide the answer position. Whole-text tokenization (not
    per-piece as the sample builder does) because that is how the published records are read.
    """
    texts = [render(template, str(i), str(g)) for i, g in zip(instructions, inputs, strict=True)]
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [
        list(row[:-1]) if eos is not None and row and row[-1] == eos else list(row) for row in ids
    ]


def describe_template(template: str) -> dict[str, Any]:
    """The wording of an instruction template (``template.json`` of a version tuned on one)."""
    cue, (yes, no) = answer_cue(template)
    return {
        "kind": "instructions",
        "template": template,
        "preamble": ALPACA_PREAMBLE if template == "alpaca" else "",
        "answer_cue": cue,
        "answers": {"yes": yes, "no": no},
    }
