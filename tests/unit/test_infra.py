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
import json
import os
import re
import shlex
import subprocess
import sys
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
    RETUNE_CONFIG,
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
    ray = {"RayCluster", "RayJob", "RayService", "CronJob"}  # the CronJob schedules Ray jobs
    assert ray | {"Deployment", "StatefulSet", "Service"} <= kinds
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


# --- the schedule: `recicl monitor` hourly, a warm re-tune when it says so --------------------

SCHEDULE = "recicl-retune"


def schedule_pod() -> dict[str, Any]:
    return one("CronJob", SCHEDULE)["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def schedule_container() -> dict[str, Any]:
    (container,) = schedule_pod()["containers"]
    return container


def schedule_script() -> str:
    container = schedule_container()
    assert container["command"] == ["bash", "-c"]
    (script,) = container["args"]
    return script


def schedule_env() -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in schedule_container()["env"]}


def schedule_invocations() -> list[list[str]]:
    """The ``python ray_jobs/x.py ...`` lines of the script, read as test_ray_jobs reads them."""
    found = re.findall(r"python (ray_jobs/\S+\.py[^\n`]*)", schedule_script())
    return [shlex.split(line) for line in found]


#: Minute, hour, day of month, month, day of week: the ranges a CronJob schedule accepts.
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_FIELD = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?")


def cron_is_valid(schedule: str) -> bool:
    fields = schedule.split()
    if len(fields) != len(CRON_RANGES):
        return False
    for field, (low, high) in zip(fields, CRON_RANGES, strict=True):
        for part in field.split(","):
            if not CRON_FIELD.fullmatch(part):
                return False
            values = [int(n) for n in re.findall(r"\d+", part.split("/")[0])]
            if any(not low <= value <= high for value in values):
                return False
    return True


def cron_period_seconds(schedule: str) -> int | None:
    """Seconds between two runs of a schedule that repeats at a fixed period; None otherwise."""
    minute, hour, *rest = schedule.split()
    if any(field != "*" for field in rest):
        return None
    every = re.fullmatch(r"\*/(\d+)", minute)
    if every and hour == "*" and 60 % int(every.group(1)) == 0:
        return int(every.group(1)) * 60
    every = re.fullmatch(r"\*/(\d+)", hour)
    if minute.isdigit() and every and 24 % int(every.group(1)) == 0:
        return int(every.group(1)) * 3600
    if minute.isdigit():
        return 3600 if hour == "*" else 86400 if hour.isdigit() else None
    return None


def test_cron_helpers_read_schedules_as_kubernetes_does():
    assert cron_is_valid("7 * * * *") and cron_is_valid("*/15 2-4,6 * * 1-5")
    assert not cron_is_valid("60 * * * *") and not cron_is_valid("7 * * *")
    assert not cron_is_valid("@hourly x") and not cron_is_valid("7 25 * * *")
    assert cron_period_seconds("7 * * * *") == 3600
    assert cron_period_seconds("*/15 * * * *") == 900
    assert cron_period_seconds("0 */6 * * *") == 6 * 3600
    assert cron_period_seconds("30 2 * * *") == 86400
    assert cron_period_seconds("0 2 * * 1") is None  # weekly: no fixed period read here


def test_schedule_runs_one_at_a_time_hourly_like_the_monitor_window():
    cron = one("CronJob", SCHEDULE)
    spec = cron["spec"]
    assert cron_is_valid(spec["schedule"]), spec["schedule"]
    # Every hour judged once: the cadence is the window the monitor compares.
    window = load_config(ROOT / RETUNE_CONFIG).monitor.window_seconds
    assert cron_period_seconds(spec["schedule"]) == window
    assert spec["concurrencyPolicy"] == "Forbid"  # never a monitor beside a running re-tune
    assert spec["startingDeadlineSeconds"] > 0  # missed runs are skipped, never piled up
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and schedule_pod()["restartPolicy"] == "Never"


def test_schedule_holds_no_kubernetes_credentials():
    """The pod only calls the Ray Jobs API: no service-account token, no Role, no kubectl."""
    pod = schedule_pod()
    assert pod["automountServiceAccountToken"] is False
    account = one("ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["namespace"] == one("CronJob", SCHEDULE)["metadata"]["namespace"]
    assert account["automountServiceAccountToken"] is False
    for binding in [*objects_of("RoleBinding"), *objects_of("ClusterRoleBinding")]:
        names = {subject["name"] for subject in binding.get("subjects", [])}
        assert account["metadata"]["name"] not in names, binding["metadata"]["name"]
    assert "kubectl" not in schedule_script()
    assert not any("secretKeyRef" in v.get("valueFrom", {}) for v in schedule_env().values())


def test_schedule_submits_to_the_head_service_of_the_raycluster():
    url = urlparse(schedule_env()["RAY_ADDRESS"]["value"])
    match = re.fullmatch(
        r"([a-z0-9-]+)-head-svc\.([a-z0-9-]+)\.svc(\.cluster\.local)?", url.hostname or ""
    )
    assert match, f"{url.hostname}: not the head Service KubeRay names <raycluster>-head-svc"
    cluster = one("RayCluster", match.group(1))
    assert cluster["metadata"]["namespace"] == match.group(2)
    (head,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in head["ports"]}
    assert url.scheme == "http" and url.port == ports["dashboard"]  # the Ray Jobs API
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    # The project folder of the image is the jobs' working dir, as in the RayJobs.
    assert schedule_container()["image"] == recicl_image()
    assert f"--working-dir {image_workdir()} " in schedule_script()
    # The Job's name (one per scheduled minute) names the Ray jobs and the training run.
    field = schedule_env()["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['batch.kubernetes.io/job-name']"


def test_schedule_runs_the_monitor_then_a_warm_retune_of_the_champion():
    invocations = schedule_invocations()
    assert [argv[0] for argv in invocations] == ["ray_jobs/monitor.py", "ray_jobs/retune.py"]
    from tests.unit.test_ray_jobs import JOB_COMMANDS

    for argv in invocations:
        assert argv[argv.index("--config") + 1] == RETUNE_CONFIG
        command: Any = typer.main.get_command(app)
        for name in JOB_COMMANDS[Path(argv[0]).name]:
            command = command.commands[name]
        command.make_context(command.name, argv[1:])  # a renamed or removed flag fails here
    cfg = load_config(ROOT / RETUNE_CONFIG)
    # The re-tune pins the version behind serve.alias and continues it (retune.warm).
    assert cfg.serve.alias == "champion" and cfg.retune.warm and cfg.train.init_from is None
    assert cfg.retune.enter_as == "shadow"  # it meets users only through promote --live
    # A warm start continues the champion's adapter: the cold run's base, LoRA shape and prompts.
    cold = load_config(ROOT / TRAIN_CONFIG)
    assert cfg.model.name_or_path == cold.model.name_or_path
    assert cfg.model.lora == cold.model.lora and cfg.prompt == cold.prompt
    assert cfg.mlflow.registered_model == cold.mlflow.registered_model
    assert cfg.train.samples_dir == cold.train.samples_dir  # where the sample job writes
    # It trains on recicl-cluster: its GPU group must hold one GPU (and the CPUs) per worker.
    groups = gpu_groups(one("RayCluster", "recicl-cluster")["spec"])
    assert sum(g["maxReplicas"] * group_resources(g)[1] for g in groups) >= cfg.train.num_workers
    for group in groups:
        cpu, gpu = group_resources(group)
        assert cpu >= gpu * cfg.train.cpus_per_worker
    assert cfg.train.use_gpu and str(cfg.train.storage_path).startswith("s3://")


def test_the_fake_ray_of_the_next_test_has_the_real_apis_names():
    from ray.dashboard.modules.job.pydantic_models import JobDetails
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert {"driver_exit_code", "submission_id", "status"} <= set(JobDetails.model_fields)
    assert hasattr(JobSubmissionClient, "get_job_info") and hasattr(
        JobSubmissionClient, "list_jobs"
    )
    assert JobStatus.PENDING == "PENDING" and JobStatus.RUNNING == "RUNNING"
    script = schedule_script()
    assert ".driver_exit_code" in script and "client.list_jobs()" in script


FAKE_RAY_CLI = """\
import json, os, sys
args = sys.argv[1:]
assert args[:2] == ["job", "submit"], args
entrypoint = args[args.index("--") + 1 :]
options = args[2 : args.index("--")]
flags = dict(zip(options[::2], options[1::2]))
code = json.loads(os.environ["FAKE_CODES"])[os.path.basename(entrypoint[1])]
state = json.load(open(os.environ["FAKE_STATE"]))
state[flags["--submission-id"]] = {
    "entrypoint": entrypoint, "flags": flags, "driver_exit_code": code,
    "status": "SUCCEEDED" if code == 0 else "FAILED",
}
json.dump(state, open(os.environ["FAKE_STATE"], "w"))
sys.exit(0 if code == 0 else 1)  # as `ray job submit`: 1 for any failed job
"""

FAKE_JOB_SUBMISSION = """\
import json, os
from types import SimpleNamespace


class JobSubmissionClient:
    def __init__(self, address):
        assert address == os.environ["FAKE_ADDRESS"], address
        self.state = json.load(open(os.environ["FAKE_STATE"]))

    def get_job_info(self, job_id):
        return SimpleNamespace(submission_id=job_id, **self.state[job_id])

    def list_jobs(self):
        return [self.get_job_info(job_id) for job_id in self.state]
"""


@pytest.mark.parametrize(
    ("monitor", "retune", "earlier", "status", "submitted"),
    [
        (0, None, {}, 0, ["monitor"]),  # ok
        (12, None, {}, 0, ["monitor"]),  # no-data
        (11, None, {}, 11, ["monitor"]),  # rollback: advised, not done
        (10, 0, {}, 0, ["monitor", "retune"]),  # retune, and its version is in shadow
        (10, 2, {}, 1, ["monitor", "retune"]),  # retune failed (e.g. no new events)
        (2, None, {}, 1, ["monitor"]),  # the monitor crashed: a config error exits 2
        (None, None, {}, 1, ["monitor"]),  # the driver never ran (runtime env failed)
        (10, 0, {"scheduled-recicl-retune-1-retune": "RUNNING"}, 0, []),  # busy: skip
        (10, 0, {"scheduled-recicl-retune-1-retune": "SUCCEEDED"}, 0, ["monitor", "retune"]),
        (10, 0, {"recicl-train-by-hand": "RUNNING"}, 0, ["monitor", "retune"]),  # not ours
    ],
)
def test_schedule_script_acts_on_the_monitors_exit_code(
    tmp_path: Path,
    monitor: int | None,
    retune: int | None,
    earlier: dict[str, str],
    status: int,
    submitted: list[str],
):
    """The pod's script, run with a fake `ray` CLI and Jobs SDK that record what it submits."""
    bin_dir, fake = tmp_path / "bin", tmp_path / "fake"
    (fake / "ray").mkdir(parents=True)
    bin_dir.mkdir()
    (fake / "ray" / "__init__.py").write_text("")
    (fake / "ray" / "job_submission.py").write_text(FAKE_JOB_SUBMISSION)
    (bin_dir / "ray").write_text(f"#!{sys.executable}\n{FAKE_RAY_CLI}")
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for tool in ("ray", "python"):
        (bin_dir / tool).chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps({job: {"status": s, "driver_exit_code": None} for job, s in earlier.items()})
    )
    address = schedule_env()["RAY_ADDRESS"]["value"]
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(fake),
        "RAY_ADDRESS": address,
        "JOB_NAME": "recicl-retune-29000000",
        "FAKE_ADDRESS": address,
        "FAKE_STATE": str(state),
        "FAKE_CODES": json.dumps({"monitor.py": monitor, "retune.py": retune}),
    }
    done = subprocess.run(
        ["bash", "-c", schedule_script()], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == status, done.stdout + done.stderr
    jobs = {k: v for k, v in json.loads(state.read_text()).items() if k not in earlier}
    expected = [f"scheduled-recicl-retune-29000000-{what}" for what in submitted]
    assert list(jobs) == expected
    invocations = dict(zip(["monitor", "retune"], schedule_invocations(), strict=True))
    for what, job in zip(submitted, jobs.values(), strict=True):
        assert job["flags"] == {
            "--address": address,
            "--submission-id": f"scheduled-recicl-retune-29000000-{what}",
            "--working-dir": image_workdir(),
        }
        argv = [a.replace("$JOB_NAME", "recicl-retune-29000000") for a in invocations[what]]
        assert job["entrypoint"] == ["python", *argv]
    if "retune" in submitted:
        assert jobs[expected[1]]["entrypoint"][-2:] == ["--run-name", "recicl-retune-29000000"]
