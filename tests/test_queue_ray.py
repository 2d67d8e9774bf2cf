"""The job queue end to end: a real Ray head with token auth (`ray start --head`), real
`vae server` processes, real trainings, SQLite and PostgreSQL stores.

The session's token-auth Ray head (2 CPUs, shared with the other queue modules) serves it. Jobs
that must run one at a time ask for both CPUs (`cpus_per_worker: 2`); jobs that only need to
reach Ray fail fast on an unwritable storage.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from queue_support import VAE, api, job_state, start_server, temporary_database, tiny_spec_text, wait_for

from vae_service.queue.db import make_engine, upgrade
from vae_service.queue.dispatcher import Dispatcher
from vae_service.queue.job_env import job_env
from vae_service.queue.ray_jobs import RayJobs, RayUnavailable
from vae_service.queue.states import State
from vae_service.queue.store import NewJob, Store

pytestmark = pytest.mark.slow
TOKEN = "queue-e2e-token"
UNWRITABLE = "/proc/vae-queue-tests/runs"  # the job fails in seconds, before Ray Train starts
DIVERGES = ["--set", "optim.lr=1e30", "--set", "model.likelihood=gaussian"]  # fails at its first step


@pytest.fixture(scope="module")
def head(queue_head):
    """The session's token-auth head (2 CPUs), shared with the other queue modules."""
    return queue_head.get()


def server_env(head, workdir: Path, db_url: str) -> dict:
    return head.server_env(workdir, db_url, VAE_API_TOKEN=TOKEN)


def cli(env: dict, server, *args, cwd=None, token=TOKEN, timeout=60) -> subprocess.CompletedProcess:
    env = dict(env, VAE_API_URL=server.url, VAE_API_TOKEN=token)
    return subprocess.run([VAE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def ray_jobs_for(head) -> dict:
    return RayJobs(head.address, head.token).list()


def test_ray_refuses_a_client_without_the_token(head):
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(Exception, match="(?i)authentication|unauthorized|401"):
        JobSubmissionClient(head.address).list_jobs()
    with pytest.raises(RayUnavailable, match="refused the token"):
        RayJobs(head.address, None).totals()
    with pytest.raises(RayUnavailable, match="refused the token"):
        RayJobs(head.address, "not-the-token").totals()
    assert RayJobs(head.address, head.token).totals() == {"CPU": 2.0, "GPU": 0.0}


def test_submit_wait_succeeds_with_mlflow_run_and_live_logs(head, tmp_path):
    """SQLite store. One job trains (1 CPU) while another fails fast, side by side. The server
    holds an S3 secret and an MLflow password: neither reaches Ray (its Jobs API, its logs)."""
    env = server_env(head, tmp_path, f"sqlite:///{tmp_path / 'queue.db'}")
    held = {"AWS_SECRET_ACCESS_KEY": f"s3-secret-{uuid.uuid4().hex}", "MLFLOW_TRACKING_PASSWORD": f"mlflow-pw-{uuid.uuid4().hex}"}
    env.update(held)
    server = start_server(tmp_path, env)
    (tmp_path / "tiny.yaml").write_text(tiny_spec_text("e2e-ok"))
    try:
        submit_env = dict(env, VAE_API_URL=server.url)
        ok = subprocess.Popen([VAE, "submit", "tiny.yaml", "--priority", "3", "--wait"], cwd=tmp_path, env=submit_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        job_id = ok.stdout.readline().strip()
        # Follow the logs from the submission on (the stream waits for Ray to have the job): chunks
        # arrive while it runs, before it ends. Started after the failing job's --wait below, it
        # missed a job that a quiet machine had already finished.
        follower = subprocess.Popen([VAE, "logs", job_id, "-f"], env=submit_env, stdout=subprocess.PIPE, text=True)
        arrivals: list[tuple[float, str]] = []
        reader = threading.Thread(target=lambda: [arrivals.append((time.time(), line)) for line in follower.stdout])
        reader.start()
        bad = cli(env, server, "submit", "tiny.yaml", *DIVERGES, "--wait", cwd=tmp_path, timeout=180)

        out, err = ok.communicate(timeout=240)
        follower.wait(timeout=60)
        reader.join(timeout=10)

        assert ok.returncode == 0, err
        assert "succeeded" in err and "MLflow run" in err
        assert re.search(r"^ +epoch 1/1  train −ELBO [\d.]+  val −ELBO", err, re.M), err  # --wait shows the job's epochs
        job = job_state(api(server, TOKEN), job_id)
        assert (job["state"], job["attempts"], job["ray_submission_id"]) == ("succeeded", 1, job_id)
        assert job["mlflow_run_id"] and job["error"] is None
        finished = datetime.fromisoformat(job["finished_at"]).timestamp()
        assert follower.returncode == 0 and arrivals, "vae logs -f printed nothing"
        assert arrivals[0][0] < finished, "log lines only arrived after the job ended"
        assert any(job["mlflow_run_id"] in line for _, line in arrivals)

        from vae_service.tracking.mlflow_run import client

        run = client().get_run(job["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["vae.job_id"] == job_id
        assert list((tmp_path / "runs").glob("e2e-ok-*/model/model.safetensors")), "relative storage.uri: server's cwd"

        # The failing one: state failed, its error's kind and message read from its outcome.json.
        assert bad.returncode == 1, bad.stderr
        bad_id = bad.stdout.strip()
        bad_job = job_state(api(server, TOKEN), bad_id)
        assert bad_job["state"] == "failed", bad_job
        assert re.match(r"^error: non-finite loss at epoch 0 step \d+$", bad_job["error"]), bad_job["error"]
        outcome = json.loads((tmp_path / "runs" / f"e2e-ok-{bad_id}" / "outcome.json").read_text())
        assert (outcome["state"], outcome["exit_code"], outcome["error"]["kind"]) == ("failed", 1, "job_failed")
        assert bad_job["mlflow_run_id"] == outcome["mlflow_run_id"]
        assert client().get_run(outcome["mlflow_run_id"]).info.status == "FAILED"

        listing = cli(env, server, "jobs", "--state", "succeeded")
        assert listing.returncode == 0 and job_id in listing.stdout and bad_id not in listing.stdout
        assert cli(env, server, "status", job_id).returncode == 0
        tail = cli(env, server, "logs", job_id, "--tail", "2")
        everything = cli(env, server, "logs", job_id, "--all")
        assert tail.returncode == 0 and everything.returncode == 0, tail.stderr + everything.stderr
        assert tail.stdout.count("\n") == 2 and everything.stdout.endswith(tail.stdout)
        assert len(everything.stdout) > len(tail.stdout) and job["mlflow_run_id"] in everything.stdout
        refused = cli(env, server, "jobs", token="wrong")
        assert refused.returncode == 2 and "refused the token" in refused.stderr
        unknown = cli(env, server, "status", "0000000000000000")
        assert unknown.returncode == 2 and "no job" in unknown.stderr

        # Ray lists each job's runtime environment (this one's is there) and its runtime-env
        # agent logs them: no secret of the server's is in either.
        listing = httpx.get(f"{head.address}/api/jobs/", headers={"Authorization": f"Bearer {head.token}"}, timeout=30).text
        assert job_id in listing and "VAE_JOB_SPEC" in listing
        logs = {path: path.read_bytes() for path in head.temp_dir.rglob("*") if path.is_file() and not path.is_symlink()}
        assert any(b"VAE_JOB_SPEC" in text for text in logs.values()), "no runtime environment found in Ray's logs"
        for name, secret in held.items():
            assert secret not in listing, f"{name} is in Ray's job listing"
            assert [path.name for path, text in logs.items() if secret.encode() in text] == [], f"{name} is in Ray's logs"
    finally:
        server.stop()


def test_an_encode_dataset_job_is_queued_and_ends_with_an_outcome(head, tmp_path):
    """`vae submit` of a `kind: encode-dataset` spec: the job encodes every item on the cluster,
    its parts land in `output` and its Outcome in the run directory the queue stored with it,
    where the dispatcher reads how it ended."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from vae_service.core.checkpoint import save_model
    from vae_service.core.model import VAE, ModelConfig
    from vae_service.core.preprocessing import Preprocessing

    x = np.random.default_rng(0).normal(1000.0, 5.0, (50, 6))
    (tmp_path / "vectors").mkdir()
    np.save(tmp_path / "vectors" / "items.npy", x)
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_shape=(6,), latent_dim=2, hidden=(8,), likelihood="gaussian"))
    prep = Preprocessing(input_shape=(6,), kind="vectors", mean=tuple(x.mean(0)), std=tuple(x.std(0)))
    model = save_model(tmp_path / "model", vae, extra={"preprocessing": prep.to_dict()})
    (tmp_path / "encode.yaml").write_text(f"kind: encode-dataset\nname: codes\nmodel: {model}\n"
                                          f"data: {{source: vectors, format: numpy}}\noutput: codes\n")
    env = server_env(head.wait_idle(), tmp_path, f"sqlite:///{tmp_path / 'queue.db'}")
    server = start_server(tmp_path, env)
    try:
        done = cli(env, server, "submit", "encode.yaml", "--wait", cwd=tmp_path, timeout=240)
        assert done.returncode == 0, done.stderr
        job = job_state(api(server, TOKEN), done.stdout.strip().splitlines()[0])
        assert (job["kind"], job["state"], job["error"]) == ("encode-dataset", "succeeded", None), job
        run_dir = tmp_path / "codes" / "_runs" / f"codes-{job['id']}"
        assert job["run_dir"] == str(run_dir)
        outcome = json.loads((run_dir / "outcome.json").read_text())
        assert (outcome["job"], outcome["state"], outcome["metrics"]["rows"]) == ("encode-dataset", "succeeded", len(x))
        table = pq.read_table(tmp_path / "codes")  # the parts alone: `_runs` is skipped by Parquet readers
        assert table.num_rows == len(x)
        with torch.no_grad():
            mu, _ = vae.eval().encode(torch.from_numpy(prep.standardise(x[7:8])))
        row = next(r for r in table.to_pylist() if r["id"].endswith("#7"))
        np.testing.assert_allclose(row["mu"], mu[0].numpy(), rtol=1e-5, atol=1e-6)
    finally:
        server.stop()


def test_a_job_whose_worker_no_node_can_hold_is_refused_at_submission(head, tmp_path):
    """Ray never splits a worker across nodes: on the 2-CPU head, a 3-CPU worker (or a GPU one)
    would wait forever. `vae submit` gets a 422 naming the field and the node size; nothing is queued."""
    env = server_env(head, tmp_path, f"sqlite:///{tmp_path / 'queue.db'}")
    server = start_server(tmp_path, env)
    (tmp_path / "big.yaml").write_text(tiny_spec_text("too-big", cpus=3))
    (tmp_path / "gpu.yaml").write_text(tiny_spec_text("gpu"))
    try:
        big = cli(env, server, "submit", "big.yaml", cwd=tmp_path)
        assert big.returncode == 2, big.stdout + big.stderr
        assert "resources.cpus_per_worker" in big.stderr and "no node has more than 2 CPUs" in big.stderr, big.stderr
        gpu = cli(env, server, "submit", "gpu.yaml", "--set", "resources.use_gpu=true", cwd=tmp_path)
        assert gpu.returncode == 2 and "the cluster has no GPU: set resources.use_gpu: false" in gpu.stderr, gpu.stderr
        assert api(server, TOKEN).get("/jobs").json()["total"] == 0  # nothing stored
        fits = cli(env, server, "submit", "big.yaml", "--set", "resources.cpus_per_worker=2", "--set", "storage.uri=" + UNWRITABLE,
                   cwd=tmp_path)
        assert fits.returncode == 0, fits.stderr  # the largest node's size is accepted
    finally:
        server.stop()


def test_a_running_job_ray_cannot_place_says_why_and_trains_when_room_returns(head, tmp_path):
    """Both CPUs held outside the queue, as by a Ray job of someone else's (or lost with a worker
    node): the queue admits the job on its own count, Ray cannot place its worker. The job is
    `running` with a reason that says so; once the room returns it trains, and the reason goes."""
    env = server_env(head, tmp_path, f"sqlite:///{tmp_path / 'queue.db'}")
    server = start_server(tmp_path, env)
    (tmp_path / "tiny.yaml").write_text(tiny_spec_text("unplaced"))
    ray_api = httpx.Client(base_url=head.address, headers={"Authorization": f"Bearer {head.token}"}, timeout=30)
    holder = f"hold-{uuid.uuid4().hex[:8]}"
    try:
        held = ray_api.post("/api/jobs/", json={"entrypoint": "sleep 600", "submission_id": holder, "entrypoint_num_cpus": 2})
        assert held.status_code == 200, held.text
        wait_for(lambda: ray_api.get(f"/api/jobs/{holder}").json()["status"] == "RUNNING", 60, "the holder to run")
        job_id = cli(env, server, "submit", "tiny.yaml", cwd=tmp_path).stdout.strip()
        client = api(server, TOKEN)
        reason = wait_for(lambda: job_state(client, job_id)["waiting_reason"], 120, "a reason for the unplaced job")
        job = job_state(client, job_id)
        assert job["state"] == "running", job
        assert reason.startswith("waiting for Ray to place its workers (1 × 1 CPU; Ray: "), reason  # one worker: one Ray task
        assert "); live nodes: 1 × 2 CPUs. It goes on" in reason, reason
        status = cli(dict(env, COLUMNS="400"), server, "status", job_id)
        assert status.returncode == 0 and "waiting for Ray to place its workers" in " ".join(status.stdout.split())
        assert ray_api.post(f"/api/jobs/{holder}/stop").status_code == 200
        wait_for(lambda: job_state(client, job_id)["state"] == "succeeded", 180, "the job to train once room returned")
        assert job_state(client, job_id)["waiting_reason"] is None
    finally:
        ray_api.post(f"/api/jobs/{holder}/stop")
        ray_api.close()
        server.stop()


def test_priority_order_one_at_a_time_and_cancel_running(head, tmp_path):
    """PostgreSQL store; one API-only server takes the jobs, a second server dispatches them.
    Each job asks for both CPUs, so the cluster has room for one job at a time."""
    with temporary_database("postgresql", tmp_path) as db_url:
        env = server_env(head, tmp_path, db_url)
        front = start_server(tmp_path, env, "--no-dispatcher", name="front")
        dispatcher = None
        try:
            http = api(front, TOKEN)
            ids = {}
            for name, priority in (("low", 1), ("high", 10), ("mid", 5)):
                response = http.post("/jobs", params={"priority": priority}, content=tiny_spec_text(name, cpus=2))
                assert response.status_code == 201
                ids[name] = response.json()["id"]
            # Nothing to await: this server has no dispatcher, so nothing can move them.
            assert "dispatcher off" in front.log()
            assert all(job_state(http, i)["state"] == "queued" for i in ids.values())  # no dispatcher yet
            assert not set(ids.values()) & set(ray_jobs_for(head)), "a job reached Ray with no dispatcher running"
            dispatcher = start_server(tmp_path, env, name="dispatcher")

            for current, waiting in (("high", ["mid", "low"]), ("mid", ["low"]), ("low", [])):
                wait_for(lambda: job_state(http, ids[current])["state"] == "running", 90, f"{current} to run")
                for other in waiting:  # no room: the others stay queued
                    assert job_state(http, ids[other])["state"] == "queued"
                for rank, other in enumerate(waiting):  # and say why, with the numbers
                    held = f", the rest held for job {ids[waiting[0]]}, ranked ahead" if rank else ""
                    reason = f"waiting for 2 CPUs to be free (2 of 2 CPUs in use{held})"
                    wait_for(lambda: job_state(http, ids[other])["waiting_reason"] == reason, 60, f"{other}: {reason}")
                # It is really running on Ray, not just admitted.
                wait_for(lambda: ray_jobs_for(head)[ids[current]].status == "RUNNING", 30, f"Ray to run {current}")
                response = http.post(f"/jobs/{ids[current]}/cancel")
                assert response.status_code == 202 and response.json()["state"] == "cancelling"
                wait_for(lambda: job_state(http, ids[current])["state"] == "cancelled", 60, f"{current} to be cancelled")
                assert ray_jobs_for(head)[ids[current]].status == "STOPPED"

            jobs = {name: job_state(http, i) for name, i in ids.items()}
            submitted = sorted(jobs, key=lambda n: jobs[n]["submitted_at"])
            assert submitted == ["high", "mid", "low"]
            assert jobs["mid"]["submitted_at"] >= jobs["high"]["finished_at"]  # one at a time
            assert jobs["low"]["submitted_at"] >= jobs["mid"]["finished_at"]
            assert all(j["attempts"] == 1 for j in jobs.values())
            metrics = http.get("/metrics").text
            assert 'vae_jobs{state="cancelled"} 3.0' in metrics and "vae_dispatch_latency_seconds_count 3.0" in metrics
        finally:
            front.stop()
            if dispatcher is not None:
                dispatcher.stop()


def test_dispatcher_killed_mid_job_is_reconciled_not_resubmitted(head, tmp_path):
    """PostgreSQL store. A standby server waits for the advisory lock while the first one
    dispatches; the first is SIGKILLed mid-job; the standby takes over and follows the job."""
    with temporary_database("postgresql", tmp_path) as db_url:
        env = server_env(head, tmp_path, db_url)
        first = start_server(tmp_path, env, name="first")
        standby = None
        try:
            http = api(first, TOKEN)
            job_id = http.post("/jobs", content=tiny_spec_text("survivor")).json()["id"]
            wait_for(lambda: job_state(http, job_id)["state"] == "running", 90, "the job to run")
            standby = start_server(tmp_path, env, name="standby")
            wait_for(lambda: "dispatcher: waiting for the PostgreSQL advisory lock" in standby.log(), 30,
                     "the standby to wait for the advisory lock")
            assert "dispatcher: active" not in standby.log()  # a second dispatcher waits
            before = ray_jobs_for(head)

            first.kill()  # SIGKILL: no shutdown code runs
            assert before[job_id].status == "RUNNING"
            http = api(standby, TOKEN)
            wait_for(lambda: "dispatcher: active" in standby.log(), 30, "the standby to take over")
            job = wait_for(lambda: (j := job_state(http, job_id))["state"] in ("succeeded", "failed") and j, 180, "the job to end")

            after = ray_jobs_for(head)
            assert set(after) - set(before) == set(), "something was submitted to Ray again"
            # What the standby did: it followed the job to its end without handing it to Ray
            # itself. Dispatcher._submit counts an attempt and logs "submitted to" or (when Ray
            # refuses the duplicate id) "already on" every time it runs; the first did, once.
            assert job["state"] == "succeeded" and job["attempts"] == 1 and job["mlflow_run_id"]
            assert f"dispatcher: job {job_id} submitted to Ray" in first.log()
            assert "reconciled with Ray" in standby.log() and f"dispatcher: job {job_id} succeeded" in standby.log()
            assert f"job {job_id} submitted to" not in standby.log() and f"job {job_id} already on" not in standby.log()
        finally:
            first.stop()
            if standby is not None:
                standby.stop()


def test_reconcile_repairs_each_kind_of_disagreement(head, tmp_path, caplog):
    """In-process dispatcher, SQLite store, fast-failing jobs: each disagreement between the
    store and Ray after a crash is repaired without a second submission."""
    caplog.set_level(logging.INFO, logger="vae_service.queue.dispatcher")

    def hand_offs(job_id):  # Dispatcher._submit logs one of these each time it calls Ray
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith((f"dispatcher: job {job_id} submitted to", f"dispatcher: job {job_id} already on"))]

    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade(engine)
    store = Store(engine)
    class SeenByReconcile(RayJobs):  # the real Ray client; keeps the last listing it returned
        seen: dict = {}

        def list(self):
            self.seen = super().list()
            return self.seen

    ray = SeenByReconcile(head.address, head.token)
    dispatcher = Dispatcher(store, ray, python=sys.executable)
    spec = tiny_spec_text("reconcile") + f"storage: {{uri: {UNWRITABLE}}}\n"

    def add(name):
        from vae_service.core.spec_loading import dump_spec, load_spec_text

        normalised = dump_spec(load_spec_text(spec))
        return store.add(NewJob(name=name, kind="train", priority=0, submitted_by="test", spec_submitted=spec,
                                spec_normalised=normalised, resources={"CPU": 1.0, "GPU": 0.0}))[0]

    # a) committed as submitted, then the dispatcher died before Ray got it → submitted now
    never_sent = add("never-sent")
    store.transition(never_sent.id, State.SUBMITTED)
    # b) Ray has it but the store says queued → adopted, never submitted a second time
    adopted = add("adopted")
    assert ray.submit(adopted.id, job_env(adopted.id, adopted.spec_normalised, adopted.run_dir), sys.executable)
    # c) running in the store, unknown to Ray (the head was replaced) → failed, "lost"
    lost = add("lost")
    store.transition(lost.id, State.SUBMITTED)
    store.transition(lost.id, State.RUNNING)
    # d) cancel requested, unknown to Ray → cancelled (it never ran)
    doomed = add("doomed")
    store.transition(doomed.id, State.SUBMITTED)
    store.request_cancel(doomed.id)
    assert store.get(doomed.id).state == "cancelling"
    # Fake ids c) and d) must really be unknown to Ray; submit (a) is the dispatcher's job.
    known = ray.list()
    assert never_sent.id not in known and lost.id not in known and doomed.id not in known

    dispatcher.reconcile()
    seen_by_reconcile = dict(ray.seen)  # reconcile lists Ray once and follows every job from that listing
    assert store.get(lost.id).state == "failed" and "lost" in store.get(lost.id).error
    assert store.get(doomed.id).state == "cancelled"
    # Adopted: `submitted` (attempt 1, Ray's id), then brought up to what Ray said of it in
    # that same listing: still pending → submitted, running → running, already over → failed
    # (its storage is unwritable, so Ray's FAILED is all there is).
    ray_status = seen_by_reconcile[adopted.id].status
    expected = {"PENDING": "submitted", "RUNNING": "running", "FAILED": "failed"}
    assert ray_status in expected, f"Ray reported {ray_status} for a job that can only fail"
    after = store.get(adopted.id)
    assert (after.state, after.attempts, after.ray_submission_id) == (expected[ray_status], 1, adopted.id), ray_status
    assert f"dispatcher: job {adopted.id} is queued in the store but Ray has it: adopting it" in caplog.text
    assert never_sent.id in ray.list()
    assert [m.split(" (")[0] for m in hand_offs(never_sent.id)] == [f"dispatcher: job {never_sent.id} submitted to Ray"]

    def settled():
        dispatcher.tick()
        return all(store.get(j.id).state == "failed" for j in (never_sent, adopted))

    wait_for(settled, 120, "both jobs to end on Ray")
    # The adopted job was never handed to Ray by the dispatcher (not even as a duplicate Ray
    # would refuse); the one Ray never got was handed over exactly once.
    assert hand_offs(adopted.id) == []
    assert len(hand_offs(never_sent.id)) == 1
    for job in (never_sent, adopted):
        job = store.get(job.id)
        assert job.attempts == 1, job.name
        # Its storage is unwritable, so it could write no outcome: Ray's exit code, and where.
        assert job.error.startswith("exit code 1: the job ended without writing its outcome at "), job.error
        assert f"{UNWRITABLE}/reconcile-{job.id}/outcome.json" in job.error
    engine.dispose()


def _store_and_job(tmp_path, name: str):
    from vae_service.core.spec_loading import dump_spec, load_spec_text

    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade(engine)
    store = Store(engine)
    spec = tiny_spec_text(name) + f"storage: {{uri: {UNWRITABLE}}}\n"
    job = store.add(NewJob(name=name, kind="train", priority=0, submitted_by="test", spec_submitted=spec,
                           spec_normalised=dump_spec(load_spec_text(spec)), resources={"CPU": 1.0, "GPU": 0.0}))[0]
    return engine, store, job


def test_a_cancel_between_admission_and_the_hand_off_never_reaches_ray(head, tmp_path):
    """The interleaving forced in order, no timing: admit commits `submitted`, the API's cancel
    lands, then the hand-off runs. Ray never gets the job; it ends cancelled at once."""
    engine, store, job = _store_and_job(tmp_path, "cancelled-on-the-way")
    ray = RayJobs(head.address, head.token)

    class CancelLandsFirst(Dispatcher):
        def _submit(self, job_id):
            assert store.get(job_id).state == "submitted"
            store.request_cancel(job_id)  # what POST /jobs/{id}/cancel does
            super()._submit(job_id)

    CancelLandsFirst(store, ray, python=sys.executable).admit()
    after = store.get(job.id)
    assert (after.state, after.attempts) == ("cancelled", 0)
    assert ray.info(job.id) is None and job.id not in ray.list()
    engine.dispose()


def test_a_cancel_during_the_hand_off_is_stopped_at_once(head, tmp_path):
    """The cancel lands while Ray is taking the job: it is stopped in the same step, not a tick later."""
    engine, store, job = _store_and_job(tmp_path, "cancelled-during")

    class CancelDuringSubmit(RayJobs):
        def submit(self, *args, **kwargs):
            created = super().submit(*args, **kwargs)
            store.request_cancel(job.id)
            return created

    ray = CancelDuringSubmit(head.address, head.token)
    dispatcher = Dispatcher(store, ray, python=sys.executable)
    dispatcher.admit()  # no follow(): the stop must come from the hand-off itself
    assert store.get(job.id).state == "cancelling" and job.id in dispatcher._stop_sent
    wait_for(lambda: ray.info(job.id).status == "STOPPED", 30, "Ray to stop the job")
    wait_for(lambda: (dispatcher.tick(), store.get(job.id).state == "cancelled")[1], 30, "the job to be cancelled")
    engine.dispose()


def test_log_pages_and_tail_from_ray(head, tmp_path, monkeypatch):
    """A finished job's log read through GET /jobs/{id}/logs: byte pages with offsets, the last
    N lines (Ray's State API reads only the file's end), and the default (the last MiB)."""
    from fastapi.testclient import TestClient

    from vae_service.queue.api import create_app
    from vae_service.queue.auth import TokenSet
    from vae_service.queue.ray_jobs import last_lines
    from vae_service.queue.settings import Settings

    engine, store, job = _store_and_job(tmp_path, "paged-logs")
    ray = RayJobs(head.address, head.token)
    dispatcher = Dispatcher(store, ray, python=sys.executable)
    dispatcher.admit()
    wait_for(lambda: ray.info(job.id).status in ("FAILED", "SUCCEEDED"), 120, "the job to end on Ray")
    whole = ray.logs(job.id)
    assert whole.count("\n") >= 3, whole
    info = ray.info(job.id)
    status, body = ray._call("GET", "/api/v0/logs/file", "tail", params={"submission_id": job.id, "node_id": info.driver_node_id, "lines": 2})
    assert status == 200 and body.decode() == last_lines(whole, 2)  # Ray 2.60 really tails the file
    assert ray.tail_lines(job.id, 3) == last_lines(whole, 3)

    monkeypatch.setenv("VAE_API_TOKEN", TOKEN)
    with TestClient(create_app(store, TokenSet.from_settings(Settings(home=tmp_path / "home")), ray=ray)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        data = whole.encode()
        first = client.get(f"/jobs/{job.id}/logs", params={"offset": 0, "limit": 10})
        assert first.status_code == 200 and first.content == data[:10]
        assert (first.headers["x-log-offset"], first.headers["x-log-size"]) == ("0", str(len(data)))
        rest = client.get(f"/jobs/{job.id}/logs", params={"offset": 10, "limit": 8 * 1024 * 1024})
        assert first.content + rest.content == data and rest.headers["x-log-offset"] == "10"
        end = client.get(f"/jobs/{job.id}/logs", params={"limit": 5})
        assert end.content == data[-5:] and end.headers["x-log-offset"] == str(len(data) - 5)
        assert client.get(f"/jobs/{job.id}/logs").content == data  # under 1 MiB: all of it
        assert client.get(f"/jobs/{job.id}/logs", params={"tail": 2}).text == last_lines(whole, 2)
        assert client.get(f"/jobs/{job.id}/logs", params={"limit": 9 * 1024 * 1024}).status_code == 422
    engine.dispose()
