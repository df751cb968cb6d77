"""Reading the infra/ manifests for the tests in test_infra*.py: files, objects, pod templates,
resources, the Kubernetes schema check, and the secrets infra/README.md creates."""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_FILES = sorted([*(INFRA / "k8s").glob("*.yaml"), *(INFRA / "kuberay").glob("*.yaml")])
LAUNCHER_FILES = sorted((INFRA / "cluster-launcher").glob("*.yaml"))
DOCKERFILE = INFRA / "docker" / "Dockerfile"
MLFLOW_DOCKERFILE = INFRA / "docker" / "mlflow.Dockerfile"
INFRA_README = INFRA / "README.md"
TRAIN_CONFIG = "ray_jobs/configs/qwen2.5-7b-zero3.yaml"
#: The warm re-tune (and monitor) config of the scheduled loop, kuberay/cronjob-retune.yaml.
RETUNE_CONFIG = "ray_jobs/configs/retune-warm.yaml"
SERVE_CONFIG = ROOT / "serve_configs" / "production.yaml"
#: Kubernetes version the schemas are taken from (the oldest that infra/README.md supports).
K8S_VERSION = "1.29"
NAMESPACES = {"mlflow", "recicl"}
CLUSTER_SCOPED = {"Namespace"}
GPU = "nvidia.com/gpu"


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@functools.cache
def documents(path: Path) -> list[dict[str, Any]]:
    """The objects of one file, parsed once per session (tests deep-copy before mutating)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, obj) for path in K8S_FILES for obj in documents(path)]


def objects_of(kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in all_objects() if obj["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in objects_of(kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def is_kuberay(obj: dict[str, Any]) -> bool:
    return str(obj["apiVersion"]).startswith("ray.io/")


def cluster_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayCluster, RayJob or RayService."""
    spec = obj["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[obj["kind"]]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod a Kubernetes or KubeRay object creates."""
    if is_kuberay(obj):
        spec = cluster_spec(obj)
        if spec:
            yield "headGroupSpec", spec["headGroupSpec"]["template"]
            for group in spec.get("workerGroupSpecs", []):
                yield f"workerGroupSpecs[{group['groupName']}]", group["template"]
        if obj["kind"] == "RayJob" and obj["spec"].get("submitterPodTemplate"):
            yield "submitterPodTemplate", obj["spec"]["submitterPodTemplate"]
    elif obj["kind"] in {"Deployment", "StatefulSet"}:
        yield "spec.template", obj["spec"]["template"]
    elif obj["kind"] == "CronJob":
        yield "spec.jobTemplate.spec.template", obj["spec"]["jobTemplate"]["spec"]["template"]


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for _, template in pod_templates(obj):
        yield from template["spec"]["containers"]


def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_resources(group: dict[str, Any]) -> tuple[float, int]:
    """(CPUs, GPUs) of one pod of a head or worker group, as Ray will see them."""
    (container,) = [
        c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray")
    ]
    limits = container["resources"]["limits"]
    params = group.get("rayStartParams", {})
    cpu = cpus(params["num-cpus"]) if "num-cpus" in params else cpus(limits["cpu"])
    gpu = int(params.get("num-gpus", limits.get(GPU, 0)))
    return cpu, gpu


def gpu_groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in spec.get("workerGroupSpecs", []) if group_resources(g)[1] > 0]


def k8s_validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def as_pod_template(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod template as a v1 PodTemplate object, so the bundled schema can validate it."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name},
        "template": template,
    }


def readme_secrets() -> dict[tuple[str, str], set[str]]:
    """{(namespace, secret): keys} from the `kubectl create secret generic` commands of
    infra/README.md, the only place secrets are created."""
    text = INFRA_README.read_text().replace("\\\n", " ")
    found: dict[tuple[str, str], set[str]] = {}
    for line in text.splitlines():
        if "kubectl create secret generic" not in line:
            continue
        argv = shlex.split(line, posix=True)
        name = argv[argv.index("generic") + 1]
        namespace = argv[argv.index("-n") + 1]
        keys = {a.split("=", 2)[1] for a in argv if a.startswith("--from-literal=")}
        found[(namespace, name)] = keys
    return found


CORE_OBJECTS = [(p, o) for p, o in all_objects() if not is_kuberay(o)]
KUBERAY_OBJECTS = [(p, o) for p, o in all_objects() if is_kuberay(o)]


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml has no [project] version"
    return match.group(1)


def recicl_image() -> str:
    return f"recicl/recicl:{project_version()}"


def image_workdir() -> str:
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.M)
    return workdir
