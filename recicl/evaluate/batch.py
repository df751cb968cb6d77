"""Batch evaluation: score sample Parquet with an actor pool of model replicas, report metrics.

Why an actor pool (Ray Data ``map_batches`` with a callable class): loading a model is the
expensive part, so each replica loads it once and then scores a stream of batches; the pool
scales from one CPU replica here to one replica per GPU on a cluster with the same code.

A model is named by an MLflow URI (``models:/recicl/3``, ``models:/recicl@champion``) or a local
folder: a packaged version folder, or a plain HF model (scored zero-shot with the configured
prompt). Reports are JSON + a PNG of AUC/UAUC by period, logged to a new MLflow evaluation run
tagged with the model name/version and the samples' hash, so that promotion can find them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from recicl.config import ModelConfig, PromptConfig, ReciclConfig
from recicl.data.item_stats import check_no_leak, item_stats_meta, read_item_stats
from recicl.data.samples_folder import SamplesFolder, sample_keys
from recicl.errors import ReciclError
from recicl.evaluate.metrics import metrics_by_period
from recicl.evaluate.plots import plot_by_period
from recicl.modeling.packaged import (
    load_packaged_model,
    read_version_manifest,
    require_samples_prompts,
)
from recicl.modeling.threads import apply_torch_threads
from recicl.prompts import PromptBuilder
from recicl.registry import (
    EVAL_KIND_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    PERIODS_TAG,
    SAMPLES_TAG,
    SUBSET_TAG,
    ModelSource,
    RegistryError,
    Workspace,
    resolve_model_uri,
)

log = logging.getLogger(__name__)

#: Seed of the evaluate.max_samples subset: fixed, so every version meets the same samples.
SUBSET_SEED = 0


def subset_name(max_samples: int | None) -> str:
    """The tag of an ``evaluate.max_samples`` subset. ``-ids``: drawn by sample id; evaluations
    cached from the older draw by row position (``capN``) are never compared with these."""
    return "all" if max_samples is None else f"cap{max_samples}-ids"


def subsample_per_period(table: pa.Table, cap: int | None, seed: int) -> pa.Table:
    """At most ``cap`` rows per period: those whose sample ids have the smallest seeded keys.

    The draw depends on the ids, not on row order, so two builds of the same samples (which may
    write their rows in different orders) and folders built with different demonstration
    policies (the same samples, other prompts) give the same ids: every model, policy and build
    is evaluated like with like. Rows keep their order in ``table``."""
    if cap is None:
        return table
    periods = table["period"].to_numpy()
    keys = sample_keys(table["sample_id"].to_numpy(zero_copy_only=False), seed)
    keep = []
    for period in np.unique(periods):
        rows = np.flatnonzero(periods == period)
        keep.append(rows[np.argsort(keys[rows], kind="stable")[:cap]])
    return table.take(pa.array(np.sort(np.concatenate(keep)))) if keep else table


class EvaluationError(ReciclError):
    """A model or sample set that cannot be evaluated as asked."""


def resolve_model(uri: str, workspace: Workspace) -> ModelSource:
    """:func:`recicl.registry.resolve_model_uri`, with its errors as evaluation errors."""
    try:
        return resolve_model_uri(uri, workspace)
    except RegistryError as error:
        raise EvaluationError(str(error)) from None


class ScoreBatches:
    """Ray Data callable class: one model replica scoring batches of sample rows."""

    def __init__(
        self,
        model_dir: str,
        catalog_path: str,
        prompt: dict[str, Any] | None,
        batch_size: int,
        threads: int,
        force_prompt: bool = False,
        model: dict[str, Any] | None = None,
    ) -> None:
        import pyarrow.parquet as pq
        import torch

        model_cfg = ModelConfig.model_validate(model) if model else None
        self.threads = apply_torch_threads(
            "scoring actor", model_cfg.num_threads if model_cfg else None, allotment=threads
        )
        prompt_cfg = PromptConfig.model_validate(prompt) if prompt else None
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.packaged = load_packaged_model(
            model_dir,
            prompt=prompt_cfg,
            model_cfg=model_cfg,
            device=device,
            force_prompt=force_prompt,
        )
        self.builder = PromptBuilder(
            self.packaged.prompt,
            pq.read_table(catalog_path),
            self.packaged.tokenizer,
            item_stats=self.packaged.prompt_item_stats(Path(catalog_path).parent),
        )
        self.answer_tokens = self.packaged.answer_columns()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:

        encoded = self.builder.encode_batch(batch)
        from recicl.modeling import score_prompts  # torch: in the replica only

        scores = score_prompts(
            self.packaged.model,
            self.packaged.tokenizer,
            list(encoded["input_ids"]),
            self.batch_size,
            answer_tokens=self.answer_tokens,
        )
        if self.packaged.blend is not None:  # train.blend: as serving scores the version
            from recicl.modeling.signals import blend_with, demo_labels

            demos = batch["demos"] if "demos" in batch else [None] * len(scores)
            labels = [demo_labels(d) for d in demos]
            llm = np.asarray(scores, dtype=np.float64)
            users, items = batch["user_id"], batch["item_id"]
            scores = blend_with(self.packaged.blend, llm, users, items, labels)
            # the LLM's own score too: one run then shows what the blend adds to that model
            extra = {"llm_score": llm}
        else:
            extra = {}
        return {
            "sample_id": np.asarray(batch["sample_id"]),
            "user_id": np.asarray(batch["user_id"]),
            "period": np.asarray(batch["period"]).astype(np.int16),
            "label": np.asarray(batch["label"]).astype(np.int8),
            "score": scores,
            "trimmed": encoded["trimmed"],
            "tokens": encoded["length"],
            "threads": np.full(len(scores), self.threads, dtype=np.int16),
            **extra,
        }


def run_scoring_pool(
    dataset: ray.data.Dataset,
    scorer: type,
    scorer_kwargs: dict[str, Any],
    *,
    total: int,
    replicas: int = 2,
    use_gpu: bool = False,
    label: str = "model",
) -> pa.Table:
    """Run ``scorer`` (a Ray Data callable class taking ``threads``, its share of this machine's
    cores and so its torch threads unless ``model.num_threads`` is set, besides ``scorer_kwargs``)
    over ``dataset`` on a pool of ``replicas`` model replicas; the scored rows, in no order.

    A progress bar on stderr counts the scored rows as batches come back: a real LLM on CPUs
    takes minutes per period, and a silent run looks hung.
    """
    import ray
    from tqdm.auto import tqdm

    # One period is often one file (one block): split it so every replica gets work, in batches
    # small enough (at least 8 per replica) for the progress bar to move every minute or so.
    rows_per_batch = max(16, min(256, math.ceil(total / (max(1, replicas) * 8))))
    dataset = dataset.repartition(max(max(2, replicas) * 4, math.ceil(total / rows_per_batch)))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = max(1, (os.cpu_count() or 1) // max(1, replicas))
    scored = dataset.map_batches(
        scorer,
        fn_constructor_kwargs={**scorer_kwargs, "threads": threads},
        batch_size=rows_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, replicas)),
        num_cpus=0 if use_gpu else max(0.5, min(1.0, cpus / max(1, replicas) / 2)),
        num_gpus=1 if use_gpu else 0,
    )
    tables = []
    with tqdm(
        total=total, unit="prompt", desc=f"scoring {label}", mininterval=2.0, dynamic_ncols=True
    ) as progress:
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            assert isinstance(batch, pa.Table)  # batch_format="pyarrow"
            if batch.num_rows:
                tables.append(batch)
                progress.update(batch.num_rows)
    if not tables:
        raise EvaluationError(f"nothing was scored with {label}: the input is empty")
    return pa.concat_tables(tables)


def _item_stats_until(
    model_dir: Path, folder: SamplesFolder, prompt: PromptConfig | None, force_prompt: bool
) -> int | None:
    """The last period counted by the item statistics a model's prompts show (None: none).
    The prompt is the caller's for a plain model folder or when forced, else the version's."""
    manifest = read_version_manifest(model_dir)
    own = manifest is not None and not force_prompt
    if own:
        assert manifest is not None
        shows = bool(manifest.prompt.get("item_stats") or manifest.prompt.get("item_codes"))
    else:
        shows = bool(prompt and prompt.shows_item_knowledge)
    if not shows:
        return None
    if own and manifest is not None and manifest.data.item_stats_until is not None:
        return manifest.data.item_stats_until
    return item_stats_meta(read_item_stats(folder.item_stats_path)).get("until_period")


def score_samples(
    model_dir: Path,
    samples_dir: Path,
    periods: list[int] | None,
    *,
    prompt: PromptConfig | None = None,
    replicas: int = 2,
    batch_size: int = 32,
    use_gpu: bool = False,
    samples: ray.data.Dataset | None = None,
    force_prompt: bool = False,
    label: str | None = None,
    model: ModelConfig | None = None,
) -> pa.Table:
    """Scores (sorted by sample_id) of the samples of ``periods``, or of ``samples`` when given,
    from a pool of ``replicas`` model replicas. ``force_prompt``: score with ``prompt`` even if
    the model folder records another one (see ``load_packaged_model``). ``model``: how to load a
    plain HF folder (dtype, attention; a packaged version loads as it was trained)."""
    folder = SamplesFolder.at(samples_dir)
    dataset = samples if samples is not None else folder.read_dataset(periods)
    total = dataset.count()
    if total == 0:
        raise EvaluationError(f"no samples to score in {samples_dir} for periods {periods}")
    until = _item_stats_until(model_dir, folder, prompt, force_prompt)
    if until is not None:
        scored = periods if samples is None and periods else dataset.unique("period")
        check_no_leak(until, [int(p) for p in scored], f"scoring {Path(model_dir).name}")
    return run_scoring_pool(
        dataset,
        ScoreBatches,
        {
            "model_dir": str(model_dir),
            "catalog_path": str(folder.require_catalog()),
            "prompt": prompt.model_dump(mode="json") if prompt else None,
            "batch_size": batch_size,
            "force_prompt": force_prompt,
            "model": model.model_dump(mode="json") if model else None,
        },
        total=total,
        replicas=replicas,
        use_gpu=use_gpu,
        label=label or Path(model_dir).name,
    ).sort_by("sample_id")


def report_from_scores(scores: pa.Table) -> dict[str, Any]:
    """Metrics per period + overall, and how often prompts had to be trimmed."""
    report = metrics_by_period(
        scores["period"].to_numpy(),
        scores["user_id"].to_numpy(zero_copy_only=False),
        scores["label"].to_numpy(),
        scores["score"].to_numpy(),
    )
    trimmed = scores["trimmed"].to_numpy(zero_copy_only=False)
    report["prompts"] = {
        "trimmed_fraction": float(trimmed.mean()) if len(trimmed) else 0.0,
        "mean_tokens": float(scores["tokens"].to_numpy().mean()) if len(trimmed) else 0.0,
    }
    if "llm_score" in scores.column_names:  # train.blend: the LLM's score before the blend
        report["llm_alone"] = metrics_by_period(
            scores["period"].to_numpy(),
            scores["user_id"].to_numpy(zero_copy_only=False),
            scores["label"].to_numpy(),
            scores["llm_score"].to_numpy(),
        )
    if "threads" in scores.column_names:  # what each scoring actor ran the model with
        report["torch_threads"] = sorted(set(scores["threads"].to_pylist()))
    return report


def evaluate_model(
    cfg: ReciclConfig,
    model_uri: str,
    samples_dir: str | Path,
    periods: list[int] | None = None,
    output: str | Path | None = None,
    *,
    log_to_mlflow: bool = True,
    workspace: Workspace | None = None,
) -> dict[str, Any]:
    """Score, compute metrics, write JSON + PNG, log an MLflow evaluation run; return the report.
    ``workspace``: the calling command's (resolved from ``cfg`` when evaluation is the command)."""
    from recicl.raycluster import ensure_ray

    workspace = workspace or Workspace.of(cfg)
    folder = SamplesFolder.at(samples_dir)
    folder.require_manifest()
    samples_dir = folder.root
    source = resolve_model(model_uri, workspace)
    require_samples_prompts(read_version_manifest(source.local_dir), source.label)
    ensure_ray(cfg.ray)
    started = time.perf_counter()
    cap = cfg.evaluate.max_samples
    subset = None
    if cap is not None:
        table = folder.read_table(periods)
        subset = ray.data.from_arrow(subsample_per_period(table, cap, SUBSET_SEED))
    scores = score_samples(
        source.local_dir,
        samples_dir,
        periods,
        samples=subset,
        prompt=cfg.prompt,
        replicas=cfg.evaluate.replicas,
        batch_size=cfg.evaluate.batch_size,
        use_gpu=cfg.evaluate.use_gpu,
        label=source.label,
        model=cfg.model,
    )
    report = report_from_scores(scores)
    report.update(
        {
            "model": {
                "uri": source.uri,
                "label": source.label,
                "name": source.name,
                "version": source.version,
            },
            "samples": {
                "dir": str(samples_dir),
                "hash": folder.content_id(),
                "periods": sorted({int(p) for p in report["periods"]}),
                "subset": subset_name(cap),
            },
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    output = (
        Path(output)
        if output
        else workspace.folder / "reports" / (f"eval-{source.label.replace('/', '-')}.json")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    plot = plot_by_period(
        {source.label: report},
        output.with_suffix(".png"),
        title=f"{source.label} on {samples_dir.name}",
    )
    report["report_path"], report["plot_path"] = str(output), str(plot)
    if log_to_mlflow:
        report["mlflow_run_id"] = log_evaluation(workspace, report, [output, plot])
    return report


def log_evaluation(workspace: Workspace, report: dict[str, Any], artifacts: list[Path]) -> str:
    """A new MLflow run holding the evaluation (metrics + report + plot), tagged for lookup."""
    mlc = workspace.client()
    experiment_id = workspace.ensure_experiment()
    model = report["model"]
    tags = {
        EVAL_KIND_TAG: "evaluation",
        MODEL_NAME_TAG: model["name"] or "",
        MODEL_VERSION_TAG: model["version"] or "",
        SAMPLES_TAG: report["samples"]["hash"],
        PERIODS_TAG: ",".join(map(str, report["samples"]["periods"])),
        SUBSET_TAG: report["samples"].get("subset", "all"),
        "mlflow.runName": f"eval-{model['label'].replace('/', '-')}",
    }
    run = mlc.create_run(experiment_id, tags=tags)
    run_id = run.info.run_id
    timestamp = int(time.time() * 1000)
    from mlflow.entities import Metric

    metrics = []
    scopes = [("", report["overall"])] + [(f"p{p}_", v) for p, v in report["periods"].items()]
    if "llm_alone" in report:  # a train.blend version: its LLM's own figures beside the blend's
        scopes.append(("llm_", report["llm_alone"]["overall"]))
    for scope, values in scopes:
        for key in ("auc", "uauc", "logloss"):
            if values.get(key) is not None:
                metrics.append(Metric(f"{scope}{key}", float(values[key]), timestamp, 0))
    mlc.log_batch(run_id, metrics=metrics)
    for path in artifacts:
        mlc.log_artifact(run_id, str(path))
    mlc.set_terminated(run_id)
    return run_id
