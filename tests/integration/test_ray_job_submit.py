"""`ray job submit` as users run it (README), against a 2-node Ray cluster of our own.

One cluster for the module: a head (`ray start --head`) and a second node (`ray start --address`)
on this machine, each with its own temp dir, ports and 3 logical CPUs, token authentication with
a private token, and a PATH whose `python` is NOT the project's venv (the head's Python is
there to run Ray, like a stock image's): the jobs only run because `--runtime-env
ray_jobs/runtime_env.yaml` gives them their dependencies. `PIP_NO_INDEX=1` on the nodes: the
runtime env's pip step must be satisfied by what is installed (CI is offline).

The jobs, each `ray job submit --address http://127.0.0.1:<dashboard> --working-dir .
--runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/<job>.py ...` from the repo root:
build samples (Ray Data, from a synthetic log), train (Ray Train, DeepSpeed ZeRO-2, 2 workers x
2 CPUs: one fits per node, so they land on different nodes) with a fault injected after the
step-2 checkpoint: Ray Train restarts the worker group, again across the two nodes, and it
resumes from the checkpoint both workers wrote to shared storage; evaluate; promote; monitor
(no feedback yet: exit code 12); retune (fewer new events stored than it asks for: refused,
exit 2, nothing registered; the full re-tune is test_retune.py's). (Resuming
by resubmitting a failed run with the same --run-name is the same restore path, tested on one
node in test_train.py.) Every path handed to a job is an absolute
path in one temp folder both nodes see (the "shared storage"), as a real cluster needs.

Stopping: only the processes this module started (the two `ray start --block` process trees),
never `ray stop`, which would kill every Ray on the machine, the session's `ray_local` included.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.integration.local_cluster import (
    CPUS_PER_NODE,
    REPO,
    RUNTIME_ENV,
    Job,
    LocalCluster,
    cluster_env,
    port_open,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CPUS_PER_TRAIN_WORKER = 2  # 2 x 2 > 3 (CPUS_PER_NODE): one training worker per node
MAX_STEPS = 6
CHECKPOINT_EVERY = 2
FAULT_STEP = 3  # after the step-2 checkpoint, before the step-4 one
RUN_NAME = "rj-train"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Ray's unix socket paths must stay short: temp dirs directly under /tmp.
    root = Path(tempfile.mkdtemp(prefix="rjs-", dir="/tmp"))
    shared = tmp_path_factory.mktemp("ray-job-shared")
    local = LocalCluster(root=root, shared=shared, env=cluster_env())
    try:
        local.start()
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


def _job_config(shared: Path) -> Path:
    """Tiny everything; absolute paths on the shared folder only."""
    config = {
        "workdir": str(shared / "work"),
        "data": {"source": "parquet", "path": str(shared / "events")},
        "samples": {
            "periods": 4,
            "num_demos": 2,
            "history_len": 3,
            "output": str(shared / "samples"),
        },
        "model": {
            "name_or_path": str(shared / "model"),
            "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
            "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 400},
        },
        "prompt": {"max_length": 160},
        "train": {
            "samples_dir": str(shared / "samples"),
            "train_periods": "0-2",
            "val_periods": "3",
            "strategy": "deepspeed",
            "zero_stage": 2,
            "num_workers": 2,
            "cpus_per_worker": CPUS_PER_TRAIN_WORKER,
            "batch_size": 4,
            "max_steps": MAX_STEPS,
            "max_train_samples": 96,
            "checkpoint_every_steps": CHECKPOINT_EVERY,
            "keep_checkpoints": None,
            "max_failures": 1,  # the restart after the injected fault
            "storage_path": str(shared / "checkpoints"),
            "lr": 1e-3,
        },
        "evaluate": {"replicas": 1, "batch_size": 32, "max_samples": 40},
        "mlflow": {
            "tracking_uri": f"sqlite:///{shared / 'mlflow.db'}",
            "experiment": "ray-job-submit",
        },
        "retune": {"min_new_events": 40},
    }
    path = shared / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Pipeline:
    cluster: LocalCluster
    config: Path
    jobs: dict[str, Job] = field(default_factory=dict)


def _ok(job: Job) -> str:
    assert job.rc == 0, job.output[-6000:]
    assert re.search(r"Job '[^']+' succeeded", job.output), job.output[-3000:]
    return job.output


@pytest.fixture(scope="module")
def built(cluster: LocalCluster) -> Pipeline:
    from recicl.data.synth import SynthSpec, write_synthetic

    write_synthetic(SynthSpec(users=40, events_per_user=16, seed=3), cluster.shared / "events")
    config = _job_config(cluster.shared)
    pipeline = Pipeline(cluster, config)
    pipeline.jobs["build"] = cluster.submit(
        "python", "ray_jobs/build_samples.py", "--config", str(config), submission_id="rj-build"
    )
    return pipeline


@pytest.fixture(scope="module")
def trained(built: Pipeline) -> Pipeline:
    """The first attempt dies at step 3 (fault hook); Ray Train restarts the worker group in the
    same job, which resumes from the step-2 checkpoint on the shared storage."""
    from recicl.config import TinyModelSettings
    from recicl.modeling import init_tiny_model

    _ok(built.jobs["build"])
    shared = built.cluster.shared
    tiny = yaml.safe_load(built.config.read_text())["model"]["tiny"]
    init_tiny_model(
        shared / "samples" / "catalog.parquet", shared / "model", TinyModelSettings(**tiny)
    )

    # the runtime env file plus the test-only fault hook's variables (the pip list, hence the
    # virtualenv Ray built for it, is the same)
    faulty = yaml.safe_load((REPO / RUNTIME_ENV).read_text())
    faulty["env_vars"] = {
        **faulty.get("env_vars", {}),
        "RECICL_FAULT_AT_STEP": str(FAULT_STEP),
        "RECICL_FAULT_MARKER": str(shared / "fault-marker"),
    }
    faulty_file = shared / "runtime_env_fault.yaml"
    faulty_file.write_text(yaml.safe_dump(faulty))

    built.jobs["train"] = built.cluster.submit(
        "python", "ray_jobs/train.py", "--config", str(built.config), "--run-name", RUN_NAME,
        runtime_env=str(faulty_file), submission_id="rj-train",
    )  # fmt: skip
    return built


@pytest.fixture(scope="module")
def evaluated(trained: Pipeline) -> Pipeline:
    _ok(trained.jobs["train"])
    shared = trained.cluster.shared
    trained.jobs["evaluate"] = trained.cluster.submit(
        "python", "ray_jobs/evaluate.py", "--config", str(trained.config),
        "--model", "models:/recicl/1", "--samples", str(shared / "samples"),
        "--periods", "3", "--output", str(shared / "eval" / "report.json"),
        submission_id="rj-evaluate",
    )  # fmt: skip
    return trained


@pytest.fixture(scope="module")
def promoted(evaluated: Pipeline) -> Pipeline:
    _ok(evaluated.jobs["evaluate"])
    evaluated.jobs["promote"] = evaluated.cluster.submit(
        "python", "ray_jobs/promote.py", "--config", str(evaluated.config),
        "--version", "1", "--samples", str(evaluated.cluster.shared / "samples"),
        submission_id="rj-promote",
    )  # fmt: skip
    return evaluated


@pytest.fixture(scope="module")
def retuned(promoted: Pipeline) -> Pipeline:
    """Serving stored three more events per user after the log ended (the SQLite store of the
    workdir, where `recicl serve` writes); the monitor has no feedback to judge yet."""
    import pyarrow.parquet as pq

    from recicl.serve.store import Event, open_store

    _ok(promoted.jobs["promote"])
    shared = promoted.cluster.shared
    log = pq.read_table(shared / "events" / "events.parquet").to_pylist()
    items = sorted({row["item_id"] for row in log})
    end = max(row["timestamp"] for row in log)
    users = sorted({row["user_id"] for row in log})
    new = [Event(user, items[(7 * u + k) % len(items)], (u + k) % 2, end + 60 * (3 * u + k) + 1)
           for u, user in enumerate(users) for k in range(3)]  # fmt: skip
    with open_store(f"sqlite:///{shared / 'work' / 'events.db'}") as store:
        assert store.append(new) == len(new)
    promoted.jobs["monitor"] = promoted.cluster.submit(
        "python", "ray_jobs/monitor.py", "--config", str(promoted.config),
        submission_id="rj-monitor",
    )  # fmt: skip
    # The re-tune job on the cluster, asked for more new events than serving stored: it pins
    # the champion, checks its base, reads the store on the shared storage from the job's
    # driver, counts what is new and refuses (exit 2) with nothing registered. (The whole
    # re-tune, which trains and evaluates, is test_retune.py's, in one process: the same CLI
    # command that ray_jobs/retune.py wraps.)
    retune_config = yaml.safe_load(promoted.config.read_text())
    retune_config["retune"]["min_new_events"] = 10 * len(new)
    retune_file = shared / "retune.yaml"
    retune_file.write_text(yaml.safe_dump(retune_config))
    promoted.jobs["retune"] = promoted.cluster.submit(
        "python", "ray_jobs/retune.py", "--config", str(retune_file),
        "--run-name", "rj-retune", submission_id="rj-retune",
    )  # fmt: skip
    promoted.jobs["new_events"] = Job(0, str(len(new)), 0.0)
    return promoted


def _mlflow(pipeline: Pipeline):
    from recicl.registry import client

    return client(f"sqlite:///{pipeline.cluster.shared / 'mlflow.db'}")


def _train_workers(cluster: LocalCluster) -> list[dict[str, Any]]:
    """Every Ray Train worker actor the cluster ran, dead or alive (state API)."""
    return cluster.state("actors", "class_name=RayTrainWorker")


def test_jobs_need_the_runtime_env(cluster: LocalCluster) -> None:
    """Control: the nodes' own `python` cannot run a job; the runtime env is what makes it work."""
    job = cluster.submit("python", "ray_jobs/train.py", "--help", runtime_env=None)
    assert job.rc != 0, job.output[-3000:]
    assert "No module named" in job.output or "not found" in job.output, job.output[-3000:]


def test_two_nodes_on_this_machine(cluster: LocalCluster) -> None:
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    assert sorted(n["is_head_node"] for n in nodes) == [False, True]
    assert len({n["node_ip"] for n in nodes}) == 1  # one machine, two raylets
    assert all(n["resources_total"]["CPU"] == CPUS_PER_NODE for n in nodes)


def test_build_samples_job(built: Pipeline) -> None:
    from recicl.data.samples_folder import SamplesFolder

    output = _ok(built.jobs["build"])
    samples = SamplesFolder.at(built.cluster.shared / "samples")
    manifest = samples.require_manifest()
    assert samples.periods() == [0, 1, 2, 3]
    written = samples.read_table(samples.periods())
    assert written.num_rows == sum(p.samples for p in manifest.periods) > 0
    assert str(written.num_rows) in output.replace(",", "")  # the command's summary, streamed
    # the job's code came from the uploaded working dir, without outputs, weights or venvs
    head = built.cluster.root / "head" / "session_latest" / "runtime_resources"
    unpacked = [p for p in (head / "working_dir_files").glob("_ray_pkg_*") if p.is_dir()]
    assert unpacked, sorted(p.name for p in head.iterdir())
    for package in unpacked:
        assert (package / "ray_jobs" / "build_samples.py").is_file()
        assert (package / "recicl" / "cli" / "__init__.py").is_file()
        for excluded in (".venv", ".cache", "recicl-work", ".git", "mlruns"):
            assert not (package / excluded).exists(), excluded
    # ... and its dependencies from the runtime env's pip list, as a virtualenv on each node
    for node in ("head", "worker*"):
        pythons = built.cluster.root.glob(
            f"{node}/session_latest/runtime_resources/pip/*/virtualenv/bin/python"
        )
        assert list(pythons), node


def test_train_job_two_nodes_fault_and_resume(trained: Pipeline) -> None:
    from recicl.train.contract import TRAINER_STATE_FILE

    cluster, shared = trained.cluster, trained.cluster.shared
    output = _ok(trained.jobs["train"])
    assert (shared / "fault-marker").read_text().startswith(f"fault injected at step {FAULT_STEP}")
    final = re.search(r"run_id=([0-9a-f]{32}) version=(\d+)", output)
    assert final, output[-3000:]
    run_id, version = final.groups()
    assert version == "1"

    # both attempts (the faulted one and the restart): 2 workers each, on the 2 different nodes
    # (one per node fits: 2 x 2 CPUs > 3)
    node_ids = {n["node_id"] for n in cluster.alive_nodes()}
    workers = _train_workers(cluster)
    assert len(workers) == 4, workers
    assert len({w["job_id"] for w in workers}) == 1
    assert {w["node_id"] for w in workers} == node_ids
    assert sorted(Counter(w["node_id"] for w in workers).values()) == [2, 2]  # one per attempt
    assert all(w["state"] == "DEAD" for w in workers)  # the run is over: none left behind

    # resumed from the last checkpoint of attempt 1, every step logged exactly once
    mlc = _mlflow(trained)
    resumed = [(m.step, m.value) for m in mlc.get_metric_history(run_id, "resumed_from_step")]
    assert resumed == [(CHECKPOINT_EVERY, float(CHECKPOINT_EVERY))], resumed
    losses = sorted(m.step for m in mlc.get_metric_history(run_id, "loss"))
    assert losses == list(range(1, MAX_STEPS + 1)), losses
    run = mlc.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["sys.world_size"] == "2"

    # checkpoints on the shared storage, each holding the state both ranks (nodes) wrote
    run_dir = shared / "checkpoints" / RUN_NAME
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint_step*"))
    expected = [f"checkpoint_step{s:07d}" for s in range(2, MAX_STEPS + 1, CHECKPOINT_EVERY)]
    assert checkpoints == expected, checkpoints
    last = run_dir / checkpoints[-1]
    assert json.loads((last / TRAINER_STATE_FILE).read_text())["step"] == MAX_STEPS
    state_files = [p.name for p in (last / "deepspeed" / "state").iterdir()]
    assert any("rank_0" in f for f in state_files) and any("rank_1" in f for f in state_files)


def test_evaluate_job(evaluated: Pipeline) -> None:
    from recicl.data.samples_folder import SamplesFolder

    _ok(evaluated.jobs["evaluate"])
    shared = evaluated.cluster.shared
    report = json.loads((shared / "eval" / "report.json").read_text())
    assert report["model"]["version"] == "1"
    assert report["samples"]["periods"] == [3]
    assert report["samples"]["hash"] == SamplesFolder.at(shared / "samples").content_id()
    assert report["periods"]["3"]["count"] == report["overall"]["count"] == 40  # max_samples
    assert 0.0 <= report["overall"]["auc"] <= 1.0


def test_promote_job_moves_the_alias(promoted: Pipeline) -> None:
    _ok(promoted.jobs["promote"])
    champion = _mlflow(promoted).get_model_version_by_alias("recicl", "champion")
    assert str(champion.version) == "1"


def test_monitor_job_exits_with_its_decision(retuned: Pipeline) -> None:
    """No joined feedback yet: the decision is no-data, exit code 12, which fails the Ray job
    (a scheduler reads the code, infra/kuberay/cronjob-retune.yaml)."""
    job = retuned.jobs["monitor"]
    assert job.rc == 1, job.output[-3000:]
    assert "no-data" in job.output and re.search(r"exit code 12", job.output), job.output[-3000:]


def test_retune_job_refuses_too_few_new_events(retuned: Pipeline) -> None:
    job = retuned.jobs["retune"]
    assert job.rc == 1, job.output[-3000:]  # the job failed: the command's exit 2
    stored = retuned.jobs["new_events"].output
    assert f"holds {stored} event(s) after the log ends" in job.output, job.output[-3000:]
    assert "nothing was registered" in job.output and "Traceback" not in job.output
    versions = _mlflow(retuned).search_model_versions("name='recicl'")
    assert [str(v.version) for v in versions] == ["1"]


def test_stop_only_this_cluster(cluster: LocalCluster, ray_local) -> None:
    """Stopping ends every process of our two nodes and nothing else: the session's Ray
    (``ray_local``, started in this process) still answers."""
    gcs = cluster.gcs_port
    owned = dict(cluster.owned)
    assert owned and port_open(gcs)
    left = cluster.stop()
    assert not left, left
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in owned.values())
    assert not port_open(gcs)
    assert ray_local.cluster_resources().get("CPU", 0) > 0
