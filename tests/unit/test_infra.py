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
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from typer.testing import CliRunner

from recicl.cli import app
from recicl.config import load_config
from recicl.deploy import kuberay
from tests.unit.infra_manifests import (
    CLUSTER_SCOPED,
    CORE_OBJECTS,
    DOCKERFILE,
    GPU,
    INFRA,
    INFRA_README,
    K8S_FILES,
    KUBERAY_OBJECTS,
    LAUNCHER_FILES,
    MLFLOW_DOCKERFILE,
    NAMESPACES,
    ROOT,
    SERVE_CONFIG,
    TRAIN_CONFIG,
    all_objects,
    as_pod_template,
    cluster_spec,
    documents,
    gpu_groups,
    group_resources,
    image_workdir,
    k8s_validate,
    objects_of,
    one,
    pod_templates,
    recicl_image,
    relative,
)

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
