"""Score a model on an instruction-format Yes/No benchmark as it is published.

``recicl evaluate --samples FILE.json[l]`` reads such a file (a JSON array or one record a line;
format, templates and errors: :mod:`recicl.prompts.instructions`), renders each record with the
template it was written for, and scores P(Yes) from the logits of the two answer tokens at the
response position, exactly like recicl's own prompts (one forward pass per prompt, LM head at that
position only), on the same Ray Data actor pool of model replicas as sample evaluation. The
records are encoded by the same function training on instruction files uses
(``recicl train --instructions``), so a version is scored on the ids it was tuned on; without
``--template`` the template is the one the version was tuned with (its manifest), else ``alpaca``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recicl.config import ModelConfig, ReciclConfig
from recicl.evaluate.metrics import metrics_by_period
from recicl.modeling.packaged import load_packaged_model, read_version_manifest
from recicl.modeling.threads import apply_torch_threads
from recicl.prompts.instructions import (
    check_template,
    encode_instructions,
    instruction_answer_tokens,
    read_instruction_file,
)
from recicl.registry import (
    EVAL_KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    Workspace,
)

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = "alpaca"


def tuned_template(model_dir: str | Path) -> str | None:
    """The instruction template a version was tuned on (None: not tuned on instruction files)."""
    manifest = read_version_manifest(model_dir)
    return manifest.instruction_template if manifest is not None else None


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
        self.answer_tokens = self.packaged.answer_columns(
            instruction_answer_tokens(self.packaged.tokenizer, template)
        )
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokenizer = self.packaged.tokenizer
        ids = encode_instructions(tokenizer, self.template, batch["instruction"], batch["input"])
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
    template: str = DEFAULT_TEMPLATE,
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

    check_template(template)
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
    template: str | None = None,
    log_to_mlflow: bool = True,
) -> dict[str, Any]:
    """Score an instruction-format file; write and return the report (AUC, UAUC, LogLoss).
    ``template``: None = the one the version was tuned on, else ``alpaca``."""
    from recicl.evaluate.batch import resolve_model
    from recicl.raycluster import ensure_ray

    if template is not None:
        check_template(template)
    workspace = Workspace.of(cfg)
    path = Path(path).expanduser().resolve()
    table = read_instruction_file(path)
    source = resolve_model(model_uri, workspace)
    tuned = tuned_template(source.local_dir)
    template = template or tuned or DEFAULT_TEMPLATE
    if tuned and template != tuned:
        log.warning(
            "%s was tuned on the %s instruction template; scoring it with %s",
            source.label,
            tuned,
            template,
        )
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
            "file": {
                "path": str(path),
                "records": table.num_rows,
                "template": template,
                "tuned_template": tuned,
            },
            "prompts": {"mean_tokens": float(scores["tokens"].to_numpy().mean())},
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    output = (
        Path(output)
        if output
        else workspace.folder
        / "reports"
        / (f"instructions-{source.label.replace('/', '-')}-{path.stem}.json")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(output)
    if log_to_mlflow:
        report["mlflow_run_id"] = _log(workspace, report, output)
    return report


def _log(workspace: Workspace, report: dict[str, Any], artifact: Path) -> str:
    from mlflow.entities import Metric

    mlc = workspace.client()
    model = report["model"]
    run = mlc.create_run(
        workspace.ensure_experiment(),
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


__all__: Sequence[str] = ("evaluate_instructions", "score_instructions", "tuned_template")
