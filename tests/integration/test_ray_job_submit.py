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
(no feedback yet: exit code 12); retune (events stored after the log: a warm candidate in
shadow). (Resuming
by resubmitting a failed run with the same --run-name is the same restore path, tested on one
node in test_train.py.) Every path handed to a job is an absolute
path in one temp folder both nodes see (the "shared storage"), as a real cluster needs.

Stopping: only the processes this module started (the two `ray start --block` process trees),
never `ray stop`, which would kill every Ray on the machine, the session's `ray_local` included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import RAY_TRAIN_TEST_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUNTIME_ENV = "ray_jobs/runtime_env.yaml"
BIN = Path(sys.executable).parent
CPUS_PER_NODE = 3
CPUS_PER_TRAIN_WORKER = 2  # 2 x 2 > 3: one training worker per node
MAX_STEPS = 6
CHECKPOINT_EVERY = 2
FAULT_STEP = 3  # after the step-2 checkpoint, before the step-4 one
RUN_NAME = "rj-train"
STARTUP_TIMEOUT_S = 180
WORKER_START_ATTEMPTS = 3
JOB_TIMEOUT_S = 600
# Stopping: how long SIGTERM gets before SIGKILL. A head that has run jobs takes over 20 s to
# shut down on SIGTERM, and its runtime-env agent ignores SIGTERM; neither grace is part of what
# the stop test checks (that every process of ours ends, and nothing else), so it is kept short.
NODE_STOP_GRACE_S = 5
LEFTOVER_STOP_GRACE_S = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class NodeExited(RuntimeError):
    """A `ray start` process ended while its node was expected to come up."""


@dataclass
class Job:
    rc: int
    output: str
    seconds: float


@dataclass
class LocalCluster:
    """A head and a worker node started by this module (process trees it owns)."""

    root: Path  # temp dirs of both nodes
    shared: Path  # "shared storage": every path the jobs get lives here
    env: dict[str, str]
    gcs_port: int = 0
    dashboard_port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    owned: dict[int, psutil.Process] = field(default_factory=dict)
    stopped: bool = False

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_args(self, name: str) -> list[str]:
        return [
            f"--temp-dir={self.root / name}",
            f"--num-cpus={CPUS_PER_NODE}",
            f"--node-manager-port={_free_port()}",
            f"--object-manager-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--object-store-memory={300 * 1024 * 1024}",
            "--disable-usage-stats",
            "--block",
        ]

    def _spawn(self, args: list[str], log: str, env: dict[str, str]) -> subprocess.Popen:
        out = (self.root / log).open("wb")
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,  # its own process group: signals from pytest don't reach it
        )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        # Ray 2.60 swaps a loopback node address for the machine's (`--node-ip-address=127.0.0.1`
        # and `--address=127.0.0.1:...` included) and its gRPC servers listen on every
        # interface; the dashboard (job API) listens on 127.0.0.1 only, and every RPC needs the
        # cluster's private token.
        self._spawn(
            [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
                *self._node_args("head"),
            ],
            "head.log",
            self.env,
        )
        head = self.procs[-1]
        self._wait(self._dashboard_up, "the head's dashboard", head)
        self._wait(lambda: len(self.alive_nodes()) == 1, "the head node", head)
        # The second node joins once the head is up. On a loaded machine its raylet can miss
        # the fixed 30 s registration deadline of `ray start`: then it is started again.
        for attempt in range(1, WORKER_START_ATTEMPTS + 1):
            worker = self._spawn(
                [f"--address=127.0.0.1:{self.gcs_port}", *self._node_args(f"worker{attempt}")],
                f"worker{attempt}.log",
                self.env,
            )
            try:
                self._wait(lambda: len(self.alive_nodes()) == 2, "the second node", head, worker)
                return
            except NodeExited:
                if attempt == WORKER_START_ATTEMPTS:
                    raise

    def _wait(self, ready: Any, what: str, *watched: subprocess.Popen) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self._remember_processes()
            for proc in watched:
                if proc.poll() is not None:
                    raise NodeExited(f"`ray start` exited ({proc.returncode}):\n{self.logs()}")
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} not up after {STARTUP_TIMEOUT_S}s:\n{self.logs()}")

    def _dashboard_up(self) -> bool:
        request = urllib.request.Request(
            f"{self.address}/api/version",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except urllib.error.URLError:
            return False

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    def ray(self, *args: str, timeout: float = 60) -> str:
        """The `ray` CLI against this cluster (state API, job status), as JSON-capable text."""
        done = subprocess.run(
            [str(BIN / "ray"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise subprocess.SubprocessError(f"ray {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def state(self, kind: str, *filters: str) -> list[dict[str, Any]]:
        args = ["list", kind, f"--address={self.address}", "--format=json", "--detail"]
        for condition in filters:
            args += ["--filter", condition]
        return json.loads(self.ray(*args, "--limit=10000"))

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def submit(
        self, *entrypoint: str, runtime_env: str | None = RUNTIME_ENV, submission_id: str = ""
    ) -> Job:
        """`ray job submit` exactly as the README shows (from the repo root), waiting for the
        end: exit status 0 when the job succeeded, 1 when it failed."""
        command = [str(BIN / "ray"), "job", "submit", f"--address={self.address}"]
        if submission_id:
            command.append(f"--submission-id={submission_id}")
        command += ["--working-dir", "."]
        if runtime_env:
            command += ["--runtime-env", runtime_env]
        command += ["--", *entrypoint]
        started = time.perf_counter()
        done = subprocess.run(
            command,
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT_S,
            check=False,
        )
        seconds = time.perf_counter() - started
        print(f"[ray job submit] {' '.join(entrypoint[:2])}: rc {done.returncode}, {seconds:.0f}s")
        return Job(done.returncode, done.stdout + done.stderr, seconds)

    def _remember_processes(self) -> None:
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    self.owned.setdefault(p.pid, p)
            except psutil.NoSuchProcess:
                continue
        for p in psutil.process_iter(["cmdline"]):  # e.g. daemons reparented away from ray start
            if any(str(self.root) in arg for arg in p.info["cmdline"] or []):
                self.owned.setdefault(p.pid, p)

    def stop(self) -> list[psutil.Process]:
        """SIGTERM the two `ray start --block` processes (each shuts its node down), then kill
        whatever of their process trees is left, by PID. Returns the processes still alive."""
        if self.stopped:
            return []
        self.stopped = True
        self._remember_processes()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + NODE_STOP_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
        self._remember_processes()
        leftover = [p for p in self.owned.values() if p.is_running()]
        for p in leftover:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(leftover, timeout=LEFTOVER_STOP_GRACE_S)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, alive = psutil.wait_procs(alive, timeout=5)
        return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def _cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PIP_"))}
    # The nodes' PATH does not lead to the project's venv: `python` in a job entrypoint is
    # whatever the runtime env provides (the venv's python only runs Ray itself, by full path).
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    env.update(
        PATH=os.pathsep.join(path),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        PIP_NO_INDEX="1",  # the runtime env's pip step must find everything installed
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        DS_ACCELERATOR="cpu",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(RAY_TRAIN_TEST_ENV)  # the suite's Ray Train timings, as for the session's Ray
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Ray's unix socket paths must stay short: temp dirs directly under /tmp.
    root = Path(tempfile.mkdtemp(prefix="rjs-", dir="/tmp"))
    shared = tmp_path_factory.mktemp("ray-job-shared")
    local = LocalCluster(root=root, shared=shared, env=_cluster_env())
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
    promoted.jobs["retune"] = promoted.cluster.submit(
        "python", "ray_jobs/retune.py", "--config", str(promoted.config),
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
    manifest = samples.manifest()
    assert samples.periods() == [0, 1, 2, 3]
    written = samples.read_table(samples.periods())
    assert written.num_rows == sum(p["samples"] for p in manifest["periods"]) > 0
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
    from recicl.train.loop import TRAINER_STATE_FILE

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


def test_retune_job_enters_a_warm_candidate_in_shadow(retuned: Pipeline) -> None:
    from recicl.serve.traffic import TRAFFIC_TAG, decode_override

    output = _ok(retuned.jobs["retune"])
    assert "version=2" in output, output[-3000:]
    mlc = _mlflow(retuned)
    version = mlc.get_model_version("recicl", "2")
    assert version.tags["recicl.retune.from"] == "1"
    assert version.tags["recicl.retune.warm"] == "true"
    traffic = decode_override(mlc.get_registered_model("recicl").tags[f"{TRAFFIC_TAG}.champion"])
    assert traffic is not None and traffic.shadow.version == 2
    assert str(mlc.get_model_version_by_alias("recicl", "champion").version) == "1"
    state = json.loads(
        (retuned.cluster.shared / "work" / "retune" / "rj-retune" / "retune.json").read_text()
    )
    assert state["exported_events"] == int(retuned.jobs["new_events"].output)


def test_stop_only_this_cluster(cluster: LocalCluster, ray_local) -> None:
    """Stopping ends every process of our two nodes and nothing else: the session's Ray
    (``ray_local``, started in this process) still answers."""
    gcs = cluster.gcs_port
    owned = dict(cluster.owned)
    assert owned and _port_open(gcs)
    left = cluster.stop()
    assert not left, left
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in owned.values())
    assert not _port_open(gcs)
    assert ray_local.cluster_resources().get("CPU", 0) > 0
