"""The queue on a Ray cluster of several nodes, for real: a head with no CPUs and two worker
nodes of 2 CPUs and 2 logical GPUs each, all on this machine (`ray start --head --num-cpus 0`,
then `ray start --address … --num-cpus 2 --num-gpus 2` twice, token auth), `vae server`s and
real trainings.

The queue places a job's workers node by node, as Ray does (core/placement.py): a worker never
spans nodes, so 2 CPUs free as 1 + 1 on two nodes is no room for a 1 × 2-CPU worker.

The GPUs are logical: Ray counts and schedules them, no device is behind them, and this torch has
no CUDA, so a training with `use_gpu: true` would fail on `cuda:0`. The tests of GPU jobs (quotas,
fair share and preemption counted in GPUs) therefore run a server whose jobs are bundle holders
(tests/bundle_holder.py, through the server's VAE_JOB_PYTHON): each is a real Ray job that asks
Ray for its spec's bundles and holds them, training nothing. The cluster, the queue, the
admission, placement and preemption are all real. The killed-node test runs a real training.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest
from queue_support import (RayHead, api, job_state, live_nodes, ray_head, ray_worker_node, start_server,
                           tiny_spec_text, wait_for)

from vae_service.queue.ray_jobs import RayJobs

pytestmark = pytest.mark.slow
TOKEN = "queue-nodes-token"
NODE_CPUS = 2
NODE_GPUS = 2  # logical: no device behind them
USERS = {"alice": "alice-token", "bob": "bob-token"}
HOLDER = Path(__file__).with_name("bundle_holder.py")
ENDED = ("succeeded", "failed", "cancelled")

# The jobs below draw no figures (tracking.figures: false): they test placement, and figures would
# add about 3 s to each job's end (tests/queue_support.py's TINY_SPEC says the same).
SPREAD_SPEC = """\
name: spread
data: {limit: 2048}
model: {hidden: [32], latent_dim: 2}
optim: {epochs: 2, batch_size: 64, seed: 0}
resources: {num_workers: 2, cpus_per_worker: 1, placement: spread}
tracking: {experiment: queue-tests, figures: false}
"""


@dataclass
class Nodes:
    head: RayHead
    workers: list  # each worker node's `ray start --block` process (its raylet is a child)
    stack: ExitStack

    def add_worker(self) -> subprocess.Popen:
        process = self.stack.enter_context(ray_worker_node(self.head, NODE_CPUS, NODE_GPUS))
        self.workers.append(process)
        return process


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    """A head that runs nothing (0 CPUs) and two worker nodes of NODE_CPUS CPUs and NODE_GPUS
    logical GPUs."""
    with ExitStack() as stack:
        nodes = Nodes(stack.enter_context(ray_head(num_cpus=0)), [], stack)
        for _ in range(2):
            nodes.add_worker()
        yield nodes


@pytest.fixture(scope="module")
def nodes(cluster) -> RayHead:
    return cluster.head


@pytest.fixture(scope="module")
def server(nodes, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("queue-nodes")
    server = start_server(workdir, nodes.server_env(workdir, VAE_API_TOKEN=TOKEN))
    yield server
    server.stop()


def test_the_queue_sees_each_node_as_ray_reports_it(nodes):
    cluster = RayJobs(nodes.address, nodes.token).cluster()
    assert sorted(node.total["CPU"] for node in cluster.nodes) == [0.0, NODE_CPUS, NODE_CPUS]
    assert sorted(node.total["GPU"] for node in cluster.nodes) == [0.0, NODE_GPUS, NODE_GPUS]
    assert len({node.id for node in cluster.nodes}) == 3


def test_a_job_whose_room_is_split_across_nodes_waits_with_the_reason_and_runs_when_room_opens(nodes, server):
    """The issue's case: X (2 × 1 CPU, spread) runs one worker on each node; C (1 × 2 CPUs) must
    not be admitted while X runs, though 2 CPUs are free in all; it runs once X has ended."""
    client = api(server, TOKEN)
    x = client.post("/jobs", content=SPREAD_SPEC)
    assert x.status_code == 201, x.text
    x_id = x.json()["id"]
    c = client.post("/jobs", content=tiny_spec_text("whole-node", cpus=2))
    assert c.status_code == 201, c.text
    c_id = c.json()["id"]

    # C's first reason may be "in line" behind X; the split-room reason comes once X is placed.
    wait_for(lambda: job_state(client, x_id)["state"] != "queued", 60, "X to be admitted")

    def c_reason() -> str | None:
        reason = job_state(client, c_id)["waiting_reason"]
        return None if reason is None or reason.startswith("in line") else reason

    reason = wait_for(c_reason, 60, "C's waiting reason once X is admitted")
    assert reason == ("waiting for room on the nodes for 1 × 2 CPUs: 2 CPUs free in all, but no node has 2 CPUs free "
                      "(1 CPU free on each of 2 nodes, 0 CPUs free on 1 node)"), reason

    # While X runs, Ray really has its two workers on two nodes, and C is never admitted.
    ray = RayJobs(nodes.address, nodes.token)
    seen_nodes: set[str] = set()

    def x_ended() -> bool:
        jobs = {job_id: job_state(client, job_id) for job_id in (x_id, c_id)}
        assert jobs[c_id]["state"] == "queued" or jobs[x_id]["state"] in ("succeeded", "failed"), jobs
        info = ray.info(jobs[x_id]["ray_submission_id"] or x_id)
        if info is not None and info.ray_job_id:
            seen_nodes.update(ray.placements().get(info.ray_job_id, []))
        return jobs[x_id]["state"] in ("succeeded", "failed", "cancelled")

    wait_for(x_ended, 300, "X to end", interval=1.0)
    assert job_state(client, x_id)["state"] == "succeeded", job_state(client, x_id)
    assert len(seen_nodes) == 2, f"X's workers were seen on {seen_nodes}: not spread over the two nodes"

    wait_for(lambda: job_state(client, c_id)["state"] in ("succeeded", "failed"), 240, "C to train once X ended")
    assert job_state(client, c_id)["state"] == "succeeded", job_state(client, c_id)
    assert job_state(client, c_id)["waiting_reason"] is None


def test_a_job_larger_than_any_node_is_refused_at_submission(server):
    """3 CPUs for one worker: 4 CPUs in all, but no node has more than 2. Refused with a 422
    that names the field and the node sizes; nothing is stored."""
    client = api(server, TOKEN)
    before = client.get("/jobs").json()
    response = client.post("/jobs", content=tiny_spec_text("too-big", cpus=3))
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert problem["path"] == "resources.cpus_per_worker"
    assert problem["msg"] == ("one worker asks for 3 CPUs and no node has more than 2 CPUs: lower "
                              "resources.cpus_per_worker (the Ray cluster has 3 node(s))"), problem
    assert client.get("/jobs").json() == before


# ---------------------------------------------------------------------------------------------
# GPU jobs: bundle holders (tests/bundle_holder.py) on the nodes' logical GPUs

HELD_SPEC = """\
name: {name}
data: {{limit: 256}}
model: {{hidden: [32], latent_dim: 2}}
optim: {{epochs: 1, batch_size: 64, seed: 0}}
resources: {{num_workers: {workers}, cpus_per_worker: {cpus}, use_gpu: {use_gpu}, gpus_per_worker: {gpus}, placement: {placement}}}
tracking: {{experiment: queue-tests, figures: false}}
"""


def held_spec(name: str, gpus: float, cpus: float = 1, workers: int = 1, placement: str = "pack") -> str:
    """A job of `workers` × (`cpus` CPUs + `gpus` GPUs); run by a bundle holder, it trains nothing."""
    return HELD_SPEC.format(name=name, workers=workers, cpus=cpus, use_gpu=str(gpus > 0).lower(), gpus=gpus,
                            placement=placement)


@contextmanager
def holder_server(nodes: RayHead, workdir: Path, **settings: str) -> Iterator[object]:
    """A `vae server` on the nodes (users alice and bob, neither an admin) whose jobs run
    tests/bundle_holder.py instead of a training (VAE_JOB_PYTHON names a wrapper that execs it).
    It starts with the nodes idle; at the end every Ray job still running is stopped, so the next
    test finds them idle too."""
    wrapper = workdir / "hold-bundles"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(HOLDER))}\n")
    wrapper.chmod(0o755)
    nodes.wait_idle()
    env = nodes.server_env(workdir, VAE_API_TOKEN=",".join(f"{user}:{token}" for user, token in USERS.items()),
                           VAE_JOB_PYTHON=str(wrapper), **settings)
    server = start_server(workdir, env)
    try:
        yield server
    finally:
        server.stop()
        ray = RayJobs(nodes.address, nodes.token)
        for submission_id, job in ray.list().items():
            if job.status in ("PENDING", "RUNNING"):
                ray.stop(submission_id)
        nodes.wait_idle()


class Held:
    """Submits bundle-holder jobs as a user and says where Ray has placed them."""

    def __init__(self, nodes: RayHead, server, user: str):
        self.client = api(server, USERS[user])
        self.ray = RayJobs(nodes.address, nodes.token)

    def submit(self, spec: str, priority: int = 0) -> str:
        response = self.client.post("/jobs", params={"priority": priority}, content=spec)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def state(self, job_id: str) -> dict:
        return job_state(self.client, job_id)

    def placed(self, job_id: str) -> Optional[list[str]]:
        """The node id of each of the job's bundles as Ray placed them (its current attempt), or
        None while Ray has not placed them."""
        job = self.state(job_id)
        if job["state"] != "running":
            return None
        info = self.ray.info(job["ray_submission_id"] or job_id)
        if info is None or not info.ray_job_id:
            return None
        return self.ray.placements().get(info.ray_job_id) or None

    def wait_placed(self, job_id: str, timeout: float = 90) -> list[str]:
        deadline = time.monotonic() + timeout
        while not (where := self.placed(job_id)):
            if time.monotonic() > deadline or self.state(job_id)["state"] in ENDED:
                job = self.state(job_id)
                logs = self.ray.logs(job["ray_submission_id"] or job_id) if job["ray_submission_id"] else None
                pytest.fail(f"job {job_id} not placed by Ray: {job}\n{(logs or '')[-3000:]}")
            time.sleep(0.5)
        return where

    def cancel(self, job_id: str) -> None:
        assert self.client.post(f"/jobs/{job_id}/cancel").status_code in (200, 202)
        wait_for(lambda: self.state(job_id)["state"] == "cancelled", 60, f"job {job_id} to be cancelled")

    def reason(self, job_id: str, starts: str, timeout: float = 60) -> str:
        def said() -> Optional[str]:
            job = self.state(job_id)
            assert job["state"] == "queued", job
            return job["waiting_reason"] if (job["waiting_reason"] or "").startswith(starts) else None

        return wait_for(said, timeout, f"job {job_id} to wait with a reason starting {starts!r}")


def test_a_gpu_quota_holds_a_users_second_gpu_job_while_another_users_runs(nodes, tmp_path):
    """VAE_QUOTA_GPUS=2. alice's first job holds 2 GPUs; her second (1 GPU) waits with the quota's
    reason, although the nodes have room; bob's (1 GPU), submitted after it, runs; once alice's
    first job ends, her second runs. The jobs are bundle holders (module docstring)."""
    with holder_server(nodes, tmp_path, VAE_QUOTA_GPUS="2") as server:
        alice, bob = Held(nodes, server, "alice"), Held(nodes, server, "bob")
        first = alice.submit(held_spec("alice-first", gpus=2))
        alice.wait_placed(first)
        second = alice.submit(held_spec("alice-second", gpus=1))
        reason = alice.reason(second, "user quota")
        assert reason == "user quota of 2 GPUs in use (2 held, this job asks for 1)", reason

        bobs = bob.submit(held_spec("bob-first", gpus=1))
        bob.wait_placed(bobs)
        assert alice.state(second)["state"] == "queued"
        assert alice.state(second)["waiting_reason"] == reason  # 1 GPU is still free: only the quota holds it

        alice.cancel(first)
        alice.wait_placed(second)
        assert bob.state(bobs)["state"] == "running"


def test_fair_share_counts_gpus_the_user_holding_fewer_goes_first(nodes, tmp_path):
    """Equal priority. bob holds all 4 GPUs (and 0.75 CPUs); alice holds 1 CPU and no GPU. bob's
    next job is submitted before alice's, both for 1 GPU. Counting GPUs, alice's dominant share
    (1 of 4 CPUs: 0.25) is below bob's (3 or 4 of 4 GPUs), so when one GPU is freed her job goes
    first, though bob's is older and bob holds fewer CPUs. The jobs are bundle holders."""
    with holder_server(nodes, tmp_path) as server:
        alice, bob = Held(nodes, server, "alice"), Held(nodes, server, "bob")
        held = [bob.submit(held_spec("bob-two", gpus=2, cpus=0.25))]
        bob.wait_placed(held[0])  # first: both GPUs of one node
        held.append(alice.submit(held_spec("alice-cpu", gpus=0, cpus=1)))
        held += [bob.submit(held_spec(f"bob-one-{i}", gpus=1, cpus=0.25)) for i in range(2)]
        for job_id in held:
            Held(nodes, server, "alice" if job_id == held[1] else "bob").wait_placed(job_id)

        bobs_next = bob.submit(held_spec("bob-next", gpus=1, cpus=0.25))
        time.sleep(1)  # strictly older
        alices_next = alice.submit(held_spec("alice-next", gpus=1, cpus=0.25))
        # Both wait; alice's is ranked ahead (the room is held for it), bob's behind it.
        said = bob.reason(bobs_next, "waiting for 1 GPU to be free (4 of 4 GPUs in use, the rest held for job")
        assert said.endswith(f"held for job {alices_next}, ranked ahead)"), said

        bob.cancel(held[3])  # one GPU free
        alice.wait_placed(alices_next)
        job = bob.state(bobs_next)
        assert job["state"] == "queued" and job["waiting_reason"].startswith("waiting for 1 GPU to be free"), job


def test_preemption_frees_room_on_the_one_node_where_the_urgent_job_fits(nodes, tmp_path):
    """Four low-priority 1-GPU jobs (priority 1, alice) fill both nodes, two on each, started in
    the order a1 (node Y), b1, b3 (node X), a3 (node Y). bob's urgent job (priority 10) needs 2
    GPUs on ONE node. Victims are ranked most recently started first (equal priority): a3, b3, …
    but a3 and b3 are on different nodes, and stopping them would free 2 GPUs in all and no room
    for it. The queue preempts the fewest jobs that make room on one node, the best-ranked such
    pair: a3 and a1, both on Y; the urgent job runs there; b1 and b3 run on, untouched, and the
    preempted jobs (priority 1) wait without preempting anything in turn.

    Where each low job lands is made certain with fillers (jobs that take a node's free GPUs
    while the others are placed, then cancelled). The jobs are bundle holders (module docstring)."""
    with holder_server(nodes, tmp_path, VAE_PREEMPT_MIN_RUN_S="0", VAE_PREEMPT_GRACE_S="10") as server:
        alice, bob = Held(nodes, server, "alice"), Held(nodes, server, "bob")
        low, where = {}, {}

        def start(name: str) -> None:
            low[name] = alice.submit(held_spec(name, gpus=1), priority=1)
            (where[name],) = alice.wait_placed(low[name])

        big_filler = alice.submit(held_spec("filler-x", gpus=2))
        (x,) = alice.wait_placed(big_filler)  # X full
        start("a1")  # on Y
        small_filler = alice.submit(held_spec("filler-y", gpus=1))
        alice.wait_placed(small_filler)  # Y full
        alice.cancel(big_filler)
        start("b1")  # on X
        start("b3")  # on X
        alice.cancel(small_filler)
        start("a3")  # on Y
        y = where["a1"]
        assert where == {"a1": y, "b1": x, "b3": x, "a3": y} and x != y, where

        urgent = bob.submit(held_spec("urgent", gpus=2), priority=10)
        assert bob.wait_placed(urgent) == [y]
        victims = re.findall(r"preempting job (\w+) \(priority 1\) for job (\w+) \(priority 10\)", server.log())
        names = {job_id: name for name, job_id in low.items()}
        assert sorted((names.get(victim, victim), other) for victim, other in victims) == [("a1", urgent), ("a3", urgent)], victims
        states = {name: alice.state(job_id) for name, job_id in low.items()}
        seen = {name: (job["state"], job["preemptions"], job["waiting_reason"]) for name, job in states.items()}
        assert seen["b1"][:2] == seen["b3"][:2] == ("running", 0), seen
        assert all(seen[name][1] == 1 and seen[name][0] in ("preempted", "queued") for name in ("a1", "a3")), seen
        assert "preempting" not in server.log().split(f"for job {urgent} (priority 10)")[-1], "a second round of preemptions"


# ---------------------------------------------------------------------------------------------
# A worker node killed under a running job (last in the module: it replaces the node it kills)

# 1 worker × 2 CPUs: a whole node, so the job can only go on on the other one. Some seconds an
# epoch on this machine; checkpoints every epoch; the queue's default VAE_MAX_FAILURES (3)
# recovers from the lost node.
SURVIVOR_EPOCHS = 6
SURVIVOR_SPEC = f"""\
name: survivor
data: {{limit: 4096}}
model: {{hidden: [128], latent_dim: 2}}
optim: {{epochs: {SURVIVOR_EPOCHS}, batch_size: 32, seed: 0}}
resources: {{num_workers: 1, cpus_per_worker: 2}}
tracking: {{experiment: queue-tests, figures: false}}
"""


def raylets(workers: list) -> dict:
    """Ray's node id → (the worker node's `ray start` process, its raylet), found among the
    children of the `ray start` processes this module started (no other cluster's raylet)."""
    import psutil

    out = {}
    for worker in workers:
        if worker.poll() is not None:
            continue
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                if child.name() == "raylet":
                    node_id = next(arg.split("=", 1)[1] for arg in child.cmdline() if arg.startswith("--node_id="))
                    out[node_id] = (worker, child)
            except (psutil.NoSuchProcess, StopIteration):
                continue
    return out


@pytest.mark.timeout(900)  # about 2 minutes alone; far longer when the machine is loaded
def test_a_job_on_a_killed_worker_node_resumes_on_the_other_node_from_its_checkpoint(cluster, server):
    """A real training (1 × 2 CPUs, a checkpoint each epoch) runs on one worker node; that node's
    raylet is killed (SIGKILL, by its PID) once two checkpoints are written. Ray declares the node
    dead, the training task is retried on the other node, it continues from its latest checkpoint
    (epoch 1 is trained once, every epoch is trained), and the job succeeds. The node is replaced
    afterwards, so the module's cluster has two worker nodes again."""
    head = cluster.head.wait_idle()
    client, ray = api(server, TOKEN), RayJobs(head.address, head.token)
    submitted = client.post("/jobs", content=SURVIVOR_SPEC)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    run_dir = Path(submitted.json()["run_dir"])

    def placed() -> Optional[list[str]]:
        job = job_state(client, job_id)
        info = ray.info(job["ray_submission_id"] or job_id) if job["state"] == "running" else None
        return ray.placements().get(info.ray_job_id) if info is not None and info.ray_job_id else None

    # Two checkpoints: the first has surely been reported to the driver, which resumes from it.
    wait_for(lambda: len(list(run_dir.glob("checkpoint_*/state.json"))) >= 2 or job_state(client, job_id)["state"] in ENDED,
             600, "the job's second checkpoint", interval=0.2)
    assert job_state(client, job_id)["state"] == "running", job_state(client, job_id)
    (node,) = wait_for(placed, 30, "Ray to say where the job runs")
    by_node = raylets(cluster.workers)
    assert node in by_node and len(by_node) == 2, (node, by_node)
    victim, raylet = by_node[node]
    (other,) = set(by_node) - {node}
    raylet.kill()  # SIGKILL to that PID only
    try:
        seen_after: set[str] = set()

        def ended() -> bool:
            job = job_state(client, job_id)
            seen_after.update(placed() or ())
            return job["state"] in ENDED

        wait_for(ended, 400, "the job to end after its node was killed", interval=1.0)
        job = job_state(client, job_id)
        log = client.get(f"/jobs/{job_id}/logs").text
        assert job["state"] == "succeeded", (job, log[-3000:])
        # (Ray's task list may still name the dead node for a moment after the kill.)
        assert other in seen_after, (seen_after, node, other)
        epochs = [int(n) for n in re.findall(rf"^epoch (\d+)/{SURVIVOR_EPOCHS} ", log, re.MULTILINE)]
        assert epochs.count(1) == 1, epochs  # continued from a checkpoint, not from the start
        assert sorted(set(epochs)) == list(range(1, SURVIVOR_EPOCHS + 1)), epochs
        # Ray declares the node dead after its health checks fail (GCS: seconds). On a quiet machine
        # the job can end on the other node before that, so this waits for it (and fails if it never does).
        wait_for(lambda: not [n for n in live_nodes(head) if n["node_id"] == node], 120, "Ray to declare the killed node dead")
    finally:
        cluster.workers.remove(victim)
        cluster.add_worker()
