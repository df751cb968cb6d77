"""Every YAML file the repository ships is loaded and validated, so none rots unnoticed.

Parametrized over globs: a new file in one of these folders is covered without editing this test,
and a YAML file anywhere else fails :func:`test_every_shipped_yaml_is_covered` until it is given
a check here.
"""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from recicl.config import ReciclConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
RECICL_CONFIGS = sorted((ROOT / "ray_jobs" / "configs").glob("*.yaml"))
SERVE_CONFIGS = sorted((ROOT / "serve_configs").glob("*.yaml"))
#: Every YAML file under infra/ is checked by tests/unit/test_infra*.py; RayJobs here as well.
INFRA_FILES = sorted((ROOT / "infra").rglob("*.yaml"))
KUBERAY_MANIFESTS = sorted((ROOT / "infra" / "kuberay").glob("rayjob-*.yaml"))
PRE_COMMIT = ROOT / ".pre-commit-config.yaml"
#: Checked by tests/unit/test_runtime_env.py.
RUNTIME_ENV = ROOT / "ray_jobs" / "runtime_env.yaml"
#: The documentation site's config, checked by tests/unit/test_docs.py (and `make docs`).
MKDOCS = ROOT / "mkdocs.yml"
#: Folders that hold no shipped configuration (besides hidden ones: environments, caches).
NOT_SHIPPED = {"tests", "recicl-work", "build", "dist", "mlruns", "mlartifacts", "ray_results"}


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def shipped_yaml_files() -> set[Path]:
    """YAML files outside hidden, output and test folders (pruned, so .venv is never walked)."""
    found = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".") and name not in NOT_SHIPPED and "egg-info" not in name
        ]
        found.update(Path(folder, name) for name in files if name.endswith((".yaml", ".yml")))
    return found


#: The configs that train on GPUs (read as plain YAML, so a broken file fails its own test).
GPU_CONFIGS = [
    p for p in RECICL_CONFIGS if ((read_yaml(p) or {}).get("train") or {}).get("use_gpu")
]


def test_every_shipped_yaml_is_covered() -> None:
    shipped = shipped_yaml_files()
    covered = {*RECICL_CONFIGS, *SERVE_CONFIGS, *INFRA_FILES, PRE_COMMIT, RUNTIME_ENV, MKDOCS}
    assert not shipped - covered, "YAML files without a check in this test"
    assert RECICL_CONFIGS and SERVE_CONFIGS and KUBERAY_MANIFESTS and GPU_CONFIGS


@pytest.mark.parametrize("path", RECICL_CONFIGS, ids=relative)
def test_recicl_config_loads(path: Path) -> None:
    cfg = load_config(path)  # strict: an unknown key or a bad value is a ConfigError
    assert isinstance(cfg, ReciclConfig)
    assert read_yaml(path), f"{relative(path)} is empty: it would silently mean the defaults"


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=relative)
def test_a_config_that_trains_on_gpus_also_scores_on_gpus(path: Path) -> None:
    """Evaluation and serving default to CPU replicas; a GPU-trained model scored on CPUs (a 7B
    one: minutes a batch) is a config that forgot its `evaluate`/`serve` sections."""
    cfg = load_config(path)
    assert cfg.train.use_gpu
    assert cfg.evaluate.use_gpu, f"{relative(path)}: set evaluate.use_gpu: true"
    assert cfg.serve.num_gpus > 0, f"{relative(path)}: set serve.num_gpus (e.g. 1.0)"


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=relative)
def test_serve_config_is_valid_for_ray_serve_and_recicl(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    # the cluster's secret (production.yaml refuses to build without a write token:
    # tests/unit/test_http_access.py)
    monkeypatch.setenv("RECICL_WRITE_TOKEN", "from-the-cluster-secret")

    schema = ServeDeploySchema.model_validate(read_yaml(path))  # what `serve run/deploy` checks
    assert schema.applications
    for application in schema.applications:
        module_name, _, attribute = application.import_path.partition(":")
        module = importlib.import_module(module_name)
        builder = getattr(module, attribute)
        # The builder applies `args` (a recicl config file + dotted overrides) the way Serve
        # will: a mistyped override or a bad value raises a ConfigError here.
        assert isinstance(builder(application.args), serve.Application)
        defined = {v.name for v in vars(module).values() if isinstance(v, serve.Deployment)}
        named = {deployment.name for deployment in application.deployments}
        assert named <= defined, f"deployments {sorted(named - defined)} do not exist"


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=relative)
def test_kuberay_job_runs_a_shipped_script_and_config(path: Path) -> None:
    manifest = read_yaml(path)
    assert manifest["kind"] == "RayJob"
    assert yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])["working_dir"]
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[0] == "python" and (ROOT / argv[1]).is_file(), argv[:2]
    if "--config" in argv:
        config = ROOT / argv[argv.index("--config") + 1]
        assert isinstance(load_config(config), ReciclConfig)
    # That the script accepts these options: tests/unit/test_ray_jobs.py (documented invocations).


def test_pre_commit_hooks_run_offline_from_the_venv() -> None:
    config = read_yaml(PRE_COMMIT)
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert all(repo["repo"] == "local" for repo in config["repos"])
    assert {hook["language"] for hook in hooks} == {"system"}
    entries = " ".join(hook["entry"] for hook in hooks)
    for tool in ("ruff check", "ruff format", "mypy"):
        assert f".venv/bin/{tool}" in entries, f"no pre-commit hook runs {tool}"
