"""The local cluster of docker-compose.yml, brought up for real (with infra/compose.offline.yml,
since nothing can be pulled here): the README's job (2 workers) trains across two worker
containers to a registered model, and a worker container killed under it stalls it only until
it is back; no secret reaches Ray's logs, a restarted stack keeps its runs and models, `down -v`
cleans up. The README's job runs once: the first test kills a worker under it, the second reads
what it left (the queue, MLflow, the registry, the buckets).

Run alone with `pytest -m cluster`; `.ci/run` runs it. Its wall times (image build, stack
start, each job) are printed at the end; with VAE_CLUSTER_TIMINGS=path they are also written
there as JSON (`VAE_CLUSTER_TIMINGS=bench/results/cluster_timings.json` refreshes the committed
numbers: a plain test run rewrites no tracked file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_support import IMAGE_TAG, REPO, WORKER_GROUP_START_TIMEOUT_S, Stack, build_images, docker_engine, leftovers, sh
from png_checks import picture

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(2400)]
VAE = str(Path(sys.executable).with_name("vae"))
# The README's job, as its "Run a local cluster" section submits it (2 ranks x 2 CPUs, spread).
README_JOB = ["jobs/mnist-vae.yaml", "--set", "resources.num_workers=2", "--set", "resources.placement=spread",
              "--set", "tracking.register_as=cluster-vae", "--set", "tracking.experiment=cluster"]
EPOCHS = 4  # 10,000 images an epoch: the kill lands after the first checkpoint (seen within 2 s), three epochs before the end
timings: dict[str, float] = {}
ran: dict[str, dict] = {}  # "readme_job": the README job as the queue last showed it (the first test runs it)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("cluster")
    with docker_engine(logs):
        started = time.monotonic()
        said = build_images()
        timings["image_build_s"] = time.monotonic() - started
        timings["images_built"] = said.count("offline-build: building vae-")  # 0: every build context was unchanged
        stack = Stack(data_dir=Path(os.environ["VAE_DATA_DIR"]))
        try:
            started = time.monotonic()
            stack.up(workers=2)
            timings["stack_start_s"] = time.monotonic() - started
            yield stack
        except Exception:
            (logs / "compose.log").write_text(stack.logs())
            raise
        finally:
            (logs / "compose.log").write_text(stack.logs())
            stack.down()
            print(f"\ncluster timings: {json.dumps(timings)}")
            if os.environ.get("VAE_CLUSTER_TIMINGS"):
                Path(os.environ["VAE_CLUSTER_TIMINGS"]).write_text(json.dumps(timings, indent=2))


def vae(stack: Stack, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([VAE, *args], capture_output=True, text=True, cwd=REPO, env=stack.client_env(), timeout=timeout)


def sample_the_registered_model(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "samples.png"
    sampled = vae(stack, "sample", "models:/cluster-vae@candidate", "-n", "4", "-o", str(out), timeout=300)
    assert sampled.returncode == 0, sampled.stderr + stack.logs()[-3000:]
    picture(out)  # decodes, and holds a drawing (tests/png_checks.py)


def test_a_killed_worker_container_stalls_the_readme_job_only_until_it_is_back(stack):
    """The README's job as the README submits it: 2 ranks x 2 CPUs, spread, on two 2-CPU worker
    containers, no storage.max_failures (the queue's default recovers from worker failures).
    `docker kill` of one worker is a manual stop (compose does not restart it), and the other
    cannot hold both ranks: the job keeps running, waiting with a reason; once the worker is started again
    (the README's `up`), it goes on from its latest checkpoint and trains every epoch."""
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    submitted = vae(stack, "submit", *README_JOB, "--set", f"optim.epochs={EPOCHS}", "--set", "data.limit=10000", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[0]
    prefix = f"runs/mnist-vae-{job_id}/"

    deadline = time.monotonic() + 600
    while not any(k.endswith("/state.json") and "/checkpoint_" in k for k in stack.keys("runs", prefix)):
        assert time.monotonic() < deadline and stack.job(job_id)["state"] in ("queued", "submitted", "running"), stack.job(job_id)
        time.sleep(2)
    victim = stack.containers("ray-worker")[0]
    sh("docker", "kill", victim)

    def reason() -> str:
        job = stack.job(job_id)
        assert job["state"] == "running", job
        return job["waiting_reason"] or ""

    # Ray sees the node gone, Ray Train starts its worker group again, and the group waits: `vae
    # status` says why (the dispatcher reports a group Ray has not placed for 10 s).
    seen, deadline_reason = set(), time.monotonic() + 180
    while not (said := reason()).startswith("waiting for Ray to place its workers ("):
        seen.add(said)
        assert time.monotonic() < deadline_reason, seen
        time.sleep(3)
    assert "2 CPUs" in said and "live nodes:" in said, said
    # Past Ray Train's limit on starting a worker group (20 s in this stack): it tries again, it does not fail.
    still_until = time.monotonic() + WORKER_GROUP_START_TIMEOUT_S + 10
    while time.monotonic() < still_until:
        reason()
        time.sleep(3)
    stack.up(workers=2)  # starts the killed container again
    assert victim in stack.containers("ray-worker")

    while stack.job(job_id)["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline + 900, "the job did not end"
        time.sleep(3)
    timings["job_with_a_killed_worker_s"] = time.monotonic() - started
    job = ran["readme_job"] = stack.job(job_id)
    assert job["state"] == "succeeded", (job["error"], stack.logs()[-4000:])
    mlflow = MlflowClient(tracking_uri=stack.mlflow_url)
    steps = sorted({m.step for m in mlflow.get_metric_history(job["mlflow_run_id"], "val_neg_elbo")})
    assert steps == list(range(EPOCHS)), steps  # every epoch, the ones after the kill included


def test_the_readme_job_trained_across_two_worker_containers_to_a_registered_model(stack, tmp_path):
    """What the README's job of the test above left: its two Ray Train ranks ran in the two
    worker containers, as the queue and MLflow record; its metrics, figures and model are in
    MLflow (through the server) and registered; checkpoints and the model are in the runs bucket;
    the registered model samples from this machine."""
    from mlflow.tracking import MlflowClient

    job = ran.get("readme_job")
    assert job is not None and job["state"] == "succeeded", f"the README's job did not succeed in the test above: {job}"

    assert len(job["nodes"]) == 2 and len(set(job["nodes"])) == 2, job["nodes"]
    status = vae(stack, "status", job["id"])
    assert status.returncode == 0 and all(node.split()[0] in status.stdout for node in job["nodes"])
    workers = {sh("docker", "inspect", "-f", "{{.Config.Hostname}}", c).stdout.strip() for c in stack.containers("ray-worker")}
    assert {node.split()[0] for node in job["nodes"]} == workers

    mlflow = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    run = mlflow.get_run(job["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["vae.job_id"] == job["id"]
    assert sorted(json.loads(run.data.tags["vae.nodes"])) == sorted(job["nodes"])
    assert {f.path for f in mlflow.list_artifacts(run.info.run_id, "figures")} >= {"figures/reconstructions.png"}
    version = mlflow.get_model_version_by_alias("cluster-vae", "candidate")
    assert version.run_id == run.info.run_id

    # Checkpoints and the model in the runs bucket; MLflow's artifacts in its own.
    run_prefix = f"runs/mnist-vae-{job['id']}/"
    keys = stack.keys("runs", run_prefix)
    assert any("/checkpoint_" in k and k.endswith("model.safetensors") for k in keys), keys
    assert {run_prefix + name for name in ("model/model.safetensors", "outcome.json", "spec.yaml")} <= set(keys)
    assert stack.keys("mlflow", "artifacts/")

    sample_the_registered_model(stack, tmp_path)


def test_no_secret_in_rays_logs_its_jobs_api_or_a_containers_log(stack):
    """The job above ran with the S3 secret in every Ray container's environment (the nodes' own
    credentials): it is in none of Ray's files on any node, nor in Ray's job listing (each job's
    runtime environment), nor in any container's log; nor are the other secrets."""
    import httpx

    held = {name: stack.secrets[name] for name in ("S3_SECRET_KEY", "POSTGRES_PASSWORD", "VAE_API_TOKEN")}
    listing = httpx.get(f"http://127.0.0.1:{stack.ports['RAY_DASHBOARD_PORT']}/api/jobs/", timeout=30,
                        headers={"Authorization": f"Bearer {stack.secrets['RAY_AUTH_TOKEN']}"}).text
    assert "VAE_JOB_SPEC" in listing  # the runtime environments are there
    logs = stack.compose("logs", "--no-color").stdout
    for container in stack.containers("ray-head") + stack.containers("ray-worker"):
        patterns = [arg for secret in held.values() for arg in ("-e", secret)]
        found = sh("docker", "exec", container, "grep", "-rlF", "-D", "skip", *patterns, "/tmp/ray", check=False)
        assert (found.returncode, found.stdout) == (1, ""), f"a secret in {found.stdout or found.stderr} of {container[:12]}"
    for name, secret in held.items():
        assert secret not in listing, f"{name} is in Ray's job listing"
        assert secret not in logs, f"{name} is in a container's log"


def test_the_image_holds_no_build_input(stack):
    """The CA bundle and the torch wheel of infra/build-extra/ were served to the build, never
    copied in: no layer was made from them, the fetching RUNs left /tmp empty, pip has no
    certificate configured, and uv (fetched for one RUN) is gone."""
    image = f"vae-service:{IMAGE_TAG}"
    history = sh("docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "build-extra" not in history.replace("with-build-extra", ""), history
    inside = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                "ls -A /tmp; pip config get global.cert 2>/dev/null; command -v uv; env | grep -i -e cert -e build_extra; true").stdout
    assert inside.strip() == "", inside


def test_a_restarted_stack_keeps_its_runs_and_models(stack, tmp_path):
    """`docker compose restart` (every container stopped and started again), then the README's
    `up`: nothing is recreated, the runs bucket holds what it held
    (the offline S3 stand-in keeps its objects on its volume), and the registered model samples."""
    containers = set(stack.compose("ps", "-aq").stdout.split())
    runs = set(stack.keys("runs", "runs/"))
    started = time.monotonic()
    stack.compose("restart", timeout=600)
    stack.up(workers=2)
    timings["stack_restart_s"] = time.monotonic() - started
    assert set(stack.compose("ps", "-aq").stdout.split()) == containers  # the same containers, none recreated
    assert set(stack.keys("runs", "runs/")) == runs
    sample_the_registered_model(stack, tmp_path)


def test_down_removes_every_container_network_and_volume(stack):
    stack.down()
    assert leftovers() == {"container": [], "network": [], "volume": []}
