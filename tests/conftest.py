"""Shared fixtures: one real local Ray cluster per test session (per xdist worker), one Ray head
with token auth for the queue modules, moto's S3 server, MNIST from ../shared/data. How the
suite is scheduled and timed: tests/suite_plan.py."""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

import pytest
import suite_plan
from queue_support import BACKENDS

from vae_service.environment import applied, apply_process_defaults

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VAE_DATA_DIR", str(REPO.parent / "shared" / "data"))
# README's command passes ../shared/data; tests change directories, so make it absolute.
os.environ["VAE_DATA_DIR"] = str(Path(os.environ["VAE_DATA_DIR"]).resolve())
# Runs log to a throw-away local MLflow store unless a test points them at a server: one per
# process, so that pytest-xdist's workers (which inherit this process's environment) never share
# a SQLite file. A store the user set is kept.
if os.environ.get("MLFLOW_TRACKING_URI", "") == os.environ.get("VAE_TESTS_OWN_MLFLOW_URI", ""):
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["VAE_TESTS_OWN_MLFLOW_URI"] = \
        f"sqlite:///{tempfile.mkdtemp(prefix='vae-tests-mlflow-')}/mlflow.db"
# The test process is an entry point, like the `vae` CLI: MLflow's process defaults, set once.
apply_process_defaults()
# The `mlflow server`s tests start run none of MLflow's server jobs (unused here): seven
# job-queue worker processes and about 45 CPU-s less per server (as docker-compose.yml's).
os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"


def pytest_configure(config):
    config.pluginmanager.register(suite_plan, "suite_plan")  # xdist groups, order, time limits


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray local cluster, shared by every test that trains (starting one costs ~10 s)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_cluster) -> str:
    """The session cluster's address: a `vae run` subprocess given it as RAY_ADDRESS joins this
    cluster instead of starting a local Ray of its own (10–20 s of every such test)."""
    return ray_cluster.get_runtime_context().gcs_address


class SharedHead:
    """The queue modules' token-auth Ray head (2 CPUs): started when a module first asks for it,
    stopped after the last test of those modules (`pytest_runtest_teardown` below: they run back
    to back, one xdist group), so it does not idle through the rest of the session; a later
    module that asks again gets a new one."""

    def __init__(self):
        self._stack: ExitStack | None = None
        self._head = None

    def get(self):
        """The head, once no job on it is pending or running (each module starts with every CPU free)."""
        from queue_support import ray_head

        if self._head is None:
            self._stack = ExitStack()
            self._head = self._stack.enter_context(ray_head(num_cpus=2))
        return self._head.wait_idle()

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._head = None


_QUEUE_HEAD = SharedHead()


@pytest.fixture(scope="session")
def queue_head():
    """The head shared by the queue's end-to-end modules (test_queue_ray, test_queue_preemption,
    test_queue_ui: one xdist group, so one worker runs them one after the other). Each module
    takes it through its `head` fixture: `queue_head.get()`."""
    yield _QUEUE_HEAD
    _QUEUE_HEAD.stop()


@pytest.hookimpl(trylast=True)  # after pytest's own, which tears down the module's servers on the head
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _in_queue_modules(item) and not _in_queue_modules(nextitem):
        _QUEUE_HEAD.stop()


def _in_queue_modules(test: pytest.Item | None) -> bool:
    # By module, not by fixture: a test of these modules that needs no head may sit between two that do.
    return test is not None and suite_plan.group_of(test) == suite_plan.QUEUE_HEAD_GROUP


@pytest.fixture
def run_job():
    """`execute` with no display, for jobs expected to succeed: returns the job kind's record
    (RunResult, SweepResult…); a job error fails the test with the job's own message."""
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    def run(job, resume=None):
        outcome = execute(job, resume=resume, reporter=Reporter.quiet())
        assert outcome.error is None, str(outcome.error)
        return outcome.result

    return run


@pytest.fixture
def tiny_spec(tmp_path):
    """A spec factory: 2,000 MNIST images, 1 epoch, runs under tmp_path, no figures (~3 s of a
    run's end: a test that checks them sets tracking__figures=True); `--set`-style overrides."""
    from vae_service.core.spec_loading import apply_overrides, validate_data

    def make(**overrides):
        base = {
            "name": "tiny",
            "data": {"limit": 2000},
            "model": {"hidden": [64], "latent_dim": 4},
            "optim": {"epochs": 1, "batch_size": 100, "seed": 0},
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "storage": {"uri": str(tmp_path / "runs")},
            "tracking": {"figures": False},
        }
        assignments = [f"{key.replace('__', '.')}={value}" for key, value in overrides.items()]
        return validate_data(apply_overrides(base, assignments))

    return make


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API: `moto_server` on a free local port, for the whole session.

    While it runs, the process environment points storage at it (VAE_S3_ENDPOINT_URL) with fake
    AWS credentials; the previous values come back at the end. Yields a dict with
    `endpoint_url`, `client` (boto3) and `make_bucket(name=None) -> name` (a fresh bucket per
    test keeps tests apart).
    """
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request
    import uuid

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    from queue_support import moto_server_executable

    executable = moto_server_executable()
    log = open(tmp_path_factory.mktemp("moto") / "moto_server.log", "wb")
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2).close()
            break
        except urllib.error.HTTPError:
            break  # it answered
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.close()
                pytest.fail(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)

    settings = {
        "VAE_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_SESSION_TOKEN": None,
    }
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )

    def make_bucket(name=None):
        name = name or f"vae-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        return name

    try:
        with applied(settings):
            yield {"endpoint_url": endpoint, "client": client, "make_bucket": make_bucket}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A fresh, empty database on each store the queue supports."""
    from queue_support import temporary_database

    with temporary_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url):
    """A migrated queue Store on `db_url` (the queue's store tests)."""
    from vae_service.queue.db import make_engine, upgrade
    from vae_service.queue.store import Store

    engine = make_engine(db_url)
    upgrade(engine)
    yield Store(engine)
    engine.dispose()
