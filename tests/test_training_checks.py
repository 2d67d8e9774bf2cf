"""The settings handed to training workers (environment.forwarded_env) reach them: checked on the
wire, against a real `mlflow server` behind a proxy that demands HTTP basic auth. The password
travels without a Ray runtime environment (environment.sealed_secrets), so Ray never logs it.

MLflow's own basic-auth app needs Flask-WTF, which this project does not install; the proxy
below is the stand-in: it refuses every request without the right `Authorization` header (401)
and passes the others to the server. For the requests that only rank 0 makes (its epoch logger
reads the run's metric history and logs each epoch) it also looks up, in /proc, which process
owns the client's socket: the credentials are seen coming from a Ray Train worker itself.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vae_service.tracking.mlflow_run import client

pytestmark = pytest.mark.slow

RANK0_ONLY = ("/metrics/get-history", "/runs/log-batch")  # the epoch logger's calls (the driver also logs batches)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def socket_owner(client_port: int, server_port: int) -> str:
    """The command line (process title) of the local process whose TCP socket goes from
    `client_port` to `server_port` on this machine, from /proc (Linux); "" when not found."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == client_port and int(remote.rsplit(":", 1)[1], 16) == server_port:
                inodes.add(f"socket:[{inode}]")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) in inodes:
                    return (fd_dir.parent / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:  # the process ended, or is not ours to read
            continue
    return ""


class AuthProxy(ThreadingHTTPServer):
    """HTTP basic auth in front of `upstream`; `seen` records (method, path, authorized, owner)."""

    daemon_threads = True

    def __init__(self, upstream: str, username: str, password: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.seen: list[tuple[str, str, bool, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _handle(self) -> None:
        proxy: AuthProxy = self.server  # type: ignore[assignment]
        body = self._body()
        authorized = self.headers.get("Authorization") == proxy.expected
        owner = socket_owner(self.client_address[1], proxy.server_address[1]) if any(p in self.path for p in RANK0_ONLY) else ""
        proxy.seen.append((self.command, self.path, authorized, owner))
        if not authorized:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "authorization", "connection", "transfer-encoding", "content-length")}
        request = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, reply_headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, reply_headers, data = exc.code, exc.headers, exc.read()
        self.send_response(status)
        for key, value in reply_headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


@pytest.fixture
def guarded_mlflow(tmp_path):
    """A real `mlflow server` (SQLite, local artifacts) reachable only through an AuthProxy."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    upstream = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{upstream}/health", timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                log.close()
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    password = uuid.uuid4().hex  # in no environment before this test: only forwarding can deliver it
    proxy = AuthProxy(upstream, "vae-test", password)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": proxy.url, "username": "vae-test", "password": password, "proxy": proxy}
    finally:
        proxy.shutdown()
        proxy.server_close()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_mlflow_store_and_credentials_reach_rank_0(ray_cluster, tiny_spec, run_job, guarded_mlflow, monkeypatch):
    # Ray (the session's cluster, started before this test) never had these settings in its
    # environment: a worker can only get them from what the run hands it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", guarded_mlflow["url"])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", guarded_mlflow["username"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", guarded_mlflow["password"])
    proxy: AuthProxy = guarded_mlflow["proxy"]
    # The proxy does refuse a request without the credentials.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{guarded_mlflow['url']}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert refused.value.code == 401
    proxy.seen.clear()

    result = run_job(tiny_spec(optim__epochs=2, tracking__experiment="guarded", tracking__register_as="guarded"))

    # Rank 0 read the run's history and logged its epochs through the proxy, from a training
    # worker process (this one-worker run's Ray task), with the credentials (without them: 401, and the run would have failed; with
    # the wrong store, the driver's run would not exist there).
    from_workers = [(method, path.split("?")[0], ok) for method, path, ok, owner in proxy.seen
                    if owner.startswith(("ray::RayTrainWorker", "ray::train_one_worker"))]
    assert ("GET", "/api/2.0/mlflow/metrics/get-history", True) in from_workers, proxy.seen
    assert ("POST", "/api/2.0/mlflow/runs/log-batch", True) in from_workers, proxy.seen
    assert all(ok for _, _, ok in from_workers)
    assert all(ok for _, _, ok, _ in proxy.seen)  # the driver's calls carried them too
    # ...and the server has what rank 0 logged: each epoch once.
    mlflow = client()  # through the proxy, with the credentials
    assert mlflow.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert sorted(m.step for m in mlflow.get_metric_history(result.mlflow_run_id, "train_loss")) == [0, 1]
    # The password reached the worker without a runtime environment: none of Ray's logs has it
    # (its runtime-env agent logs every runtime environment it sets up).
    logs = Path(ray_cluster._private.worker.global_worker.node.get_logs_dir_path())
    holding = [path.name for path in logs.rglob("*") if path.is_file() and guarded_mlflow["password"].encode() in path.read_bytes()]
    assert holding == [], f"the MLflow password is in Ray's logs: {holding}"
