"""The team queue on a real Ray head with 2 CPUs: preemption that checkpoints and resumes, a
user held at their quota with the reason shown, fair share between two users.

Real parts throughout: `ray start --head` with token auth, `vae server` processes (or the
dispatcher in-process where the test steps it tick by tick), real trainings, a real MLflow store.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from queue_support import VAE, api, job_state, start_server, tiny_spec_text, wait_for

from vae_service.core.resources import requested_resources
from vae_service.core.spec_loading import dump_spec, load_spec_text
from vae_service.queue.db import make_engine, upgrade
from vae_service.queue.dispatcher import Dispatcher
from vae_service.queue.quotas import Quota
from vae_service.queue.ray_jobs import RayJobs
from vae_service.queue.scheduling import Rules
from vae_service.queue.states import State
from vae_service.queue.store import NewJob, Store

pytestmark = pytest.mark.slow
ALICE, BOB, ADMIN = "alice-token", "bob-token", "admin-token"
EPOCHS = 6
# Long enough that the urgent job arrives mid-training (several seconds an epoch on 2 CPUs).
LONG = ["optim.epochs=6", "data.limit=8192", "optim.batch_size=32", "model.hidden=[256]"]


@pytest.fixture(scope="module")
def head(queue_head):
    """The session's token-auth head (2 CPUs), shared with the other queue modules."""
    return queue_head.get()


def server_env(head, workdir: Path, **settings) -> dict:
    return head.server_env(workdir, VAE_API_TOKEN=f"alice:{ALICE},bob:{BOB},admin:{ADMIN}", VAE_ADMINS="admin",
                           VAE_PREEMPT_MIN_RUN_S="3", VAE_PREEMPT_GRACE_S="60", **settings)


def cli(env: dict, server, *args, token: str) -> subprocess.CompletedProcess:
    env = dict(env, VAE_API_URL=server.url, VAE_API_TOKEN=token, COLUMNS="200")
    return subprocess.run([VAE, *args], env=env, capture_output=True, text=True, timeout=60)


def epochs_logged(run_id: str) -> list[int]:
    from vae_service.tracking.mlflow_run import client

    return sorted(m.step for m in client().get_metric_history(run_id, "train_loss"))


@pytest.mark.timeout(900)  # three trainings one after another: 130 s alone, past the 8-minute slow limit on a loaded machine
def test_an_urgent_job_preempts_a_long_one_which_resumes_from_its_checkpoint(head, tmp_path):
    """alice's long job (priority 1, both CPUs) runs; bob's urgent job (priority 10, both CPUs)
    arrives; alice's is stopped within seconds, bob's runs and succeeds, alice's resumes in the
    same MLflow run at the step it stopped at and completes every epoch, each logged once.
    bob, at his quota of one running job, sees his second job wait with the reason."""
    env = server_env(head, tmp_path, VAE_QUOTA_JOBS="1")
    server = start_server(tmp_path, env)
    alice, bob, admin = api(server, ALICE), api(server, BOB), api(server, ADMIN)
    try:
        from vae_service.tracking.mlflow_run import client

        client().search_experiments()  # MLflow imported and its store opened before the clock matters
        long_id = alice.post("/jobs", params={"priority": 1, "set": LONG}, content=tiny_spec_text("long", cpus=2)).json()["id"]
        # Wait for a checkpoint (an epoch done) so that there is work to keep.
        run_dir = tmp_path / "runs" / f"long-{long_id}"
        wait_for(lambda: list(run_dir.glob("checkpoint_*/state.json")), 180, "the long job's first checkpoint", interval=0.2)
        run_id = (run_dir / "mlflow_run_id").read_text().strip()  # the store has it when the job ends

        urgent_id = bob.post("/jobs", params={"priority": 10}, content=tiny_spec_text("urgent", cpus=2)).json()["id"]
        # Preempted within seconds (the next dispatcher tick).
        wait_for(lambda: job_state(alice, long_id)["state"] in ("preempting", "preempted", "queued"), 30, "the preemption")
        stopped = wait_for(lambda: (j := job_state(alice, long_id))["state"] in ("preempted", "queued") and j, 90,
                           "the long job to checkpoint and stop")
        logged_before = epochs_logged(run_id)
        assert stopped["preemptions"] == 1 and 1 <= len(logged_before) < EPOCHS

        # bob is at his quota (one running job): a second job of his waits and says why.
        second = bob.post("/jobs", params={"priority": 10}, content=tiny_spec_text("second", cpus=2)).json()["id"]
        shown = wait_for(lambda: (s := cli(env, server, "status", second, token=BOB)).returncode == 0
                         and "user quota of 1 running job in use" in s.stdout and s.stdout, 30, "the quota reason")
        assert "waiting" in shown
        listed = cli(env, server, "jobs", token=ADMIN)
        rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.split()[:1] in ([long_id], [second])}
        assert listed.returncode == 0 and set(rows) == {long_id, second}, listed.stdout
        assert rows[long_id][2:6] == ["queued", "1", "1", "1"] and rows[long_id][6] == "alice"  # state prio tries pre(empted) by
        assert rows[second][6] == "bob"
        # Only an admin may change a priority or cancel another user's job.
        assert bob.post(f"/jobs/{second}/priority", params={"priority": 50}).status_code == 403
        assert alice.post(f"/jobs/{second}/cancel").status_code == 404
        assert admin.post(f"/jobs/{second}/priority", params={"priority": 0}).json()["priority"] == 0
        assert admin.post(f"/jobs/{second}/cancel").json()["state"] == "cancelled"

        done = wait_for(lambda: (j := job_state(bob, urgent_id))["state"] in ("succeeded", "failed") and j, 240, "the urgent job")
        assert done["state"] == "succeeded", done["error"]
        final = wait_for(lambda: (j := job_state(alice, long_id))["state"] in ("succeeded", "failed") and j, 300,
                         "the long job to resume and finish")
        assert final["state"] == "succeeded", final["error"]
        assert (final["attempts"], final["preemptions"], final["ray_submission_id"]) == (2, 1, f"{long_id}-1")
        assert final["mlflow_run_id"] == run_id  # one run, continued
        run = client().get_run(run_id)
        assert run.info.status == "FINISHED"
        assert epochs_logged(run_id) == list(range(EPOCHS))  # every epoch, each once
        # The preempted attempt finished the step it was in and checkpointed there; the resumed
        # attempt continued at that step, part-way through the epoch (nothing trained twice).
        log = alice.get(f"/jobs/{long_id}/logs").text
        resumed = re.search(r"resuming from checkpoint_\S+\s+\(epoch\s+(\d+)\s+of\s+\d+\s+done,"  # the log may wrap
                            r"\s+and\s+(\d+)\s+steps\s+of\s+epoch\s+(\d+)\)", log)
        assert resumed, log[-3000:]
        epochs_done, steps, epoch = (int(g) for g in resumed.groups())
        assert len(logged_before) - 1 <= epochs_done <= len(logged_before) and epoch == epochs_done + 1 and steps > 0
        metrics = admin.get("/metrics").text
        assert "vae_job_preemptions_total 1.0" in metrics and 'vae_jobs{state="succeeded"} 2.0' in metrics
        runs = list((tmp_path / "runs").glob(f"long-{long_id}"))
        assert len(runs) == 1 and (runs[0] / "model" / "model.safetensors").exists()  # one run directory
    finally:
        server.stop()


def test_fair_share_between_two_users_on_a_real_cluster(head, tmp_path):
    """In-process dispatcher, stepped tick by tick: with one CPU free, bob's job goes before
    alice's older one, because alice already holds the other CPU."""
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade(engine)
    store = Store(engine)
    dispatcher = Dispatcher(store, RayJobs(head.address, head.token), python=sys.executable,
                            rules=Rules(quota=Quota(cpus=2), preempt_min_run_s=600))
    spec = tiny_spec_text("fair") + "storage: {uri: %s}\n" % (tmp_path / "runs")

    def add(user, overrides=()):
        parsed = load_spec_text(spec, "<test>", list(overrides))
        return store.add(NewJob(name=f"{user}-job", kind="train", priority=0, submitted_by=user, spec_submitted=spec,
                                spec_normalised=dump_spec(parsed), resources=requested_resources(parsed)))[0]

    jobs = []
    try:
        first = add("alice", ["optim.epochs=50"])
        jobs.append(first)
        dispatcher.tick()
        assert store.get(first.id).state in ("submitted", "running")
        older, newer = add("alice"), add("bob")
        jobs += [older, newer]
        dispatcher.tick()
        assert store.get(newer.id).state in ("submitted", "running")  # bob held nothing
        waiting = store.get(older.id)
        assert waiting.state == "queued"
        assert waiting.waiting_reason == "waiting for 1 CPU to be free (2 of 2 CPUs in use)"
        assert [j.id for j in store.queue_head()] == [older.id]
    finally:
        for job in jobs:
            if store.get(job.id).state not in ("succeeded", "failed", "cancelled"):
                store.request_cancel(job.id)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and store.in_states([State.CANCELLING, State.SUBMITTED, State.RUNNING]):
            dispatcher.tick()
            time.sleep(0.5)
        engine.dispose()


class ObservedStore(Store):
    """The real store, noting the order in which the dispatcher reads the queue's tiers and
    hands jobs to Ray. A job is cancelled the moment it is committed as submitted, so the
    dispatcher's hand-off finds it cancelled and Ray never runs it (the cancel race it handles)."""

    def __init__(self, engine):
        super().__init__(engine)
        self.events: list[tuple[str, int]] = []

    def queue_tiers(self, *args, **kwargs):
        for tier in super().queue_tiers(*args, **kwargs):
            self.events.append(("read", tier[0].priority))
            yield tier

    def transition(self, job_id, new, **fields):
        job = super().transition(job_id, new, **fields)
        if State(new) is State.SUBMITTED:
            self.events.append(("handed to Ray", job.priority))
            self.request_cancel(job_id)
        return job


def test_an_urgent_job_is_handed_to_ray_before_the_tiers_below_it_are_read(head, tmp_path):
    """A tick reads and plans the queue a priority at a time: the urgent job's hand-off does not
    wait for the jobs queued below it (GPU jobs here, which this head can never hold)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade(engine)
    store = ObservedStore(engine)
    dispatcher = Dispatcher(store, RayJobs(head.address, head.token), python=sys.executable)

    def add(priority, user, resources):
        return store.add(NewJob(name=f"p{priority}", kind="train", priority=priority, submitted_by=user,
                                spec_submitted="name: j\n", spec_normalised="name: j\n", resources=resources))[0]

    try:
        below = [add(priority, user, {"CPU": 1.0, "GPU": 1.0}) for priority in (0, 2) for user in ("ann", "bob")]
        urgent = add(10, "cy", {"CPU": 1.0, "GPU": 0.0})
        dispatcher.tick()
        assert store.events == [("read", 10), ("handed to Ray", 10), ("read", 2), ("read", 0)]
        assert store.get(urgent.id).state == "cancelled"  # never reached Ray
        for job in below:
            assert store.get(job.id).waiting_reason.startswith("asks for 1 GPU, the cluster has 0 GPUs"), job.id
    finally:
        engine.dispose()


def driver_pids(job_id: str) -> list[int]:
    """The processes of a queued job's Ray driver on this machine: `python -m
    vae_service.queue.entry` and the shell Ray starts it with."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and b"vae_service.queue.entry" in (entry / "cmdline").read_bytes()
                    and f"VAE_JOB_ID={job_id}".encode() in (entry / "environ").read_bytes().split(b"\0")):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_job_that_does_not_stop_within_its_grace_period_is_killed_and_still_resumes(head, tmp_path):
    """In-process dispatcher with a 1 s grace period. The long job's driver is frozen (SIGSTOP)
    before it is preempted, so it cannot stop gracefully: Ray kills it after the grace period,
    it writes no outcome, and it still resumes from its latest checkpoint and finishes."""
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade(engine)
    store = Store(engine)
    dispatcher = Dispatcher(store, RayJobs(head.address, head.token), python=sys.executable,
                            rules=Rules(preempt_min_run_s=0), grace_s=1)
    spec = tiny_spec_text("hard", cpus=2) + "storage: {uri: %s}\n" % (tmp_path / "runs")

    def add(user, priority, overrides=()):
        parsed = load_spec_text(spec, "<test>", list(overrides))
        return store.add(NewJob(name="hard", kind="train", priority=priority, submitted_by=user, spec_submitted=spec,
                                spec_normalised=dump_spec(parsed), resources=requested_resources(parsed)))[0]

    def tick_until(predicate, timeout, what):
        return wait_for(lambda: dispatcher.tick() or predicate(), timeout, what, interval=0.3)

    long = add("alice", 1, [*LONG[1:], "optim.epochs=3"])
    run_dir = tmp_path / "runs" / f"hard-{long.id}"
    try:
        tick_until(lambda: list(run_dir.glob("checkpoint_*/state.json")), 180, "the long job's first checkpoint")
        pids = driver_pids(long.id)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # deaf to SIGTERM from now on
        urgent = add("bob", 10)
        tick_until(lambda: store.get(long.id).state in ("preempted", "queued"), 60, "the long job to be killed")
        assert not (run_dir / "outcome.json").exists()  # it never got to write how it ended
        # Its room went to the urgent job; once that runs, cancelling it gives the room back.
        tick_until(lambda: store.get(urgent.id).state == "running", 120, "the urgent job to run")
        store.request_cancel(urgent.id)
        tick_until(lambda: store.get(long.id).state in ("succeeded", "failed"), 300, "the long job to resume and finish")
        finished = store.get(long.id)
        assert finished.state == "succeeded", finished.error
        assert (finished.preemptions, finished.attempts) == (1, 2)
        assert epochs_logged(finished.mlflow_run_id) == list(range(3))
        assert "resuming from checkpoint_" in RayJobs(head.address, head.token).logs(f"{long.id}-1")
    finally:
        for job in store.in_states([State.QUEUED, State.SUBMITTED, State.RUNNING]):
            store.request_cancel(job.id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and store.in_states([State.CANCELLING, State.PREEMPTING]):
            dispatcher.tick()
            time.sleep(0.5)
        engine.dispose()
