"""A 2-node Ray cluster on this machine, owned by the test that starts it (process trees it
can stop without touching any other Ray): see test_ray_job_submit.py for why and how."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import RAY_TRAIN_TEST_ENV

REPO = Path(__file__).resolve().parents[2]
RUNTIME_ENV = "ray_jobs/runtime_env.yaml"
BIN = Path(sys.executable).parent
CPUS_PER_NODE = 3
STARTUP_TIMEOUT_S = 180
WORKER_START_ATTEMPTS = 3
JOB_TIMEOUT_S = 600
# Stopping: how long SIGTERM gets before SIGKILL. A head that has run jobs takes over 20 s to
# shut down on SIGTERM, and its runtime-env agent ignores SIGTERM; neither grace is part of what
# the stop test checks (that every process of ours ends, and nothing else), so it is kept short.
NODE_STOP_GRACE_S = 5
LEFTOVER_STOP_GRACE_S = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
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
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
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
        self.gcs_port, self.dashboard_port = free_port(), free_port()
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
                f"--ray-client-server-port={free_port()}",
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


def cluster_env() -> dict[str, str]:
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
        # idle workers kept 5 minutes, as recicl's own local runtime does (recicl.raycluster):
        # with Ray's 1 s, every Ray Data stage of a job started fresh processes in the job's
        # virtualenv (the build job 17 of them for 640 events). Measured 2026-12-07: the module
        # 408 -> 362 s, the build job 105 -> 67 s, the train job's tokenizing 37 -> 27 s
        RAY_idle_worker_killing_time_threshold_ms="300000",
    )
    env.update(RAY_TRAIN_TEST_ENV)  # the suite's Ray Train timings, as for the session's Ray
    env.pop("VIRTUAL_ENV", None)
    return env
