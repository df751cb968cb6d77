"""MLflow: tracking URI, runs, model artifacts and registered versions.

A registered version of the model (default name ``recicl``) points at one folder of run
artifacts under :data:`MODEL_ARTIFACT_PATH`: the model-version folder, whose layout and manifest
belong to :mod:`recicl.modeling.packaged` (this module uploads and downloads it, unread).

Why plain artifacts and ``create_model_version`` rather than ``mlflow.transformers``: the
transformers flavor wants a hub id for a peft base model and records pip requirements by
inspecting the environment (slow, network); an adapter is a few safetensors files that any
consumer can load with peft. ``load_version(name, "champion")`` returns that folder.

Everything here is a thin layer over the MLflow client with the tracking URI passed explicitly,
so that the driver, Ray workers and evaluation jobs all agree on where things live.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recicl.errors import ReciclError

if TYPE_CHECKING:  # mlflow is heavy to import; keep `import recicl.registry` cheap
    from mlflow import MlflowClient

    from recicl.config import ReciclConfig

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
#: Tag on runs: the Ray Train run name, used to continue the same MLflow run on resume.
RUN_NAME_TAG = "recicl.ray_run_name"
#: Tags on evaluation runs, so that listing versions and the promotion gate find them:
#: what kind of run, which model version, which samples (content identity) and periods.
EVAL_KIND_TAG, MODEL_NAME_TAG, MODEL_VERSION_TAG = (
    "recicl.kind",
    "recicl.model_name",
    "recicl.model_version",
)
#: SAMPLES_TAG holds the samples' *content* identity (SamplesFolder.content_id), not the config
#: hash of their manifest. Runs logged before carry a config hash there, which never equals a
#: content id: the gate re-evaluates instead of reusing them.
SAMPLES_TAG, PERIODS_TAG = "recicl.samples_hash", "recicl.periods"
#: Which samples of each period an evaluation scored: "all", or "cap<N>" (evaluate.max_samples:
#: a seeded random subset of N per period, the same for every model on the same samples).
SUBSET_TAG = "recicl.eval_subset"
_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on one param value (characters)


def default_tracking_uri(workdir: str | Path) -> str:
    """The embedded default: SQLite database in the workdir."""
    return "sqlite:///" + str((Path(workdir) / "mlflow.db").resolve())


def default_artifact_root(workdir: str | Path) -> str:
    """Where the embedded default keeps artifacts: ``<workdir>/mlartifacts`` as a file URI."""
    return (Path(workdir) / "mlartifacts").resolve().as_uri()


def resolve_tracking_uri(cfg: ReciclConfig) -> str:
    """``mlflow.tracking_uri`` → ``$MLFLOW_TRACKING_URI`` → SQLite in the workdir (created).
    Commands resolve it once, with the work folder, by :meth:`Workspace.of`."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = cfg.work_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return default_tracking_uri(folder)


@dataclass(frozen=True)
class Workspace:
    """Where one command works: its work folder and its MLflow store (tracking and registry),
    with the experiment and registered-model names runs and versions go to.

    Resolved once where a command starts (a CLI command, a Ray job script, an experiment, a
    re-tune, a Serve application) by :meth:`of`, then handed down, so that lower layers get the
    folder and the store instead of a config to derive them from again. They used to derive
    them at about twenty sites, each a place where a relative ``workdir`` (resolved against the
    current directory) or ``$MLFLOW_TRACKING_URI`` could be read differently mid-command."""

    folder: Path  # absolute
    tracking_uri: str
    experiment: str
    registered_model: str

    @classmethod
    def of(cls, cfg: ReciclConfig) -> Workspace:
        return cls(
            folder=cfg.work_folder(),
            tracking_uri=resolve_tracking_uri(cfg),
            experiment=cfg.mlflow.experiment,
            registered_model=cfg.mlflow.registered_model,
        )

    def client(self) -> MlflowClient:
        return client(self.tracking_uri)

    def ensure_experiment(self) -> str:
        """Id of the experiment, created if missing (artifacts under the work folder when the
        tracking store is the embedded SQLite default)."""
        mlc = self.client()
        experiment = mlc.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if self.tracking_uri.startswith("sqlite:") and not os.environ.get("MLFLOW_ARTIFACT_ROOT"):
            artifact_location = default_artifact_root(self.folder)
        try:
            return mlc.create_experiment(self.experiment, artifact_location=artifact_location)
        except Exception:  # created concurrently by another process
            experiment = mlc.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id


def client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` (also the registry URI)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict → ``{"train.lr": "0.0002", ...}`` (lists as JSON), for MLflow params."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:_PARAM_VALUE_LIMIT]
    return out


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of 100 (MLflow's limit per call)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:_PARAM_VALUE_LIMIT]) for k, v in params.items()]
    mlc = client(tracking_uri)
    for start in range(0, len(items), 100):
        mlc.log_batch(run_id, params=items[start : start + 100])


def log_metrics(tracking_uri: str, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
    """Log ``(key, value, step)`` rows in one batch call (chunks of 1000)."""

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
    mlc = client(tracking_uri)
    for start in range(0, len(metrics), 1000):
        mlc.log_batch(run_id, metrics=metrics[start : start + 1000])


def find_run(tracking_uri: str, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """Newest run of the experiment carrying all ``tags``, or None."""
    mlc = client(tracking_uri)
    clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlc.search_runs(
        [experiment_id],
        filter_string=clauses,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_model_version(
    *,
    tracking_uri: str,
    run_id: str,
    model_dir: str | Path,
    registered_model: str,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    register: bool = True,
) -> str | None:
    """Upload ``model_dir`` as the run's ``model/`` artifacts and register a new version of
    ``registered_model`` pointing at them. Returns the version number (as text), or None when
    ``register`` is false."""
    mlc = client(tracking_uri)
    mlc.log_artifacts(run_id, str(model_dir), artifact_path=MODEL_ARTIFACT_PATH)
    if not register:
        return None
    from mlflow.exceptions import MlflowException

    try:
        mlc.create_registered_model(
            registered_model, description="recicl: LoRA adapters for ICL recommendation"
        )
    except MlflowException as error:
        if "ALREADY_EXISTS" not in str(error.error_code):
            raise
    source = mlc.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + MODEL_ARTIFACT_PATH
    version = mlc.create_model_version(
        registered_model,
        source=source,
        run_id=run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
        description=description,
    )
    log.info("registered %s version %s (source %s)", registered_model, version.version, source)
    return str(version.version)


def register_model_folder(
    cfg: ReciclConfig, folder: str | Path, *, alias: str | None = None, run_name: str | None = None
) -> str:
    """Register a packaged model folder (e.g. ``modeling.packaged.package_full_model``) as a new
    version of ``cfg.mlflow.registered_model`` from a run of its own; optionally set an alias."""
    workspace = Workspace.of(cfg)
    mlc = workspace.client()
    run = mlc.create_run(
        workspace.ensure_experiment(), run_name=run_name or f"register-{Path(folder).name}"
    )
    version = log_model_version(
        tracking_uri=workspace.tracking_uri,
        run_id=run.info.run_id,
        model_dir=folder,
        registered_model=workspace.registered_model,
    )
    mlc.set_terminated(run.info.run_id)
    assert version is not None  # register=True always returns one
    if alias:
        mlc.set_registered_model_alias(workspace.registered_model, alias, version)
    return version


def model_uri(name: str, alias_or_version: str | int) -> str:
    """``models:/name/3`` for a version number, ``models:/name@champion`` for an alias."""
    ref = str(alias_or_version)
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


def resolve_version(tracking_uri: str, name: str, alias_or_version: str | int) -> str:
    """Version number (text) behind an alias or a number."""
    ref = str(alias_or_version)
    if ref.isdigit():
        return ref
    return str(client(tracking_uri).get_model_version_by_alias(name, ref).version)


def version_identity(tracking_uri: str, name: str, version: str) -> str:
    """A short hash naming *this* registry entry: the store, the version's run, its source and
    creation time. A version number alone is not an identity: another store (or a store that
    was reset) has its own version 1. Local caches of downloaded versions are keyed by this."""

    entry = client(tracking_uri).get_model_version(name, version)
    key = json.dumps(
        [tracking_uri, name, str(entry.version), entry.run_id, entry.source,
         entry.creation_timestamp]
    )  # fmt: skip
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def load_version(
    name: str,
    alias_or_version: str | int,
    *,
    tracking_uri: str,
    dst: str | Path | None = None,
) -> Path:
    """Download a registered version's model folder (see module doc) and return its path.

    The version's source URI is resolved with an explicit client and downloaded directly: going
    through ``models:/`` URIs would consult the process-global registry URI instead.

    The download lands in a hidden sibling of ``dst`` and is renamed into ``dst`` once whole:
    ``dst`` is a cache that evaluation and serving reuse when it holds a version manifest, and
    an interrupted download (a killed job, a full disk) must not leave a folder that looks
    complete. An entry of ``dst`` with the same name (an earlier download) is replaced.
    """
    import mlflow.artifacts

    version = resolve_version(tracking_uri, name, alias_or_version)
    source = client(tracking_uri).get_model_version_download_uri(name, version)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(staging), tracking_uri=tracking_uri
            )
        )
        dst.mkdir(exist_ok=True)
        for entry in staging.iterdir():
            target = dst / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            entry.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst / local.relative_to(staging)


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")


@dataclass
class ModelSource:
    """A model reference resolved to a local folder."""

    uri: str
    local_dir: Path
    label: str
    name: str | None = None
    version: str | None = None


def resolve_model_uri(uri: str, workspace: Workspace) -> ModelSource:
    """``models:/name/N`` / ``models:/name@alias`` or a folder (evaluation's --model, a warm
    re-tune's train.init_from: one resolver). A registered version is
    downloaded once per registry entry (:func:`recicl.registry.version_identity`), under
    ``<workdir>/models/<name>/<version>-<identity>``: pointing the same workdir at another
    MLflow store never scores a stale copy of a different "version N"."""
    match = _MODELS_URI.match(uri)
    if match is None:
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise RegistryError(
                f"{uri!r} is neither a models:/name/N or models:/name@alias URI nor an "
                "existing folder"
            )
        return ModelSource(uri, path.resolve(), path.name)
    from mlflow.exceptions import MlflowException

    from recicl.modeling.packaged import MODEL_MANIFEST

    tracking_uri = workspace.tracking_uri
    name = match["name"]
    ref = match["version"] or match["alias"]
    try:
        version = resolve_version(tracking_uri, name, ref)
        identity = version_identity(tracking_uri, name, version)
        cache = workspace.folder / "models" / name / f"{version}-{identity}"
        local = cache / "model"
        if not (local / MODEL_MANIFEST).is_file():
            local = load_version(name, version, tracking_uri=tracking_uri, dst=cache)
    except MlflowException as error:
        raise RegistryError(
            f"cannot resolve {uri} in the registry at {tracking_uri}: {error.message}"
        ) from None
    return ModelSource(uri, Path(local), f"{name}/{version}", name, version)


# ----------------------------------------------------------------------------------------------
# Listing versions (the promotion gate is recicl.promotion)
# ----------------------------------------------------------------------------------------------


class RegistryError(ReciclError):
    """A registry request that cannot be carried out (unknown model or version, bad flags)."""


def registered_model(mlc: MlflowClient, name: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in mlc.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r} at {tracking_uri}; registered: {names or 'none'}"
        ) from None


def model_version(mlc: MlflowClient, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_model_version(name, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in mlc.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"{name} has no version {version}; versions: {versions}") from None


def alias_version(mlc: MlflowClient, name: str, alias: str) -> str | None:
    """Version behind ``alias``, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(mlc.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def list_versions(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """Versions of ``name``, oldest first, with aliases, key tags and their evaluations."""
    mlc = client(tracking_uri)
    model = registered_model(mlc, name, tracking_uri)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    evaluations: dict[str, dict[str, float]] = {}
    runs = mlc.search_runs(
        [e.experiment_id for e in mlc.search_experiments()],
        filter_string=f"tags.`{EVAL_KIND_TAG}` = 'evaluation' and "
        f"tags.`{MODEL_NAME_TAG}` = '{name}'",
        order_by=["attributes.start_time ASC"],
    )
    for run in runs:  # newest evaluation of each version wins
        version = run.data.tags.get(MODEL_VERSION_TAG, "")
        evaluations[version] = dict(run.data.metrics)
    rows = []
    versions = mlc.search_model_versions(f"name='{name}'")
    for version in sorted(versions, key=lambda v: int(v.version)):
        number = str(version.version)
        tags = dict(version.tags or {})
        rows.append(
            {
                "version": number,
                "aliases": sorted(aliases.get(number, [])),
                "created": version.creation_timestamp,
                "run_id": version.run_id,
                "tags": tags,
                "evaluation": evaluations.get(number, {}),
            }
        )
    return rows
