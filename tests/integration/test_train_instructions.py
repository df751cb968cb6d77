"""`recicl train --instructions` end to end on CPU: a tiny TALLRec-format file, a tiny random
Llama + LoRA, real Ray Train (2 DDP workers), real MLflow; then `recicl evaluate` of the version
on the validation file picks the template the version records and scores what training
validated (the same prompts, answer position and answer ids)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from recicl.config import TinyModelSettings, build_config, load_config
from recicl.data.schema import CATALOG
from tests.unit.test_train_instructions import TITLES, write_tallrec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_on_a_tallrec_file_registers_its_template_and_evaluates(ray_local, tmp_path: Path):
    from recicl.cli import app
    from recicl.modeling import init_tiny_model
    from recicl.modeling.packaged import read_version_manifest
    from recicl.registry import Workspace, resolve_model_uri

    rows = [{"item_id": str(i), "title": t, "attributes": []} for i, t in enumerate(TITLES)]
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG), tmp_path / "catalog.parquet")
    settings = TinyModelSettings(hidden_size=64, num_layers=2, num_heads=4, vocab_size=600)
    model = init_tiny_model(tmp_path / "catalog.parquet", tmp_path / "tiny", settings)
    train_file = write_tallrec(tmp_path / "train.jsonl", 40)
    val_file = write_tallrec(tmp_path / "val.json", 16, seed=1)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workdir": str(tmp_path / "work"),
                "model": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "train": {"strategy": "ddp", "num_workers": 2, "batch_size": 4, "lr": 5e-3},
                "evaluate": {"replicas": 1},
                "mlflow": {"experiment": "test-instructions"},
            }
        )
    )
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(config),
            "--model",
            str(model),
            "--instructions",
            str(train_file),
            "--val-instructions",
            str(val_file),
            "--template",
            "answer",
            "--run-name",
            "tallrec",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "(40 records, answer template), validation" in trained.output
    assert "run_id=" in trained.output and "version=1" in trained.output

    cfg = load_config(config)
    workspace = Workspace.of(cfg)
    source = resolve_model_uri("models:/recicl/1", workspace)
    manifest = read_version_manifest(source.local_dir)
    assert manifest is not None and manifest.instruction_template == "answer"
    assert manifest.data.instructions == str(train_file.resolve())
    assert manifest.data.val_instructions == str(val_file.resolve())
    assert manifest.data.samples_dir is None and manifest.data.train_periods == []
    assert json.loads((source.local_dir / "template.json").read_text())["answer_cue"] == "Answer:"
    version = workspace.client().get_model_version("recicl", "1")
    assert version.tags["prompt_format"] == "instructions"
    assert version.tags["instruction_template"] == "answer"
    val_auc = float(version.tags["val_auc"])
    run = workspace.client().get_run(version.run_id)
    val_logloss = run.data.metrics["val_logloss"]

    report_path = tmp_path / "report.json"
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            "--config",
            str(config),
            "--model",
            "models:/recicl/1",
            "--samples",
            str(val_file),
            "--output",
            str(report_path),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_path.read_text())
    assert report["file"]["template"] == "answer" == report["file"]["tuned_template"]
    assert report["overall"]["count"] == 16
    # the prompts training validated on are the ones evaluation scores
    assert report["overall"]["auc"] == pytest.approx(val_auc, abs=1e-6)
    assert report["overall"]["logloss"] == pytest.approx(val_logloss, abs=1e-4)

    # recicl's own sample prompts are refused for it (evaluation, promotion and serving render
    # them): one line that says where it can be scored, nothing scored
    from recicl.data.pipeline import build_samples
    from recicl.data.synth import SynthSpec, write_synthetic

    write_synthetic(SynthSpec(users=12, events_per_user=8, seed=1), tmp_path / "log")
    samples_cfg = {"data": {"source": "parquet", "path": str(tmp_path / "log")},
                   "samples": {"periods": 2, "output": str(tmp_path / "samples")}}  # fmt: skip
    build_samples(build_config(samples_cfg))
    refused = runner.invoke(
        app,
        ["evaluate", "--config", str(config), "--model", "models:/recicl/1",
         "--samples", str(tmp_path / "samples")],
    )  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert "tuned on instruction files (template 'answer')" in refused.output
    assert "Traceback" not in refused.output
