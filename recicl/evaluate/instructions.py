"""Score a model on an instruction-format Yes/No benchmark as it is published.

TALLRec and the papers after it publish their recommendation test sets as Alpaca-style records::

    {"instruction": "Given the user's preference and unpreference, identify whether the user will
                     like the target movie by answering \\"Yes.\\" or \\"No.\\".",
     "input": "User Preference: \\"A\\", \\"B\\"\\nUser Unpreference: \\"C\\"\\nWhether the user
               will like the target movie \\"T\\"?",
     "output": "Yes."}

``recicl evaluate --samples FILE.json[l]`` reads such a file (a JSON array or one record a line),
renders each record with the template it was written for, and scores P(Yes) from the logits of
the two answer tokens at the response position, exactly like recicl's own prompts (one forward
pass per prompt, LM head at that position only), on the same Ray Data actor pool of model
replicas as sample evaluation. Templates:

* ``alpaca`` (default; what TALLRec trained and evaluated with): the Alpaca preamble,
  ``### Instruction:``, ``### Input:`` (left out when empty), ``### Response:`` and a newline;
  the answer tokens are those of "Yes"/"No" after that newline.
* ``answer``: ``instruction``, ``input`` and ``Answer:`` on lines of their own; the answer tokens
  are recicl's " Yes"/" No" after ``Answer:`` (what models tuned by recicl have learnt to
  answer after).

A record's ``output`` must read Yes or No (case, spaces and a final period ignored); anything else
is an error naming the record and the field, never a silently dropped row. An optional
``user_id`` field per record enables UAUC.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from recicl.config import ModelConfig, ReciclConfig
from recicl.errors import ReciclError
from recicl.evaluate.metrics import metrics_by_period
from recicl.modeling.packaged import load_packaged_model
from recicl.modeling.threads import apply_torch_threads
from recicl.prompts import ANSWER_CUE, answer_text, answer_token_ids
from recicl.registry import (
    EVAL_KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    client,
    ensure_experiment,
    resolve_tracking_uri,
)

InstructionTemplate = Literal["alpaca", "answer"]
TEMPLATES: tuple[str, ...] = ("alpaca", "answer")
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
ALPACA_CUE = "### Response:\n"
MAX_RECORD_ERRORS = 5


class InstructionFileError(ReciclError):
    """An instruction-format file that cannot be evaluated (syntax, fields, labels)."""


def is_instruction_file(path: str | Path) -> bool:
    """Whether ``--samples`` names an instruction-format file rather than a samples folder."""
    path = Path(path)
    return path.suffix.lower() in (".json", ".jsonl") and not path.is_dir()


def _label(output: Any) -> int | None:
    if not isinstance(output, str):
        return None
    word = output.strip().rstrip(".").strip().lower()
    return {"yes": 1, "no": 0}.get(word)


def read_instruction_file(path: str | Path) -> pa.Table:
    """Records → table (``record``, ``user_id``, ``instruction``, ``input``, ``label``).

    Raises :class:`InstructionFileError` listing up to five bad records by number and field.
    """
    path = Path(path)
    if not path.is_file():
        raise InstructionFileError(f"--samples {path}: no such file")
    text = path.read_text(encoding="utf-8")
    records: list[Any]
    try:
        if path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("["):
            records = [
                json.loads(line) for line in text.splitlines() if line.strip()
            ]  # one record a line
        else:
            records = json.loads(text)
    except json.JSONDecodeError as error:
        raise InstructionFileError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            "expected a JSON array of records or one JSON record per line"
        ) from None
    if not isinstance(records, list) or not records:
        raise InstructionFileError(f"{path}: no records (expected a non-empty JSON array)")
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
            f"{path}: {len(problems)} of {len(records)} records cannot be scored: {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + ". Fix or remove them (each needs 'instruction', optional 'input', and 'output' "
            "'Yes.'/'No.')"
        )
    if len(set(rows["label"])) < 2:
        raise InstructionFileError(
            f"{path}: every record answers {'Yes' if rows['label'][0] else 'No'}; AUC needs both"
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


def render(template: str, instruction: str, given: str) -> str:
    """The prompt text of one record, ending where the answer token goes."""
    if template == "alpaca":
        parts = [ALPACA_PREAMBLE, "", "### Instruction:", instruction.strip(), ""]
        if given.strip():
            parts += ["### Input:", given.strip(), ""]
        return "\n".join(parts) + "\n" + ALPACA_CUE
    if template == "answer":
        body = instruction.strip() + ("\n" + given.strip() if given.strip() else "")
        return body + "\nAnswer:"
    raise InstructionFileError(f"unknown instruction template {template!r}; use {TEMPLATES}")


def answer_cue(template: str) -> tuple[str, tuple[str, str]]:
    """(cue, (yes word, no word)) whose next-token logits the template is scored on."""

    if template == "alpaca":
        return ALPACA_CUE, ("Yes", "No")
    return ANSWER_CUE, (answer_text(1), answer_text(0))


class ScoreInstructions:
    """Ray Data callable class: one model replica scoring batches of instruction records."""

    def __init__(
        self,
        model_dir: str,
        template: str,
        batch_size: int,
        threads: int,
        model: dict[str, Any] | None = None,
    ) -> None:
        import torch

        model_cfg = ModelConfig.model_validate(model) if model else None
        apply_torch_threads(
            "scoring actor", model_cfg.num_threads if model_cfg else None, allotment=threads
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.packaged = load_packaged_model(model_dir, model_cfg=model_cfg, device=device)
        self.template = template
        cue, words = answer_cue(template)
        self.answer_tokens = answer_token_ids(self.packaged.tokenizer, cue, words)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:

        tokenizer = self.packaged.tokenizer
        texts = [
            render(self.template, str(i), str(g))
            for i, g in zip(batch["instruction"], batch["input"], strict=True)
        ]
        # the tokenizer's own special tokens (BOS) lead, as in recicl's prompts
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:  # a trailing EOS would hide the answer position
            ids = [row[:-1] if row and row[-1] == tokenizer.eos_token_id else row for row in ids]
        from recicl.modeling import score_prompts  # torch: in the replica only

        scores = score_prompts(
            self.packaged.model,
            tokenizer,
            ids,
            self.batch_size,
            answer_tokens=self.answer_tokens,
        )
        return {
            "record": np.asarray(batch["record"]),
            "user_id": np.asarray(batch["user_id"]),
            "label": np.asarray(batch["label"]).astype(np.int8),
            "score": scores,
            "tokens": np.asarray([len(row) for row in ids], dtype=np.int32),
        }


def score_instructions(
    model_dir: Path,
    table: pa.Table,
    *,
    template: str = "alpaca",
    replicas: int = 2,
    batch_size: int = 32,
    use_gpu: bool = False,
    label: str | None = None,
    model: dict[str, Any] | None = None,
) -> pa.Table:
    """P(Yes) of every record (sorted by record number) from a pool of model replicas.
    ``model``: the model config dump used to load a plain HF folder (dtype, attention)."""
    import ray.data

    from recicl.evaluate.batch import run_scoring_pool

    if template not in TEMPLATES:
        raise InstructionFileError(f"--template {template!r}: use one of {', '.join(TEMPLATES)}")
    dataset = ray.data.from_arrow(table)
    return run_scoring_pool(
        dataset,
        ScoreInstructions,
        {
            "model_dir": str(model_dir),
            "template": template,
            "batch_size": batch_size,
            "model": model,
        },
        total=table.num_rows,
        replicas=replicas,
        use_gpu=use_gpu,
        label=label or Path(model_dir).name,
    ).sort_by("record")


def evaluate_instructions(
    cfg: ReciclConfig,
    model_uri: str,
    path: str | Path,
    output: str | Path | None = None,
    *,
    template: str = "alpaca",
    log_to_mlflow: bool = True,
) -> dict[str, Any]:
    """Score an instruction-format file; write and return the report (AUC, UAUC, LogLoss)."""
    from recicl.evaluate.batch import resolve_model
    from recicl.raycluster import ensure_ray

    path = Path(path).expanduser().resolve()
    table = read_instruction_file(path)
    source = resolve_model(model_uri, cfg)
    ensure_ray(cfg.ray)
    started = time.perf_counter()
    scores = score_instructions(
        source.local_dir,
        table,
        template=template,
        replicas=cfg.evaluate.replicas,
        batch_size=cfg.evaluate.batch_size,
        use_gpu=cfg.evaluate.use_gpu,
        label=source.label,
        model=cfg.model.model_dump(mode="json"),
    )
    labels = scores["label"].to_numpy()
    report = metrics_by_period(
        np.zeros(len(labels), dtype=np.int64),
        scores["user_id"].to_numpy(zero_copy_only=False),
        labels,
        scores["score"].to_numpy(),
    )
    report.pop("periods")
    report.update(
        {
            "kind": "instructions",
            "model": {
                "uri": source.uri,
                "label": source.label,
                "name": source.name,
                "version": source.version,
            },
            "file": {"path": str(path), "records": table.num_rows, "template": template},
            "prompts": {"mean_tokens": float(scores["tokens"].to_numpy().mean())},
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    output = (
        Path(output)
        if output
        else Path(cfg.workdir)
        / "reports"
        / (f"instructions-{source.label.replace('/', '-')}-{path.stem}.json")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(output)
    if log_to_mlflow:
        report["mlflow_run_id"] = _log(cfg, report, output)
    return report


def _log(cfg: ReciclConfig, report: dict[str, Any], artifact: Path) -> str:
    from mlflow.entities import Metric

    tracking_uri = resolve_tracking_uri(cfg)
    mlc = client(tracking_uri)
    model = report["model"]
    run = mlc.create_run(
        ensure_experiment(cfg, tracking_uri),
        tags={
            EVAL_KIND_TAG: "instruction-evaluation",
            MODEL_NAME_TAG: model["name"] or "",
            MODEL_VERSION_TAG: model["version"] or "",
            "recicl.instruction_file": report["file"]["path"],
            "recicl.instruction_template": report["file"]["template"],
            "mlflow.runName": f"instructions-{model['label'].replace('/', '-')}",
        },
    )
    stamp = int(time.time() * 1000)
    values = report["overall"]
    metrics = [
        Metric(key, float(values[key]), stamp, 0)
        for key in ("auc", "uauc", "logloss")
        if values.get(key) is not None
    ]
    mlc.log_batch(run.info.run_id, metrics=metrics)
    mlc.log_artifact(run.info.run_id, str(artifact))
    mlc.set_terminated(run.info.run_id)
    return run.info.run_id


__all__: Sequence[str] = (
    "InstructionFileError",
    "evaluate_instructions",
    "is_instruction_file",
    "read_instruction_file",
    "render",
    "score_instructions",
)
