"""Driver side of training: resolve the config, plan the steps, start the MLflow run, assemble
and run the Ray Train ``TorchTrainer``, then log the adapter and register a model version.

Resume semantics (Ray Train V2): a run is identified by ``train.run_name`` under
``train.storage_path``. Running again with the same name continues from that run's latest
checkpoint (``ray.train.get_checkpoint()`` in every worker) and keeps logging into the same MLflow
run; the step counter continues. Worker failures during a run restart the worker group up to
``train.max_failures`` times, also from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from recicl import registry
from recicl.config import ConfigError, ReciclConfig, build_config
from recicl.data.item_stats import item_stats_meta, read_item_stats
from recicl.data.samples_folder import configured_samples_dir
from recicl.errors import ReciclError
from recicl.modeling import load_tokenizer
from recicl.modeling import packaged as version
from recicl.modeling.importing import ensure_base_model
from recicl.modeling.signals import SignalModel, fit_signal_model
from recicl.prompts import template_for
from recicl.prompts.instructions import describe_template
from recicl.train.contract import (
    FAULT_DELAY_ENV,
    FAULT_MARKER_ENV,
    FAULT_STEP_ENV,
    TRAIN_DATASET,
    VAL_DATASET,
    TrainPlan,
)
from recicl.train.loop import train_loop_per_worker
from recicl.train.sources import TrainingData

log = logging.getLogger(__name__)

#: Local base models up to this size are copied into the registered version (tiny models), so
#: that a version stays loadable after the folder it was trained from is gone.
BASE_COPY_LIMIT_BYTES = 64 * 1024 * 1024


class TrainError(ReciclError):
    """Training did not finish (workers failed more often than ``train.max_failures``)."""


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_id: str | None  # MLflow run
    version: str | None  # registered model version (None when registration is off)
    registered_model: str | None
    metrics: dict[str, Any]  # last metrics reported with a checkpoint (step, epoch, val_auc, ...)
    checkpoint_path: str | None  # latest Ray Train checkpoint (storage path/URI)
    run_name: str
    storage_path: str
    model_dir: str | None  # <workdir>/trained/<run_name>: the logged model folder, locally
    plan: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _is_uri(path: str) -> bool:
    return "://" in path


def resolve_train_config(cfg: ReciclConfig, workspace: registry.Workspace) -> ReciclConfig:
    """Absolute paths (workers may run elsewhere / in another cwd), defaults filled in: run
    name, storage path, samples folder, MLflow tracking URI (the command's ``workspace``)."""

    raw = cfg.model_dump(mode="json")
    workdir = workspace.folder
    raw["workdir"] = str(workdir)
    model_path = cfg.model.name_or_path
    if model_path and Path(model_path).expanduser().exists():
        raw["model"]["name_or_path"] = str(Path(model_path).expanduser().resolve())
    tc = raw["train"]
    source = configured_samples_dir(cfg)
    if source:
        tc["samples_dir"] = source if _is_uri(source) else str(Path(source).expanduser().resolve())
    for key in ("instructions", "val_instructions"):  # local files, read by the driver
        if tc[key]:
            tc[key] = str(Path(tc[key]).expanduser().resolve())
    storage = cfg.train.storage_path or str(workdir / "ray_results")
    tc["storage_path"] = storage if _is_uri(storage) else str(Path(storage).expanduser().resolve())
    tc["run_name"] = cfg.train.run_name or datetime.now().strftime("train-%Y%m%d-%H%M%S")
    raw["mlflow"]["tracking_uri"] = workspace.tracking_uri
    return build_config(raw, "resolved training config")


def plan_steps(cfg: ReciclConfig, train_rows: int, val_rows: int) -> dict[str, int]:
    """Micro-batches and optimizer steps per epoch (per rank) and in total."""
    tc = cfg.train
    rows_per_rank = train_rows // tc.num_workers  # streaming_split(equal=True) drops the rest
    micro = math.ceil(rows_per_rank / tc.batch_size) if rows_per_rank else 0
    steps_per_epoch = micro // tc.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{train_rows} training samples are too few for {tc.num_workers} workers x "
            f"batch_size {tc.batch_size} x grad_accum {tc.grad_accum}: not one optimizer step "
            "per epoch; lower them or add training data"
        )
    total = tc.max_steps if tc.max_steps is not None else tc.epochs * steps_per_epoch
    total += sum(stage.max_steps for stage in tc.stages)  # later stages continue the same run
    return {
        "total_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "micro_batches_per_epoch": steps_per_epoch * tc.grad_accum,
        "train_rows": train_rows,
        "val_rows": val_rows,
    }


def _storage_has_run(storage_path: str, run_name: str) -> bool:
    import pyarrow.fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(storage_path)
    except (pafs.ArrowInvalid, ValueError):
        filesystem, root = pafs.LocalFileSystem(), storage_path
    info = filesystem.get_file_info(f"{root.rstrip('/')}/{run_name}")
    return info.type != pafs.FileType.NotFound


def _start_mlflow_run(
    cfg: ReciclConfig,
    workspace: registry.Workspace,
    plan: dict[str, Any],
    periods: dict[str, list[int]],
    manifest_hash: str,
) -> str:
    """New MLflow run (params = whole config + plan), or the run of the same Ray run name when
    resuming."""

    uri = workspace.tracking_uri
    assert cfg.train.run_name is not None and cfg.train.storage_path
    experiment_id = workspace.ensure_experiment()
    mlc = workspace.client()
    if _storage_has_run(cfg.train.storage_path, cfg.train.run_name):
        tags = {registry.RUN_NAME_TAG: cfg.train.run_name}
        existing = registry.find_run(uri, experiment_id, tags)
        if existing:
            mlc.update_run(existing, status="RUNNING")
            mlc.set_tag(existing, "recicl.resumed", datetime.now().isoformat(timespec="seconds"))
            log.info("resuming MLflow run %s of Ray run %s", existing, cfg.train.run_name)
            return existing
    run = mlc.create_run(
        experiment_id,
        run_name=cfg.train.run_name,
        tags={
            registry.RUN_NAME_TAG: cfg.train.run_name,
            "recicl.base_model": str(cfg.model.name_or_path),
            "recicl.strategy": cfg.train.strategy,
            "recicl.data_manifest_hash": manifest_hash,
        },
    )
    params = registry.flatten(cfg.redacted_dump())  # the registry's readers see params
    params.update(registry.flatten({"plan": plan, "periods": periods}))
    registry.log_params(uri, run.info.run_id, params)
    return run.info.run_id


def _worker_env(cfg: ReciclConfig) -> dict[str, str]:
    """Env of the training workers. (Ray Train may chdir them into the run folder; every path
    they receive is absolute, see resolve_train_config.)"""
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        # Ray 2.60's Train workers replace `print` with a logger call that also prints whenever
        # sys.stdout is not sys.__stdout__, and in a Ray worker it never is (Ray wraps it): every
        # line (our step lines, DeepSpeed's tables) reached the console twice. Plain print: once.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    if not cfg.train.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    for key in (FAULT_STEP_ENV, FAULT_MARKER_ENV, FAULT_DELAY_ENV):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _build_model_dir(
    cfg: ReciclConfig,
    checkpoint: Any,
    output: Path,
    *,
    metrics: dict[str, Any],
    periods: dict[str, list[int]],
    manifest_hash: str,
    samples_content_id: str,
    item_stats: Path | None = None,
    blend: SignalModel | None = None,
) -> Path:
    """Assemble the folder that becomes the registered version (layout and manifest:
    :mod:`recicl.modeling.packaged`) from the final checkpoint."""
    import pyarrow.fs as pafs

    from recicl.train.strategies import ADAPTER_DIR as CHECKPOINT_WEIGHTS

    weights_dir = output / version.ADAPTER_DIR
    weights_dir.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_WEIGHTS}",
        str(weights_dir),
        source_filesystem=checkpoint.filesystem,
        destination_filesystem=pafs.LocalFileSystem(),
    )
    weights = "lora" if (weights_dir / "adapter_config.json").is_file() else "full"
    load_tokenizer(cfg.model).save_pretrained(str(output / version.TOKENIZER_DIR))
    base_artifact = None
    base = Path(str(cfg.model.name_or_path))
    if weights == "lora" and base.is_dir() and _dir_size(base) <= BASE_COPY_LIMIT_BYTES:
        shutil.copytree(base, output / version.BASE_DIR)
        base_artifact = version.BASE_DIR
    stats_until = None
    if item_stats is not None:  # the version carries the statistics it was tuned with
        shutil.copyfile(item_stats, output / version.ITEM_STATS_FILE)
        stats_until = item_stats_meta(read_item_stats(item_stats)).get("until_period")
    if blend is not None:  # loaded with the version: evaluation and serving blend with it
        blend.save(output / version.BLEND_DIR)
    instructions = cfg.train.instructions  # tuned on instruction files, not samples
    version.VersionManifest(
        base_model=cfg.model.name_or_path,
        base_model_artifact=base_artifact,
        # a local base the version does not carry, by name and checksum: another node has
        # its own copy at another path
        base_ref=version.BaseModelRef.of(cfg.model)
        if weights == "lora" and not base_artifact
        else None,
        weights=weights,
        prompt=cfg.prompt.model_dump(mode="json"),
        model=cfg.model.model_dump(mode="json"),
        train=cfg.train.model_dump(mode="json"),
        data=version.VersionData(
            samples_dir=None if instructions else cfg.train.samples_dir,
            instructions=instructions,
            val_instructions=cfg.train.val_instructions,
            manifest_hash=manifest_hash,
            samples_content_id=samples_content_id,
            item_stats_until=stats_until,
            **periods,
        ),
        instruction_template=cfg.train.instruction_template if instructions else None,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        ray_checkpoint=checkpoint.path,
    ).write(
        output,
        config=cfg.redacted_dump(),  # a version is read by whoever can read the registry
        # the exact wording the adapter was tuned on (derived from prompt.domain/format)
        template=describe_template(cfg.train.instruction_template)
        if instructions
        else dataclasses.asdict(template_for(cfg.prompt)),
    )
    return output


def fit_blend(cfg: ReciclConfig, data: TrainingData) -> SignalModel | None:
    """``train.blend``'s signal model, fitted on every sample of the training periods (the
    version's frozen knowledge: what the LLM was tuned on, before any evaluated period)."""
    if cfg.train.blend == "none" or data.samples is None:
        return None
    periods = data.periods["train_periods"]
    rows = data.samples.read_table(periods)
    labels = set(rows["label"].unique().to_pylist()) if rows.num_rows else set()
    if len(labels) < 2:
        raise ConfigError(
            f"train.blend {cfg.train.blend!r}: the training periods {periods} hold "
            f"{rows.num_rows} samples with labels {sorted(labels)}; a classifier needs likes "
            "and dislikes (choose other train.train_periods, or set train.blend: none)"
        )
    started = time.perf_counter()
    model = fit_signal_model(cfg.train.blend, rows, seed=cfg.train.seed)
    print(
        f"[recicl] blend: {cfg.train.blend} on {rows.num_rows} training samples "
        f"({time.perf_counter() - started:.1f}s)",
        flush=True,
    )
    return model


@dataclass
class _Fitted:
    result: Any  # ray.train.Result
    seconds: float


def _fit(cfg: ReciclConfig, plan: TrainPlan, data: TrainingData) -> _Fitted:
    """Tokenize (Ray Data) and run the TorchTrainer."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig

    # Ray Train V2 (the default, which ray.train re-exports): named here because resume, worker
    # env vars and checkpoint folder names rely on V2, and type checkers see only V1 through
    # ray.train's conditional re-exports.
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    tc = cfg.train
    tokenize_started = time.perf_counter()
    train_ds, val_ds = data.datasets(cfg)
    datasets: dict[str, ray.data.Dataset | Callable[[], ray.data.Dataset]] = {
        TRAIN_DATASET: train_ds
    }
    if val_ds is not None:
        datasets[VAL_DATASET] = val_ds
    if tc.materialize_data:
        print(
            f"[recicl] tokenized {plan.train_rows + plan.val_rows} samples in "
            f"{time.perf_counter() - tokenize_started:.1f}s",
            flush=True,
        )
    execution = ray.data.ExecutionOptions(preserve_order=True)  # same order, same run
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "plan": asdict(plan)},
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers,
            use_gpu=tc.use_gpu,
            resources_per_worker={"CPU": tc.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=tc.run_name,
            storage_path=tc.storage_path,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            worker_runtime_env={"env_vars": _worker_env(cfg)},
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=execution),
    )
    fit_started = time.perf_counter()
    result = trainer.fit()
    return _Fitted(result, time.perf_counter() - fit_started)


def train(cfg: ReciclConfig, *, workspace: registry.Workspace | None = None) -> TrainResult:
    """Tune ``cfg.model`` on ICL samples (or ``train.instructions`` files) with Ray Train; log
    to MLflow and register a version.
    ``workspace``: the calling command's (resolved from ``cfg`` when training is the command).

    Returns a :class:`TrainResult`; raises :class:`~recicl.config.ConfigError` for unusable
    settings/data and :class:`TrainError` when the workers fail beyond ``max_failures``.
    """
    import ray.data
    import ray.train

    from recicl.raycluster import ensure_ray

    started = time.perf_counter()
    if not cfg.model.name_or_path:
        raise ConfigError(
            "model.name_or_path is not set: give a Hugging Face id or a local model folder "
            "(`recicl model init-tiny` makes a small one)"
        )

    ensure_base_model(cfg.model)
    workspace = workspace or registry.Workspace.of(cfg)
    cfg = resolve_train_config(cfg, workspace)
    if cfg.train.init_from:  # before Ray starts: a wrong version is a one-line error
        cfg = warm_start_config(cfg, workspace)
    tc = cfg.train
    assert tc.run_name and tc.storage_path
    data = TrainingData.of(cfg)  # samples or instruction files, checked before Ray starts
    blend = fit_blend(cfg, data)  # seconds; before the tuning, so bad data stops the run early
    periods = data.periods
    ensure_ray(cfg.ray)
    steps = plan_steps(cfg, *data.count_rows(tc))

    run_id = None
    if cfg.mlflow.tracking_uri:
        run_id = _start_mlflow_run(cfg, workspace, steps, periods, data.manifest_hash)
    plan = TrainPlan(
        **steps, tracking_uri=cfg.mlflow.tracking_uri, run_id=run_id, run_name=tc.run_name
    )
    print(
        f"[recicl] training {cfg.model.name_or_path} with {tc.strategy}"
        + (f" ZeRO-{tc.zero_stage}" if tc.strategy == "deepspeed" else "")
        + f" on {tc.num_workers} {'GPU' if tc.use_gpu else 'CPU'} workers: {data.describe(tc)}; "
        f"{steps['total_steps']} steps ({steps['steps_per_epoch']}/epoch); run {tc.run_name}"
        + (f", MLflow run {run_id}" if run_id else ""),
        flush=True,
    )

    data_context = ray.data.DataContext.get_current()
    progress_bars = data_context.enable_progress_bars
    data_context.enable_progress_bars = False  # steps are logged instead; restored below
    try:
        result = _fit(cfg, plan, data)
    except ray.train.TrainingFailedError as error:
        if run_id and cfg.mlflow.tracking_uri:
            registry.client(cfg.mlflow.tracking_uri).set_terminated(run_id, status="FAILED")
        raise TrainError(
            f"training run {tc.run_name} failed (after up to {tc.max_failures} restarts): "
            f"{error}. Rerun with --run-name {tc.run_name} to resume from its last checkpoint."
        ) from error
    finally:
        data_context.enable_progress_bars = progress_bars
    fit_seconds = result.seconds
    metrics = dict(result.result.metrics or {})
    checkpoint = result.result.checkpoint
    version = None
    model_dir = None
    if checkpoint is not None:
        model_dir, version = _package_and_register(
            cfg,
            workspace,
            checkpoint,
            run_id,
            metrics=metrics,
            periods=periods,
            manifest_hash=data.manifest_hash,
            samples_content_id=data.content_id,
            item_stats=data.item_stats,
            blend=blend,
        )
    if run_id and cfg.mlflow.tracking_uri:
        mlc = registry.client(cfg.mlflow.tracking_uri)
        mlc.log_metric(run_id, "fit_seconds", fit_seconds)
        mlc.log_metric(run_id, "train_seconds", time.perf_counter() - started)
        mlc.set_terminated(run_id, status="FINISHED")
    seconds = time.perf_counter() - started
    print(
        f"[recicl] done in {seconds:.1f}s (fit {fit_seconds:.1f}s): step {metrics.get('step')}, "
        f"val_auc {metrics.get('val_auc', 'n/a')}; MLflow run {run_id}, "
        f"{cfg.mlflow.registered_model} version {version}",
        flush=True,
    )
    return TrainResult(
        run_id=run_id,
        version=version,
        registered_model=cfg.mlflow.registered_model if version else None,
        metrics=metrics,
        checkpoint_path=checkpoint.path if checkpoint is not None else None,
        run_name=tc.run_name,
        storage_path=tc.storage_path,
        model_dir=str(model_dir) if model_dir else None,
        plan=asdict(plan),
        seconds=seconds,
    )


def warm_start_config(cfg: ReciclConfig, workspace: registry.Workspace) -> ReciclConfig:
    """The config the workers get for ``train.init_from``: the version resolved to a local
    folder whose LoRA adapter they load trainable, after checking that it was tuned from this
    config's base with this LoRA shape, so a warm start never silently trains something else."""
    source = registry.resolve_model_uri(str(cfg.train.init_from), workspace)
    manifest = version.read_version_manifest(source.local_dir)
    where = f"train.init_from {cfg.train.init_from}"
    if manifest is None:
        raise ConfigError(f"{where}: {source.local_dir} is not a recicl version folder")
    if not same_base(manifest, cfg):
        raise ConfigError(
            f"{where} was tuned from {manifest.base_model}, this config's model.name_or_path is "
            f"{cfg.model.name_or_path}: warm-start from a version of the same base, or train "
            "from the base (train.init_from: null)"
        )
    if manifest.weights == "full":
        raise ConfigError(
            f"{where} holds full weights: a warm start continues a LoRA adapter; tune a full "
            "version again from the base, or register its weights as a base model folder"
        )
    shape = ("r", "alpha", "target_modules")
    theirs = {k: (manifest.model.get("lora") or {}).get(k) for k in shape}
    ours = {k: cfg.model.lora.model_dump(mode="json")[k] for k in shape}
    if not cfg.model.lora.enabled or theirs != ours:
        raise ConfigError(
            f"{where} is a LoRA adapter with {theirs}; this config asks model.lora {ours} "
            f"(enabled: {cfg.model.lora.enabled}): a warm start continues that adapter, so set "
            "model.lora to its shape"
        )
    print(f"[recicl] warm start from {cfg.train.init_from} ({source.local_dir})", flush=True)
    return cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"init_from": str(source.local_dir)})}
    )


def same_base(manifest: version.VersionManifest, cfg: ReciclConfig) -> bool:
    """Whether a version was tuned from this config's base: by name and import checksum for
    local bases named portably, by resolved path or hub id otherwise."""
    ours = version.BaseModelRef.of(cfg.model)
    if manifest.base_ref is not None and ours is not None:
        return (manifest.base_ref.folder_name, manifest.base_ref.sha256) == (
            ours.folder_name,
            ours.sha256,
        )
    theirs, mine = str(manifest.base_model), str(cfg.model.name_or_path)
    if Path(theirs).exists() and Path(mine).exists():
        return Path(theirs).resolve() == Path(mine).resolve()
    return theirs == mine


def _package_and_register(
    cfg: ReciclConfig,
    workspace: registry.Workspace,
    checkpoint: Any,
    run_id: str | None,
    *,
    metrics: dict[str, Any],
    periods: dict[str, list[int]],
    manifest_hash: str,
    samples_content_id: str,
    item_stats: Path | None,
    blend: SignalModel | None = None,
) -> tuple[Path, str | None]:
    """The model folder built from the final checkpoint, and the registry version it became
    (None without an MLflow run)."""
    tc = cfg.train
    assert tc.run_name
    # (not <workdir>/models/: evaluation caches downloaded versions there)
    output = workspace.folder / "trained" / tc.run_name
    if output.exists():
        shutil.rmtree(output)
    model_dir = _build_model_dir(
        cfg,
        checkpoint,
        output,
        metrics=metrics,
        periods=periods,
        manifest_hash=manifest_hash,
        samples_content_id=samples_content_id,
        item_stats=item_stats,
        blend=blend,
    )
    if not (run_id and cfg.mlflow.tracking_uri):
        return model_dir, None
    tags = {
        "base_model": str(cfg.model.name_or_path),
        "prompt_format": "instructions" if tc.instructions else cfg.prompt.format,
        "prompt_domain": cfg.prompt.domain,
        "data_manifest_hash": manifest_hash,
        "data_samples_content_id": samples_content_id,
        "run_name": tc.run_name,
        "strategy": tc.strategy + (f"-zero{tc.zero_stage}" if tc.strategy == "deepspeed" else ""),
        "step": str(metrics.get("step", "")),
    }
    if tc.instructions:
        tags["instruction_template"] = tc.instruction_template
    if "val_auc" in metrics:
        tags["val_auc"] = f"{metrics['val_auc']:.6f}"
    version = registry.log_model_version(
        tracking_uri=cfg.mlflow.tracking_uri,
        run_id=run_id,
        model_dir=model_dir,
        registered_model=cfg.mlflow.registered_model,
        tags=tags,
        description=f"{cfg.model.name_or_path} tuned by run {tc.run_name}",
        register=cfg.mlflow.register_version,
    )
    return model_dir, version
