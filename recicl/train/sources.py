"""What a run trains and validates on: a samples folder's periods, or instruction-format files.

:class:`TrainingData` is read and checked on the driver before Ray starts (a wrong period, a
leaking item statistic or a bad record is a one-line error, not a failed cluster job), counts the
rows the step plan needs, and makes the tokenized Ray Datasets the workers split. Both sources
give the same encoded rows (``input_ids``, ``demo_answers``, ``length``, ``label``,
``shuffle_key``), so the Ray Train loop, its strategies and its loss do not know which it got.

Instruction files (``train.instructions``, :mod:`recicl.prompts.instructions`): the records are
rendered and tokenized by :func:`~recicl.prompts.instructions.encode_instructions`, the function
``recicl evaluate --samples FILE.json`` scores with, and the loss reads the answer ids of
:func:`~recicl.prompts.instructions.instruction_answer_tokens` at the last position, where
evaluation reads them: a version is scored on exactly the prompts it was tuned on.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recicl.config import ModelConfig, ReciclConfig, TrainConfig
from recicl.data.item_stats import check_no_leak, item_stats_meta, read_item_stats
from recicl.data.samples_folder import SamplesFolder, sample_keys
from recicl.modeling import load_tokenizer
from recicl.prompts import AnswerTokens, answer_token_ids
from recicl.prompts.instructions import (
    encode_instructions,
    instruction_answer_tokens,
    read_instruction_file,
)
from recicl.train import data as train_data

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data


def answer_tokens(tc: TrainConfig, tokenizer: Any) -> AnswerTokens:
    """The [no, yes] ids the loss and the validation read: the instruction template's answers
    when tuning on instruction files, recicl's " Yes"/" No" after ``Answer:`` otherwise."""
    if tc.instructions:
        return instruction_answer_tokens(tokenizer, tc.instruction_template)
    return answer_token_ids(tokenizer)


@dataclass(frozen=True)
class InstructionSplits:
    """The records of ``train.instructions`` and ``train.val_instructions`` (capped by
    ``max_train_samples``/``max_val_samples``, drawn by a seeded hash of the record number)."""

    train: pa.Table
    val: pa.Table | None
    content_id: str  # digest of the files' bytes: what the version was tuned on

    @classmethod
    def read(cls, tc: TrainConfig) -> InstructionSplits:
        assert tc.instructions
        digest = hashlib.sha256()
        tables: list[pa.Table | None] = []
        for key, cap in (
            ("instructions", tc.max_train_samples),
            ("val_instructions", tc.max_val_samples),
        ):
            path = getattr(tc, key)
            if not path:
                tables.append(None)
                continue
            table = read_instruction_file(path, f"train.{key}")
            digest.update(Path(path).read_bytes() + b"\0")
            tables.append(_capped(table, cap, tc.seed))
        assert tables[0] is not None
        return cls(tables[0], tables[1], digest.hexdigest()[:16])


def _capped(table: pa.Table, cap: int | float | None, seed: int) -> pa.Table:
    """The records a cap keeps: the smallest seeded keys, in file order (nested across caps)."""
    keep = train_data.train_subset_size(cap, table.num_rows)
    if keep >= table.num_rows:
        return table
    order = np.argsort(sample_keys(table["record"].to_numpy(), seed), kind="stable")
    return table.take(np.sort(order[:keep]))


#: Per-process tokenizer of the encoding tasks (Ray reuses its worker processes: a tokenizer
#: loads in seconds, a batch encodes in milliseconds). One entry: one run's model.
_TOKENIZER: dict[str, Any] = {}


def encode_records(
    batch: dict[str, np.ndarray], model_settings: str, template: str, seed: int
) -> dict[str, np.ndarray]:
    """Ray Data UDF: instruction records → the encoded training rows (no demonstrations) and
    their ``shuffle_key``. ``model_settings``: JSON of the ``model`` config section."""
    if model_settings not in _TOKENIZER:
        _TOKENIZER.clear()
        model = ModelConfig.model_validate_json(model_settings)
        _TOKENIZER[model_settings] = load_tokenizer(model)
    ids = encode_instructions(
        _TOKENIZER[model_settings], template, batch["instruction"], batch["input"]
    )
    input_ids = np.empty(len(ids), dtype=object)
    demo_answers = np.empty(len(ids), dtype=object)
    for row, row_ids in enumerate(ids):
        input_ids[row] = np.asarray(row_ids, dtype=np.int32)
        demo_answers[row] = np.zeros(0, dtype=np.int32)
    return {
        "input_ids": input_ids,
        "demo_answers": demo_answers,
        "length": np.asarray([len(row) for row in ids], dtype=np.int32),
        "label": np.asarray(batch["label"]).astype(np.int8),
        "shuffle_key": sample_keys(np.asarray(batch["record"]), seed),
    }


def instruction_datasets(
    cfg: ReciclConfig, splits: InstructionSplits
) -> tuple[ray.data.Dataset, ray.data.Dataset | None]:
    """Tokenized (train, val) datasets of instruction records (shuffled and materialized as
    the samples' are: ``train.shuffle``, ``train.materialize_data``)."""
    import ray.data

    tc = cfg.train
    encode = functools.partial(
        encode_records,
        model_settings=cfg.model.model_dump_json(),
        template=tc.instruction_template,
        seed=tc.seed,
    )

    def encoded(table: pa.Table, shuffle: bool) -> ray.data.Dataset:
        part = ray.data.from_arrow(table).map_batches(
            encode, batch_format="numpy", batch_size=256, num_cpus=0.5
        )
        if shuffle:  # a seeded sort: the same order in every run and restart (see data.py)
            part = part.sort("shuffle_key")
        return part.materialize() if tc.materialize_data else part

    val = encoded(splits.val, shuffle=False) if splits.val is not None else None
    return encoded(splits.train, shuffle=tc.shuffle), val


@dataclass
class TrainingData:
    """One run's data, whichever the source (module doc); ``periods`` are empty for
    instruction files, ``instructions`` is None for a samples folder."""

    periods: dict[str, list[int]]
    manifest_hash: str  # the samples' config hash ("none" without one)
    content_id: str  # what the version is tuned on, by content
    samples: SamplesFolder | None = None
    item_stats: Path | None = None  # the statistics its prompts show (prompt.item_stats)
    instructions: InstructionSplits | None = None
    rows: tuple[int, int] = field(default=(0, 0))  # (train, val), from count_rows

    @classmethod
    def of(cls, cfg: ReciclConfig) -> TrainingData:
        """The configured source, read and checked (no Ray needed)."""
        tc = cfg.train
        if tc.instructions:
            splits = InstructionSplits.read(tc)
            val_rows = splits.val.num_rows if splits.val is not None else 0
            return cls(
                periods={"train_periods": [], "val_periods": []},
                manifest_hash="none",
                content_id=splits.content_id,
                instructions=splits,
                rows=(splits.train.num_rows, val_rows),
            )
        samples = SamplesFolder.from_config(cfg)
        manifest = samples.manifest()
        train_periods, val_periods = train_data.choose_periods(tc, samples.periods())
        item_stats = None
        if cfg.prompt.shows_item_knowledge:  # validating on counted periods reads the answers
            stats = read_item_stats(samples.item_stats_path)
            check_no_leak(
                item_stats_meta(stats).get("until_period"), val_periods, "train.val_periods"
            )
            item_stats = samples.item_stats_path
        return cls(
            periods={"train_periods": train_periods, "val_periods": val_periods},
            manifest_hash=manifest.config_hash if manifest else "none",
            content_id=samples.content_id(),
            samples=samples,
            item_stats=item_stats,
        )

    def count_rows(self, tc: TrainConfig) -> tuple[int, int]:
        """(train, val) rows after the caps. A samples folder without a manifest is counted
        with Ray Data, so Ray must be up."""
        if self.samples is not None:
            train, val = self.periods["train_periods"], self.periods["val_periods"]
            train_rows = train_data.training_rows(self.samples, tc, train, val)
            val_only = [p for p in val if p not in train]  # the capped ones
            val_rows = train_data.train_subset_size(
                tc.max_val_samples, self.samples.count_rows(val_only)
            ) + self.samples.count_rows([p for p in val if p in train])
            self.rows = (train_rows, val_rows)
        return self.rows

    def datasets(self, cfg: ReciclConfig) -> tuple[ray.data.Dataset, ray.data.Dataset | None]:
        """The tokenized (train, val) datasets; val is None without validation rows."""
        if self.instructions is not None:
            return instruction_datasets(cfg, self.instructions)
        assert self.samples is not None
        train, val = self.periods["train_periods"], self.periods["val_periods"]
        val = val if self.rows[1] else []
        return train_data.encoded_datasets(cfg, self.samples.root, train, val)

    def describe(self, tc: TrainConfig) -> str:
        """What the run trains on, for the driver's opening line."""
        train_rows, val_rows = self.rows
        if self.instructions is not None:
            val = f"{tc.val_instructions} ({val_rows})" if tc.val_instructions else "none"
            return (
                f"{tc.instructions} ({train_rows} records, {tc.instruction_template} template), "
                f"validation {val}"
            )
        return (
            f"periods {self.periods['train_periods']} ({train_rows} samples), validation "
            f"{self.periods['val_periods']} ({val_rows})"
        )
