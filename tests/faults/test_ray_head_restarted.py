"""The Ray head restarted while the queue server was down (Ray's job table is lost with it):
the server, started again, reconciles. The job that was running is failed as lost, never
started a second time; the job that was still queued runs once on the new head.

What is guaranteed when Ray loses its job table (docs/RELIABILITY.md): a job the store calls
`running` is failed ("lost"), a `queued` job is submitted once; only a job caught between
`submitted` and Ray's answer would be submitted again (at-least-once for that window).
"""

from __future__ import annotations

import os

import pytest
from queue_support import api, job_state, ray_head, start_server, temporary_database, tiny_spec_text, wait_for

from vae_service.queue.ray_jobs import RayJobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TOKEN = "head-restart-token"


def server_env(head, workdir, db_url) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(head.client_env(), VAE_API_TOKEN=TOKEN, VAE_HOME=str(workdir / ".vae"), VAE_DB_URL=db_url,
               VAE_RAY_ADDRESS=head.address)
    return env


def test_a_restarted_head_fails_the_lost_job_and_runs_the_queued_one_once(tmp_path):
    with temporary_database("postgresql", tmp_path) as db_url:
        with ray_head(num_cpus=2) as first_head:
            server = start_server(tmp_path, server_env(first_head, tmp_path, db_url), name="before")
            http = api(server, TOKEN)
            # Both ask for the head's 2 CPUs: the second waits behind the first.
            running = http.post("/jobs", content=tiny_spec_text("long-one", cpus=2),
                                params=[("set", "optim.epochs=500")]).json()["id"]
            wait_for(lambda: job_state(http, running)["state"] == "running", 120, "the first job to run")
            waiting = http.post("/jobs", content=tiny_spec_text("queued-one", cpus=2)).json()["id"]
            wait_for(lambda: job_state(http, waiting)["waiting_reason"], 30, "the second job to wait for room")
            server.kill()  # SIGKILL, then the head goes away with its job table
        with ray_head(num_cpus=2) as second_head:
            assert RayJobs(second_head.address, second_head.token).list() == {}  # a new head knows nothing
            server = start_server(tmp_path, server_env(second_head, tmp_path, db_url), name="after")
            try:
                http = api(server, TOKEN)
                lost = wait_for(lambda: (j := job_state(http, running))["state"] == "failed" and j, 60, "the lost job")
                done = wait_for(lambda: (j := job_state(http, waiting))["state"] in ("succeeded", "failed") and j,
                                240, "the queued job to end")
                on_ray = RayJobs(second_head.address, second_head.token).list()
                log = server.log()
            finally:
                server.stop()
    assert "lost: Ray has no record of this job" in lost["error"] and lost["attempts"] == 1
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 1 and set(on_ray) == {waiting}, "a job reached the new head twice, or the lost one did"
    assert "Traceback" not in log
