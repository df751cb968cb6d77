"""infra/: Kubernetes, KubeRay and cluster-launcher files, checked offline (no kubectl, no cluster).

* Core Kubernetes objects, and every pod template inside the KubeRay objects, validate strictly
  against the OpenAPI schemas bundled in ``kubernetes-validate``.
* KubeRay's own fields have no schema on hand: they are checked against what the code and the
  configs say (Ray version, entrypoints, GPU and worker counts, the generated serveConfigV2).
* The cluster-launcher YAML validates against Ray's own schema (``ray-schema.json``).
* Names that tie the pieces together (Services behind URIs, Secrets and keys, PVCs, images)
  resolve to something defined here or created by a step of infra/README.md.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import typer
import yaml
from typer.testing import CliRunner

from recicl.cli import app
from recicl.config import load_config
from recicl.deploy import kuberay

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_FILES = sorted([*(INFRA / "k8s").glob("*.yaml"), *(INFRA / "kuberay").glob("*.yaml")])
LAUNCHER_FILES = sorted((INFRA / "cluster-launcher").glob("*.yaml"))
DOCKERFILE = INFRA / "docker" / "Dockerfile"
MLFLOW_DOCKERFILE = INFRA / "docker" / "mlflow.Dockerfile"
INFRA_README = INFRA / "README.md"
TRAIN_CONFIG = "ray_jobs/configs/qwen2.5-7b-zero3.yaml"
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


# --- every file ------------------------------------------------------------------------------


def test_infra_holds_the_pieces_of_the_issue():
    kinds = {obj["kind"] for _, obj in all_objects()}
    assert {"RayCluster", "RayJob", "RayService", "Deployment", "StatefulSet", "Service"} <= kinds
    assert LAUNCHER_FILES, "no cluster-launcher YAML for VMs"
    readme = INFRA_README.read_text()
    for path in [*K8S_FILES, *LAUNCHER_FILES, DOCKERFILE, MLFLOW_DOCKERFILE]:
        assert str(path.relative_to(INFRA)) in readme, f"infra/README.md never names {path.name}"


@pytest.mark.parametrize("path", K8S_FILES, ids=relative)
def test_manifest_parses_and_every_object_is_named(path: Path):
    objects = documents(path)
    assert objects, f"{relative(path)} holds no object"
    for obj in objects:
        assert isinstance(obj, dict) and obj.get("apiVersion") and obj.get("kind"), obj
        assert obj.get("metadata", {}).get("name"), f"{obj['kind']} without metadata.name"
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None
        else:  # explicit: the DNS names in the configs depend on it
            assert namespace in NAMESPACES, f"{obj['kind']}/{obj['metadata']['name']}: {namespace}"


def test_object_names_are_unique():
    keys = [
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for _, o in all_objects()
    ]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    # KubeRay names Services after RayClusters and RayServices: <name>-head-svc, <name>-serve-svc.
    ray_names = [
        o["metadata"]["name"] for _, o in all_objects() if o["kind"] in {"RayCluster", "RayService"}
    ]
    assert len(ray_names) == len(set(ray_names))


# --- Kubernetes schemas (bundled with kubernetes-validate) ------------------------------------


CORE_OBJECTS = [(p, o) for p, o in all_objects() if not is_kuberay(o)]
KUBERAY_OBJECTS = [(p, o) for p, o in all_objects() if is_kuberay(o)]


@pytest.mark.parametrize(
    "obj",
    [o for _, o in CORE_OBJECTS],
    ids=[f"{o['kind']}/{o['metadata']['name']}" for _, o in CORE_OBJECTS],
)
def test_core_object_validates_against_the_kubernetes_schema(obj: dict[str, Any]):
    k8s_validate(obj)  # SchemaNotFoundError for a kind it does not know: that fails too


@pytest.mark.parametrize(
    "obj",
    [o for _, o in KUBERAY_OBJECTS],
    ids=[f"{o['kind']}/{o['metadata']['name']}" for _, o in KUBERAY_OBJECTS],
)
def test_kuberay_pod_templates_validate_against_the_kubernetes_schema(obj: dict[str, Any]):
    templates = list(pod_templates(obj))
    assert templates
    for where, template in templates:
        try:
            k8s_validate(as_pod_template(template, obj["metadata"]["name"]))
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} {where}: {path}: {error.message}")


def test_the_schema_check_rejects_typos_and_wrong_types():
    """The validator is the oracle of the two tests above: check it catches what they rely on."""
    deployment = copy.deepcopy(one("Deployment", "mlflow"))
    k8s_validate(deployment)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["envFromm"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(typo)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(wrong_type)
    template = copy.deepcopy(
        one("RayCluster", "recicl-cluster")["spec"]["headGroupSpec"]["template"]
    )
    template["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(as_pod_template(template, "typo"))


# --- KubeRay: facts from the code and the configs -------------------------------------------


def test_ray_version_is_the_installed_ray():
    import ray

    for _, obj in KUBERAY_OBJECTS:
        assert cluster_spec(obj)["rayVersion"] == ray.__version__, obj["metadata"]["name"]
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and base.group(1).startswith(f"rayproject/ray:{ray.__version__}-"), base


def test_every_ray_pod_runs_the_project_image_with_the_shared_volume():
    image = recicl_image()
    for _, obj in KUBERAY_OBJECTS:
        for where, template in pod_templates(obj):
            spec = template["spec"]
            for container in spec["containers"]:
                assert container["image"] == image, f"{obj['metadata']['name']} {where}"
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert "/mnt/recicl" in mounts, f"{obj['metadata']['name']} {where}"
                volume = next(v for v in spec["volumes"] if v["name"] == mounts["/mnt/recicl"])
                assert volume["persistentVolumeClaim"]["claimName"] == "recicl-shared"


def test_heads_run_no_tasks_and_gpu_pods_tolerate_the_gpu_taint():
    for _, obj in KUBERAY_OBJECTS:
        spec = cluster_spec(obj)
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        assert group_resources(spec["headGroupSpec"])[1] == 0, "the head must be a CPU pod"
        for group in gpu_groups(spec):
            limits = group["template"]["spec"]["containers"][0]["resources"]
            assert limits["limits"][GPU] == limits["requests"][GPU]
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t["key"] == GPU for t in tolerations), group["groupName"]


def rayjobs() -> list[dict[str, Any]]:
    return objects_of("RayJob")


@pytest.mark.parametrize("job", rayjobs(), ids=lambda job: job["metadata"]["name"])
def test_rayjob_entrypoint_is_a_valid_invocation_of_a_shipped_script(job: dict[str, Any]):
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and (ROOT / argv[1]).is_file(), argv[:2]
    config = argv[argv.index("--config") + 1]
    load_config(ROOT / config)  # strict: an unknown key or a bad value raises
    # The scripts hand their arguments to one `recicl` command (tests/unit/test_ray_jobs.py):
    # parse these with that command's own parser, so a mistyped or removed flag fails here.
    from tests.unit.test_ray_jobs import JOB_COMMANDS

    command: Any = typer.main.get_command(app)
    for name in JOB_COMMANDS[Path(argv[1]).name]:
        command = command.commands[name]
    command.make_context(command.name, argv[2:])
    # The job's working_dir is the project folder of the image (the Dockerfile's WORKDIR), and
    # K8sJobMode makes the submitter pod upload it as `--working-dir` would.
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == image_workdir()
    assert job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode"


def test_training_job_has_one_gpu_per_worker_of_the_config():
    job = one("RayJob", "recicl-train")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[1:4] == ["ray_jobs/train.py", "--config", TRAIN_CONFIG]
    train = load_config(ROOT / TRAIN_CONFIG).train
    assert train.use_gpu
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(group["replicas"] * group_resources(group)[1] for group in groups)
    assert gpus == train.num_workers
    for group in gpu_groups(job["spec"]["rayClusterSpec"]):
        # Fixed size: DeepSpeed checkpoints depend on the world size.
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
        cpu, gpu = group_resources(group)
        assert cpu >= gpu * train.cpus_per_worker, "not enough CPUs for one worker per GPU"
    assert job["spec"].get("backoffLimit", 0) == 0  # retries are Ray Train's (max_failures)


def test_sample_job_writes_where_training_reads():
    argv = shlex.split(one("RayJob", "recicl-build-samples")["spec"]["entrypoint"])
    cfg = load_config(ROOT / TRAIN_CONFIG)
    assert argv[argv.index("--output") + 1] == cfg.train.samples_dir
    for path in (cfg.train.samples_dir, cfg.workdir):
        shared = Path("/mnt/recicl")
        assert shared in (Path(path), *Path(path).parents), path  # on the shared volume
    assert str(cfg.train.storage_path).startswith("s3://")  # every GPU pod writes checkpoints


def test_raycluster_autoscales_and_can_host_the_training_run():
    spec = one("RayCluster", "recicl-cluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    groups = gpu_groups(spec)
    assert groups, "no GPU worker group"
    assert any(g["maxReplicas"] > g["minReplicas"] for g in groups), "GPU group does not autoscale"
    train = load_config(ROOT / TRAIN_CONFIG).train
    gpus = sum(g["maxReplicas"] * group_resources(g)[1] for g in groups)
    assert gpus >= train.num_workers
    assert all(
        group_resources(g)[0] >= group_resources(g)[1] * train.cpus_per_worker for g in groups
    )


def serve_deployments() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    (application,) = config["applications"]
    return {d["name"]: d for d in application["deployments"]}


def test_serve_config_fits_the_rayservice_cluster():
    spec = one("RayService", kuberay.RAYSERVICE_NAME)["spec"]["rayClusterConfig"]
    model = serve_deployments()["ReciclModel"]
    options = model["ray_actor_options"]
    assert options["num_gpus"] > 0
    groups = gpu_groups(spec)
    max_replicas = model["autoscaling_config"]["max_replicas"]
    per_pod = [
        min(gpu // options["num_gpus"], cpu // options["num_cpus"])
        for cpu, gpu in (group_resources(g) for g in groups)
    ]
    capacity = sum(g["maxReplicas"] * n for g, n in zip(groups, per_pod, strict=True))
    assert capacity >= max_replicas, f"{max_replicas} model replicas, room for {capacity}"
    api = serve_deployments()["ReciclAPI"]
    api_cpus = api["num_replicas"] * api["ray_actor_options"]["num_cpus"]
    room = sum(g["maxReplicas"] * group_resources(g)[0] for g in spec["workerGroupSpecs"])
    assert room >= api_cpus + max_replicas * options["num_cpus"]


def test_rayservice_is_what_the_generator_writes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)  # the generator's default paths, as the command uses them
    path = ROOT / kuberay.RAYSERVICE_MANIFEST
    assert path.read_text() == kuberay.render_rayservice(), (
        "stale: run `recicl infra render-rayservice`"
    )
    service = yaml.safe_load(path.read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(
        SERVE_CONFIG.read_text()
    )
    assert service["spec"]["rayClusterConfig"] == one("RayCluster", "recicl-cluster")["spec"]


def test_serve_config_v2_is_a_valid_ray_serve_config():
    from ray.serve.schema import ServeDeploySchema

    service = one("RayService", kuberay.RAYSERVICE_NAME)
    schema = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000


def test_render_command_writes_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)  # the command's defaults are relative to the repository root
    output = tmp_path / "rayservice.yaml"
    runner = CliRunner()
    args = ["infra", "render-rayservice", "--output", str(output)]
    assert runner.invoke(app, [*args, "--check"]).exit_code == 1  # missing = stale
    assert not output.exists()
    assert runner.invoke(app, args).exit_code == 0
    assert output.read_text() == (ROOT / kuberay.RAYSERVICE_MANIFEST).read_text()
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0
    output.write_text(output.read_text().replace("max_replicas: 8", "max_replicas: 9"))
    assert runner.invoke(app, [*args, "--check"]).exit_code == 1
    assert "max_replicas: 9" in output.read_text()  # --check writes nothing


def test_generator_refuses_a_cluster_file_that_is_not_a_raycluster(tmp_path: Path):
    wrong = tmp_path / "job.yaml"
    wrong.write_text((INFRA / "kuberay" / "rayjob-train.yaml").read_text())
    with pytest.raises(kuberay.InfraError, match="RayCluster"):
        kuberay.render_rayservice(SERVE_CONFIG, wrong)


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
    cfg = load_config(ROOT / TRAIN_CONFIG)
    assert cfg.mlflow.tracking_uri
    urls[f"{TRAIN_CONFIG} mlflow.tracking_uri"] = cfg.mlflow.tracking_uri
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


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml has no [project] version"
    return match.group(1)


def recicl_image() -> str:
    return f"recicl/recicl:{project_version()}"


def image_workdir() -> str:
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.M)
    return workdir


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
