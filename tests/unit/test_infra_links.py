"""infra/: the names that tie the pieces together (Services behind URIs, Secrets and keys, PVCs,
images and what builds them), the cluster-launcher YAML against Ray's own schema, and the
README steps. The manifests themselves: test_infra.py."""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from recicl.config import load_config
from recicl.deploy import kuberay
from tests.unit.infra_manifests import (
    DOCKERFILE,
    INFRA,
    INFRA_README,
    K8S_FILES,
    KUBERAY_OBJECTS,
    LAUNCHER_FILES,
    MLFLOW_DOCKERFILE,
    NAMESPACES,
    RETUNE_CONFIG,
    ROOT,
    SERVE_CONFIG,
    TRAIN_CONFIG,
    all_objects,
    containers,
    cpus,
    objects_of,
    one,
    pod_templates,
    readme_secrets,
    recicl_image,
    relative,
)

# --- names that tie the pieces together -----------------------------------------------------


@functools.cache
def service_urls() -> dict[str, str]:
    """Every URL of a service that the configs and manifests give recicl: {where: url}."""
    urls: dict[str, str] = {}
    serve = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]
    urls["production.yaml MLFLOW_TRACKING_URI"] = serve["runtime_env"]["env_vars"][
        "MLFLOW_TRACKING_URI"
    ]
    urls["production.yaml serve.store_url"] = serve["args"]["overrides"]["serve.store_url"]
    for config in (TRAIN_CONFIG, RETUNE_CONFIG):  # the cold run and the scheduled re-tune
        cfg = load_config(ROOT / config)
        assert cfg.mlflow.tracking_uri
        urls[f"{config} mlflow.tracking_uri"] = cfg.mlflow.tracking_uri
    env = one("ConfigMap", "recicl-env")["data"]
    urls["recicl-env MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    urls["recicl-env RECICL_STORE_URL"] = env["RECICL_STORE_URL"]
    return urls


def cluster_service(host: str) -> tuple[str, str]:
    """`name.namespace.svc[.cluster.local]` → (namespace, name)."""
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?", host)
    assert match, f"{host} is not a cluster Service name"
    return match.group(2), match.group(1)


@pytest.mark.parametrize("where", list(service_urls()))
def test_service_url_points_at_a_service_defined_here(where: str):
    url = urlparse(service_urls()[where])
    assert url.hostname and url.port
    namespace, name = cluster_service(url.hostname)
    service = one("Service", name)
    assert service["metadata"]["namespace"] == namespace
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    # ... and something serves behind it: a workload whose pod labels the selector matches.
    workloads = [
        o
        for o in [*objects_of("Deployment"), *objects_of("StatefulSet")]
        if o["metadata"]["namespace"] == namespace
        and service["spec"]["selector"].items()
        <= o["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(workloads) == 1, f"{where}: no single workload behind Service {name}"
    if url.scheme == "redis":
        args = workloads[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--appendonly") + 1] == "yes"


def test_mlflow_accepts_the_host_names_recicl_uses():
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = one("ConfigMap", "mlflow-config")["data"]["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert "*" not in allowed
    args = one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--allowed-hosts=$(MLFLOW_ALLOWED_HOSTS)" in args
    for where, url in service_urls().items():
        parsed = urlparse(url)
        if parsed.scheme.startswith("http"):
            assert is_allowed_host_header(allowed, parsed.netloc), f"{where}: {parsed.netloc}"
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")  # kubectl port-forward
    assert not is_allowed_host_header(allowed, "mlflow.attacker.example:5000")


def test_mlflow_server_stores_in_postgres_and_s3():
    args = one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(a.split("=", 1) for a in args if "=" in a)
    store = urlparse(flags["--backend-store-uri"])
    assert store.scheme == "postgresql"
    namespace, name = cluster_service(store.hostname or "")
    assert one("Service", name)["metadata"]["namespace"] == namespace
    assert one("StatefulSet", name)["spec"]["volumeClaimTemplates"]
    destination = one("ConfigMap", "mlflow-config")["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
    assert flags["--artifacts-destination"] == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert destination.startswith("s3://") and "--serve-artifacts" in args


def env_references(obj: dict[str, Any]) -> Iterator[tuple[str, str, str | None, bool]]:
    """(kind, name, key, optional) of every ConfigMap/Secret a container's env refers to."""
    for container in containers(obj):
        for source in container.get("envFrom", []):
            for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if ref in source:
                    yield kind, source[ref]["name"], None, source[ref].get("optional", False)
        for var in container.get("env", []):
            value_from = var.get("valueFrom", {})
            for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if ref in value_from:
                    r = value_from[ref]
                    yield kind, r["name"], r["key"], r.get("optional", False)


def test_configmaps_and_secrets_referenced_exist():
    secrets = readme_secrets()
    assert secrets, "infra/README.md creates no secret"
    readme = INFRA_README.read_text()
    for _, obj in all_objects():
        namespace = obj["metadata"].get("namespace")
        for kind, name, key, optional in env_references(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']} -> {kind}/{name}"
            if kind == "ConfigMap":
                config_map = one("ConfigMap", name)
                assert config_map["metadata"]["namespace"] == namespace, where
                assert key is None or key in config_map["data"], where
            else:
                assert (namespace, name) in secrets, f"{where}: not created in infra/README.md"
                if key is not None and optional:
                    assert key in readme, f"{where}: optional key {key} is never explained"
                elif key is not None:
                    assert key in secrets[(namespace, name)], f"{where}: README omits key {key}"


def test_ray_pods_get_the_variables_recicl_reads():
    source = "\n".join(p.read_text() for p in (ROOT / "recicl").rglob("*.py"))
    env = one("ConfigMap", "recicl-env")["data"]
    for _, obj in KUBERAY_OBJECTS:
        names = set()
        for container in containers(obj):
            names |= {v["name"] for v in container.get("env", [])}
            for source_ref in container.get("envFrom", []):
                if "configMapRef" in source_ref:
                    names |= set(one("ConfigMap", source_ref["configMapRef"]["name"])["data"])
        assert "MLFLOW_TRACKING_URI" in names, obj["metadata"]["name"]
        # Every recicl-specific name given to a pod is one the package reads.
        for name in names:
            if name.startswith("RECICL_"):
                assert f'"{name}"' in source, f"{name} is set but recicl never reads it"
    for obj in [*objects_of("RayService"), *objects_of("RayCluster")]:
        names = {v["name"] for c in containers(obj) for v in c.get("env", [])}
        assert "RECICL_ADMIN_TOKEN" in names  # /admin/reload of the served API
    assert env["RECICL_STORE_URL"] == service_urls()["production.yaml serve.store_url"]


def test_volume_claims_exist_in_the_pods_namespace():
    claims = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in objects_of("PersistentVolumeClaim")
    }
    shared = claims[("recicl", "recicl-shared")]
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"]  # every Ray pod mounts it
    for _, obj in all_objects():
        for _, template in pod_templates(obj):
            for volume in template["spec"].get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    key = (
                        obj["metadata"]["namespace"],
                        volume["persistentVolumeClaim"]["claimName"],
                    )
                    assert key in claims, f"{obj['metadata']['name']}: no PVC {key}"


# --- images -----------------------------------------------------------------------------------


def pinned(name: str, text: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", text, re.M | re.I)
    assert match, f"{name} is not pinned"
    return match.group(1)


def built_images() -> dict[str, Path]:
    """{image: Dockerfile} from the `docker build ... -t IMAGE` line each Dockerfile documents."""
    images = {}
    for dockerfile in (INFRA / "docker").glob("*Dockerfile"):
        for tag in re.findall(r"docker build -f \S+ -t (\S+) \.", dockerfile.read_text()):
            images[tag] = dockerfile
    return images


def test_every_image_is_built_here_or_a_pinned_public_image():
    built = built_images()
    assert set(built) == {recicl_image(), f"recicl/mlflow:{mlflow_pin()}"}
    readme = " ".join(INFRA_README.read_text().split())  # commands aligned with extra spaces
    for image, dockerfile in built.items():
        assert f"-f {dockerfile.relative_to(ROOT)} -t {image} ." in readme
    used = {c["image"] for _, o in all_objects() for c in containers(o)}
    used |= {yaml.safe_load(p.read_text())["docker"]["image"] for p in LAUNCHER_FILES}
    for image in used:
        if image.startswith("recicl/"):
            assert image in built, f"{image}: no Dockerfile builds it"
        else:
            _, _, tag = image.partition(":")
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{image}: pin a version"


def mlflow_pin() -> str:
    return pinned("mlflow", (ROOT / "constraints.txt").read_text())


def test_images_install_the_pinned_versions():
    constraints = (ROOT / "constraints.txt").read_text()
    text = DOCKERFILE.read_text()
    assert re.search(r'pip install -c constraints\.txt "\.\[', text), "install with the pins"
    torch = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert torch and f"ARG TORCH_SPEC={torch.group(1)}" in text
    assert pinned("ray", constraints) in re.search(r"ARG RAY_IMAGE=(\S+)", text).group(1)  # type: ignore[union-attr]
    mlflow = MLFLOW_DOCKERFILE.read_text()
    assert f'"mlflow=={mlflow_pin()}"' in mlflow and "-c /tmp/constraints.txt" in mlflow
    assert "psycopg2" in mlflow and "boto3" in mlflow  # PostgreSQL store, S3 artifacts


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_build_context_holds_what_the_dockerfile_copies(dockerfile: Path):
    ignore = Path(f"{dockerfile}.dockerignore").read_text().split()
    assert "*" in ignore, "allow-list the context: never send .venv or caches"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile.read_text(), re.M):
        for source in line.split():
            assert source in allowed and (ROOT / source).exists(), f"COPY {source}"
    if dockerfile == DOCKERFILE:  # what the jobs run: scripts, configs, serve configs
        for needed in ("ray_jobs", "serve_configs", "recicl", "constraints.txt"):
            assert needed in allowed


# --- cluster launcher (VMs) -----------------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=relative)
def test_cluster_launcher_config_validates_against_rays_schema(path: Path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks first
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=relative)
def test_cluster_launcher_matches_the_configs(path: Path):
    config = yaml.safe_load(path.read_text())
    assert config["docker"]["image"] == recicl_image()
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    train = load_config(ROOT / TRAIN_CONFIG).train
    gpu_types = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) > 0]
    assert sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types) >= train.num_workers
    for node in gpu_types:
        assert node["resources"]["CPU"] >= node["resources"]["GPU"] * train.cpus_per_worker
    assert sum(t.get("max_workers", 0) for t in types.values()) <= config["max_workers"]
    # The configs name MLflow and Redis by their Kubernetes DNS names: on VMs the containers
    # map those names to real hosts, so the same configs work unchanged.
    options = " ".join(config["docker"]["run_options"])
    mapped = set(re.findall(r"--add-host=([^:\s]+):", options))
    hosts = {urlparse(url).hostname for url in service_urls().values()}
    assert hosts <= mapped, f"unmapped on VMs: {sorted(hosts - mapped)}"
    assert "--volume /mnt/recicl:/mnt/recicl" in options


def test_readme_steps_apply_every_manifest_and_create_every_namespace():
    readme = INFRA_README.read_text()
    for path in K8S_FILES:
        assert f"-f {path.relative_to(ROOT)}" in readme, f"no step applies {relative(path)}"
    namespaces = {o["metadata"]["name"] for o in objects_of("Namespace")}
    assert namespaces == NAMESPACES
    # The walk ends with a request to the served API, on the port KubeRay's serve Service uses.
    assert f"svc/{kuberay.RAYSERVICE_NAME}-serve-svc 8000:8000" in readme
    assert "/v1/score" in readme and "promote.py" in readme


def test_cpu_quantities_are_parsed_as_kubernetes_does():
    assert cpus("500m") == 0.5 and cpus("88") == 88 and cpus(4) == 4
    assert math.isclose(cpus("1500m"), 1.5)
