"""ray_jobs/runtime_env.yaml: the one declaration of what a Ray job needs on the cluster.

Its pip pins are the ones CI installs (constraints.txt, the Makefile's torch), every runtime
dependency of pyproject.toml is in it, Ray accepts it, and its excludes keep weights, outputs and
virtualenvs out of the `--working-dir .` upload even without a .gitignore. That the jobs really
run with it on a cluster whose `python` is not the venv: tests/integration/test_ray_job_submit.py.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV = ROOT / "ray_jobs" / "runtime_env.yaml"


def _name(requirement: str) -> str:
    """PEP 503 normalized project name of a requirement string."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _runtime_env() -> dict:
    return yaml.safe_load(RUNTIME_ENV.read_text())


def _pins() -> dict[str, str]:
    pins = {}
    for requirement in _runtime_env()["pip"]["packages"]:
        name, _, version = requirement.partition("==")
        assert version and "," not in version, f"{requirement}: pin one exact version"
        pins[_name(name)] = version
    return pins


def test_pins_are_the_ones_ci_installs() -> None:
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            constraints[_name(name)] = version
    torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert torch, "Makefile: TORCH_SPEC ?= torch==X not found"
    constraints["torch"] = torch.group(1)
    pins = _pins()
    wrong = {n: (v, constraints.get(n)) for n, v in pins.items() if constraints.get(n) != v}
    assert not wrong, f"runtime_env.yaml pin vs constraints.txt/Makefile: {wrong}"


def test_every_runtime_dependency_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"]} - {"ray"}  # Ray is the cluster's own
    pins = _pins()
    assert needed <= set(pins), f"missing from runtime_env.yaml: {sorted(needed - set(pins))}"
    assert "ray" not in pins  # Ray refuses a runtime env that replaces the cluster's Ray


def test_ray_accepts_the_runtime_env() -> None:
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**_runtime_env())  # validates every field Ray knows
    assert env.has_pip()
    assert env.pip_config()["packages"] == _runtime_env()["pip"]["packages"]
    assert env.env_vars()["DS_BUILD_OPS"] == "0"


def test_excludes_keep_weights_outputs_and_venvs_out_of_the_upload(tmp_path: Path) -> None:
    """Ray packs a working dir with the file's excludes (no .gitignore here, as when
    RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1): only code and configs go."""
    from ray._private.runtime_env.packaging import create_package

    work = tmp_path / "checkout"
    kept = [
        "ray_jobs/train.py",
        "ray_jobs/configs/tiny-cpu.yaml",
        "recicl/cli/__init__.py",
        "README.md",
    ]
    dropped = [
        ".cache/models/gemma-3-270m/model.safetensors",
        ".venv/bin/python",
        "recicl-work/samples/manifest.json",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/model/weights.bin",
        "ray_results/run/checkpoint_step0000002/state.pt",
        "mlflow.db",
        "recicl.egg-info/PKG-INFO",
        ".git/HEAD",
    ]
    for relative in kept + dropped:
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        (work / relative).write_text("x")
    package = tmp_path / "package.zip"
    create_package(str(work), package, include_gitignore=False, excludes=_runtime_env()["excludes"])
    with zipfile.ZipFile(package) as archive:
        uploaded = {name for name in archive.namelist() if not name.endswith("/")}
    assert uploaded == set(kept)
