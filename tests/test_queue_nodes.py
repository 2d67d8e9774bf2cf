"""The queue on a Ray cluster of several nodes, for real: a head with no CPUs and two worker
nodes of 2 CPUs each, all on this machine (`ray start --head --num-cpus 0`, then
`ray start --address … --num-cpus 2` twice, token auth), a `vae server` and real trainings.

The queue places a job's workers node by node, as Ray does (core/placement.py): a worker never
spans nodes, so 2 CPUs free as 1 + 1 on two nodes is no room for a 1 × 2-CPU worker.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from queue_support import api, job_state, ray_head, ray_worker_node, start_server, tiny_spec_text, wait_for

from vae_service.queue.ray_jobs import RayJobs

pytestmark = pytest.mark.slow
TOKEN = "queue-nodes-token"
NODE_CPUS = 2

SPREAD_SPEC = """\
name: spread
data: {limit: 2048}
model: {hidden: [32], latent_dim: 2}
optim: {epochs: 2, batch_size: 64, seed: 0}
resources: {num_workers: 2, cpus_per_worker: 1, placement: spread}
tracking: {experiment: queue-tests}
"""


@pytest.fixture(scope="module")
def nodes():
    """A head that runs nothing (0 CPUs) and two worker nodes of NODE_CPUS CPUs."""
    with ExitStack() as stack:
        head = stack.enter_context(ray_head(num_cpus=0))
        for _ in range(2):
            stack.enter_context(ray_worker_node(head, NODE_CPUS))
        yield head


@pytest.fixture(scope="module")
def server(nodes, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("queue-nodes")
    server = start_server(workdir, nodes.server_env(workdir, VAE_API_TOKEN=TOKEN))
    yield server
    server.stop()


def test_the_queue_sees_each_node_as_ray_reports_it(nodes):
    cluster = RayJobs(nodes.address, nodes.token).cluster()
    assert sorted(node.total["CPU"] for node in cluster.nodes) == [0.0, NODE_CPUS, NODE_CPUS]
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
