"""Real parts for the job-queue tests: throw-away databases (SQLite file, PostgreSQL database),
a Ray head process with token auth, and `vae server` processes. Imported by tests/test_queue_*.py."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import httpx
import pytest
import sqlalchemy

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]
VAE = str(Path(sys.executable).with_name("vae"))


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all sockets held until every port is picked)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def temporary_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL; PostgreSQL databases are dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    name = f"vae_queue_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# No figures (tracking.figures: false): these jobs test the queue, and drawing them would add about
# 3 s to each job's end; a queued job's figures are checked by tests/test_cluster.py.
TINY_SPEC = """\
name: {name}
data: {{limit: 256}}
model: {{hidden: [32], latent_dim: 2}}
optim: {{epochs: 1, batch_size: 64, seed: 0}}
resources: {{num_workers: 1, cpus_per_worker: {cpus}}}
tracking: {{experiment: queue-tests, figures: false}}
"""


def tiny_spec_text(name: str = "tiny", cpus: float = 1) -> str:
    return TINY_SPEC.format(name=name, cpus=cpus)


# ---------------------------------------------------------------------------------------------
# Ray head with token auth


@dataclass
class RayHead:
    address: str  # the dashboard's (Jobs and State APIs)
    gcs_address: str  # what `ray start --address` of another node joins
    token: str
    token_path: Path
    temp_dir: Path
    process: subprocess.Popen
    num_cpus: int

    def client_env(self) -> dict:
        """What a process that talks to this head needs (never set on the test process itself:
        the session's `ray.init()` clusters must not pick up token mode)."""
        return {"RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def server_env(self, workdir: Optional[Path] = None, db_url: Optional[str] = None, **settings: str) -> dict:
        """The environment of a `vae server` (or a queue client) on this head: this process's,
        less any other Ray address or token mode, plus the head's token and address;
        with `workdir`, its state there (VAE_HOME, a SQLite store unless `db_url`); `settings`
        on top (VAE_API_TOKEN=…, quotas …)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        env.update(self.client_env(), VAE_RAY_ADDRESS=self.address)
        if workdir is not None:
            env.update(VAE_HOME=str(workdir / ".vae"), VAE_DB_URL=db_url or f"sqlite:///{workdir / 'queue.db'}")
        env.update(settings)
        return env

    def wait_idle(self, timeout: float = 120) -> "RayHead":
        """Returns once no job on this head is pending or running: a test that shares the head
        starts with all of its CPUs free, whatever the test before it left behind."""
        from vae_service.queue.ray_jobs import RayJobs

        ray = RayJobs(self.address, self.token)
        wait_for(lambda: not [i for i, job in ray.list().items() if job.status in ("PENDING", "RUNNING")],
                 timeout, "the shared Ray head's jobs to end")
        return self


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """`ray start --head --block` on free ports with token auth; stopped (its process group
    only, never a global `ray stop`) at the end."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are limited
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    # Every port Ray would otherwise take at a fixed default (the dashboard agent's 52365, the
    # client server's 10001 …) is chosen free: other Ray clusters may run on this machine.
    gcs, dashboard_port, agent_http, agent_grpc, client, runtime_env, metrics, node_manager, object_manager = free_ports(9)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    log = open(temp_dir / "head.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
         "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--ray-client-server-port", str(client), "--runtime-env-agent-port", str(runtime_env),
         "--metrics-export-port", str(metrics), "--node-manager-port", str(node_manager),
         "--object-manager-port", str(object_manager),
         "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(temp_dir), "--include-dashboard", "true",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 90
    headers = {"Authorization": f"Bearer {token}"}
    try:
        while True:
            try:
                response = httpx.get(f"{address}/api/v0/nodes", headers=headers, timeout=2)
                if response.status_code == 200 and response.json()["data"]["result"]["result"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start: {(temp_dir / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield RayHead(address, f"127.0.0.1:{gcs}", token, token_path, temp_dir, process, num_cpus)
    finally:
        stop_ray_head(process, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def moto_server_executable() -> str:
    """This Python's own `moto_server` (another moto on PATH, another version, answers S3 calls
    differently), else whichever is on PATH."""
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else (shutil.which("moto_server") or "moto_server")


def live_nodes(head: RayHead) -> list[dict]:
    response = httpx.get(f"{head.address}/api/v0/nodes", headers={"Authorization": f"Bearer {head.token}"}, timeout=10)
    return [node for node in response.json()["data"]["result"]["result"] if node.get("state") == "ALIVE"]


# `ray start` gives a new node's raylet a fixed 30 s to register with the head (ray/_private/node.py);
# on a machine loaded by the rest of the suite it can miss that, and then one more start succeeds.
NODE_START_TIMED_OUT = "The current node timed out during startup"
NODE_START_ATTEMPTS = 2


@contextmanager
def ray_worker_node(head: RayHead, num_cpus: int, num_gpus: int = 0) -> Iterator[subprocess.Popen]:
    """Another Ray node on this machine, joined to `head` (`ray start --address … --block`, token
    auth, free ports); yields its `ray start` process (its raylet is a child in its process
    group). `num_gpus`: logical GPUs Ray counts and schedules (no device behind them). Stopped
    by its process group; the head's own stop sweeps whatever is left. A start that timed out
    under load (NODE_START_TIMED_OUT) is tried once more."""
    before = len(live_nodes(head))
    for attempt in range(1, NODE_START_ATTEMPTS + 1):
        process, log = _start_worker_node(head, num_cpus, num_gpus)
        wait_for(lambda: len(live_nodes(head)) > before or process.poll() is not None, 90, "the worker node to join")
        if process.poll() is None:
            break
        said = Path(log.name).read_text()
        stop_process_group(process)
        log.close()
        if NODE_START_TIMED_OUT not in said or attempt == NODE_START_ATTEMPTS:
            pytest.fail(f"ray worker node did not start (attempt {attempt}): {said[-2000:]}")
    try:
        yield process
    finally:
        stop_process_group(process)
        log.close()


def _start_worker_node(head: RayHead, num_cpus: int, num_gpus: int = 0):
    """`ray start --address HEAD --block` on free ports, logging to a file under the head's temp dir."""
    agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager = free_ports(6)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_path))
    log = open(head.temp_dir / f"node-{node_manager}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", head.gcs_address, "--block",
         "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
         "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
         "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager), "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return process, log


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL to its process group."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def stop_ray_head(process: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL to whatever of
    this head is left: its process group and every process whose command line names its own
    temp dir (Ray's daemons all do). Nothing else on the machine is touched."""
    stop_process_group(process)
    marker = str(temp_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


# ---------------------------------------------------------------------------------------------
# vae server processes


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    env: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def start_server(workdir: Path, env: dict, *args: str, name: str = "server", port: Optional[int] = None) -> Server:
    port = port or free_port()
    log_path = workdir / f"{name}-{port}.log"
    process = subprocess.Popen([VAE, "server", "--port", str(port), *args], cwd=workdir, env=env,
                               stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return Server(url, process, log_path, env)
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"vae server did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def api(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def job_state(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/jobs/{job_id}")
    response.raise_for_status()
    return response.json()
