"""Training on instruction-format (TALLRec/Alpaca) files: the rows training encodes are the
prompts, answer position and answer ids `recicl evaluate --samples FILE.json` scores, and bad
files are one-line errors naming the record, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recicl.config import TrainConfig, build_config
from recicl.data.schema import CATALOG
from recicl.modeling.loading import ANSWER_COLUMNS
from recicl.prompts.instructions import (
    TEMPLATES,
    InstructionFileError,
    instruction_answer_tokens,
    render,
)
from recicl.train.sources import (
    InstructionSplits,
    TrainingData,
    answer_tokens,
    encode_records,
)

TITLES = [f"Film number {i}" for i in range(12)]
INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the "
    'target movie by answering "Yes." or "No.".'
)


def tallrec_records(count: int, seed: int = 0) -> list[dict[str, str]]:
    """TALLRec-style records whose answer is decided by the target title (learnable)."""
    rng = np.random.default_rng(seed)
    records = []
    for k in range(count):
        liked, disliked, target = (int(i) for i in rng.integers(len(TITLES), size=3))
        records.append(
            {
                "instruction": INSTRUCTION,
                "input": f'User Preference: "{TITLES[liked]}"\nUser Unpreference: '
                f'"{TITLES[disliked]}"\nWhether the user will like the target movie '
                f'"{TITLES[target]}"?',
                "output": "Yes." if target % 3 else "No.",
                "user_id": f"u{k % 5}",
            }
        )
    records[0]["output"], records[1]["output"] = "Yes.", "No."  # both answers, always
    return records


def write_tallrec(path: Path, count: int, seed: int = 0) -> Path:
    """A TALLRec-format file: a JSON array (.json) or one record a line (.jsonl)."""
    records = tallrec_records(count, seed)
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recicl.config import TinyModelSettings
    from recicl.modeling import init_tiny_model

    folder = tmp_path_factory.mktemp("tiny-instructions")
    rows = [{"item_id": str(i), "title": t, "attributes": []} for i, t in enumerate(TITLES)]
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG), folder / "catalog.parquet")
    return init_tiny_model(folder / "catalog.parquet", folder / "model", TinyModelSettings())


@pytest.mark.parametrize("template", TEMPLATES)
def test_training_rows_are_the_prompts_evaluation_scores(
    tiny: Path, tmp_path: Path, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training on a TALLRec-format file and evaluating it gives the same prompts as the
    evaluate path: the same ids (so the same text and the same answer position, the last id)
    and the same answer-token ids."""
    import recicl.modeling
    from recicl.evaluate.instructions import ScoreInstructions
    from recicl.modeling import load_tokenizer

    path = write_tallrec(tmp_path / "train.json", 6)
    tc = TrainConfig(instructions=str(path), instruction_template=template)
    splits = InstructionSplits.read(tc)
    batch = {
        name: splits.train[name].to_numpy(zero_copy_only=False)
        for name in splits.train.schema.names
    }
    cfg = build_config({"model": {"name_or_path": str(tiny)}})
    rows = encode_records(batch, cfg.model.model_dump_json(), template, seed=0)
    trained_ids = [list(ids) for ids in rows["input_ids"]]
    tokenizer = load_tokenizer(cfg.model)
    trained_answers = answer_tokens(tc, tokenizer)  # what the workers' loss and validation read

    seen: dict[str, object] = {}

    def capture(model, tok, ids, batch_size=32, *, answer_tokens):
        seen.update(ids=[list(row) for row in ids], answer_tokens=answer_tokens)
        return np.full(len(ids), 0.5)

    monkeypatch.setattr(recicl.modeling, "score_prompts", capture)
    scorer = ScoreInstructions(str(tiny), template, batch_size=4, threads=1)
    scorer(batch)
    assert seen["ids"] == trained_ids
    # the scorer's model computes only the answer rows (PackagedModel.answer_columns): cut to
    # exactly the tokens training supervises, read as columns [no, yes]
    assert seen["answer_tokens"] == scorer.answer_tokens == ANSWER_COLUMNS
    assert scorer.packaged.model.get_output_embeddings().answer_tokens == trained_answers
    assert trained_answers == instruction_answer_tokens(tokenizer, template)
    records = json.loads(path.read_text())
    for record, ids in zip(records, trained_ids, strict=True):
        text = render(template, record["instruction"], record["input"])
        assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids[1:]) == text
        # the answer position: the answer written after the prompt is the next token
        yes_word = "Yes" if template == "alpaca" else " Yes"
        answered = tokenizer(text + yes_word)["input_ids"]
        assert answered == [*ids, trained_answers.yes]
    assert rows["label"].tolist() == [1 if r["output"] == "Yes." else 0 for r in records]
    assert rows["length"].tolist() == [len(ids) for ids in trained_ids]
    assert all(len(d) == 0 for d in rows["demo_answers"])


def test_samples_runs_keep_recicls_answer_tokens(tiny: Path) -> None:
    from recicl.modeling import load_tokenizer
    from recicl.prompts import answer_token_ids

    tokenizer = load_tokenizer(build_config({"model": {"name_or_path": str(tiny)}}).model)
    assert answer_tokens(TrainConfig(), tokenizer) == answer_token_ids(tokenizer)


def test_splits_cap_by_seeded_hash_and_keep_the_validation_file(tmp_path: Path) -> None:
    train = write_tallrec(tmp_path / "train.jsonl", 40)
    val = write_tallrec(tmp_path / "val.json", 12, seed=1)
    tc = TrainConfig(instructions=str(train), val_instructions=str(val), max_train_samples=16)
    splits = InstructionSplits.read(tc)
    assert splits.train.num_rows == 16 and splits.val is not None and splits.val.num_rows == 12
    kept = splits.train["record"].to_pylist()
    assert kept == sorted(kept)  # file order
    smaller = InstructionSplits.read(tc.model_copy(update={"max_train_samples": 8}))
    assert set(smaller.train["record"].to_pylist()) <= set(kept)  # nested across caps
    cfg = build_config({"train": {"instructions": str(train), "val_instructions": str(val)}})
    data = TrainingData.of(cfg)
    assert data.count_rows(cfg.train) == (40, 12)
    assert data.periods == {"train_periods": [], "val_periods": []}
    assert data.content_id == InstructionSplits.read(cfg.train).content_id
    val.write_text(val.read_text() + "\n")  # other bytes, another identity
    assert TrainingData.of(cfg).content_id != data.content_id
    assert "records, alpaca template" in data.describe(cfg.train)


@pytest.mark.parametrize(
    ("records", "name", "message"),
    [
        ([{"input": "x", "output": "Yes."}], "t.json", "record 0: field 'instruction'"),
        ([{"instruction": "q", "output": "Yes."}, {"instruction": "q"}], "t.json",
         r"record 1: field 'output' is None; it must read 'Yes.' or 'No.'.*Fix or remove"),
        ([{"instruction": "q", "output": "No."}, {"instruction": "q", "output": "Maybe"}],
         "t.jsonl", "record 1: field 'output' is 'Maybe'"),
        ([], "t.json", "train.instructions .*t.json: no records"),
        (None, "t.jsonl", "train.instructions .*t.jsonl: no records"),
        ([{"instruction": "q", "output": "No."}], "t.csv",
         "train.instructions .*t.csv: not a .json or .jsonl file"),
    ],
)  # fmt: skip
def test_bad_training_files_are_named(tmp_path: Path, records, name: str, message: str) -> None:
    path = tmp_path / name
    if records is None:  # an empty file
        path.write_text("")
    elif name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records))
    else:
        path.write_text(json.dumps(records))
    with pytest.raises(InstructionFileError, match=message):
        TrainingData.of(build_config({"train": {"instructions": str(path)}}))


def test_bad_validation_file_names_its_key(tmp_path: Path) -> None:
    train = write_tallrec(tmp_path / "train.json", 8)
    cfg = build_config(
        {"train": {"instructions": str(train), "val_instructions": str(tmp_path / "v.json")}}
    )
    with pytest.raises(InstructionFileError, match=r"train.val_instructions .*v.json: no such"):
        TrainingData.of(cfg)


def test_cli_train_reports_a_bad_record_in_one_line(tiny: Path, tmp_path: Path) -> None:
    """Before Ray starts: exit code 2 and one red line naming the record, field and fix."""
    from typer.testing import CliRunner

    from recicl.cli import app

    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "q", "output": "Yes."}\n{"instruction": "q", "output": 1}\n')
    config = tmp_path / "config.yaml"
    config.write_text(f"workdir: {tmp_path / 'work'}\n")
    runner = CliRunner()
    args = ["train", "--config", str(config), "--model", str(tiny), "--instructions", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "bad.jsonl: 1 of 2 records cannot be used: record 1: field 'output' is 1" in errors[0]
    assert "Fix or remove them" in errors[0]
    both = runner.invoke(app, [*args, "--samples", str(tmp_path)])
    assert both.exit_code == 2 and "not both" in both.output


def test_validation_file_needs_a_training_file() -> None:
    from recicl.config import ConfigError

    with pytest.raises(ConfigError, match="val_instructions is set but instructions is not"):
        build_config({"train": {"val_instructions": "v.json"}})


def test_a_blend_needs_a_samples_folder() -> None:
    """train.blend is fitted on the count signals of sample rows; instruction files have none."""
    from recicl.config import ConfigError

    with pytest.raises(ConfigError, match="blend 'logistic' is fitted on a samples folder"):
        build_config({"train": {"instructions": "t.json", "blend": "logistic"}})
    assert build_config({"train": {"blend": "logistic"}}).train.blend == "logistic"


def test_evaluation_defaults_to_the_template_a_version_was_tuned_on(tmp_path: Path) -> None:
    from recicl.evaluate.instructions import tuned_template
    from recicl.modeling.packaged import VersionManifest

    manifest = VersionManifest(base_model="b", weights="lora", prompt={}, model={})
    assert tuned_template(manifest.write(tmp_path)) is None
    tuned = manifest.model_copy(update={"instruction_template": "answer"})
    assert tuned_template(tuned.write(tmp_path)) == "answer"
    assert tuned_template(tmp_path / "plain-hf-folder") is None


def test_a_samples_folder_is_read_as_before(tmp_path: Path) -> None:
    """The other source of TrainingData: periods, manifest hash, content id and capped counts
    (from the manifest: no Ray)."""
    from recicl.data.samples_folder import SamplesFolder
    from tests.integration.test_train import ROWS_PER_PERIOD, write_samples

    root = write_samples(tmp_path / "samples")
    cfg = build_config(
        {"train": {"samples_dir": str(root), "val_periods": [2], "max_val_samples": 10}}
    )
    data = TrainingData.of(cfg)
    assert data.periods == {"train_periods": [0, 1], "val_periods": [2]}
    assert data.manifest_hash == "fixturehash42" and data.instructions is None
    assert data.content_id == SamplesFolder.at(root).content_id()
    assert data.count_rows(cfg.train) == (2 * ROWS_PER_PERIOD, 10)
    assert data.describe(cfg.train) == "periods [0, 1] (128 samples), validation [2] (10)"


def test_sample_prompts_refuse_a_version_tuned_on_instruction_files() -> None:
    """Sample evaluation, promotion and serving go through this check before loading weights."""
    from recicl.modeling.packaged import (
        PackagedModelError,
        VersionManifest,
        require_samples_prompts,
    )

    on_samples = VersionManifest(base_model="b", weights="lora", prompt={}, model={})
    require_samples_prompts(on_samples, "recicl/1")  # no error
    require_samples_prompts(None, "a plain model folder")  # zero-shot: no error
    tuned = on_samples.model_copy(update={"instruction_template": "alpaca"})
    with pytest.raises(PackagedModelError, match=r"recicl/2 was tuned on instruction files"):
        require_samples_prompts(tuned, "recicl/2")
