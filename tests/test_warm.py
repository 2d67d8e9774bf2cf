"""A job that joins a running cluster starts a worker importing the training loop ahead
(vae_service/jobs/warm.py): on the session's real Ray cluster, a fresh Ray job's next task
lands in a process that already has the training loop imported, only when the job qualifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# A fresh driver (its own Ray job, so no worker of an earlier test can be reused): warm for the
# spec given, wait for the import, then ask a task where it runs and what it has imported.
PROBE = """
import json, os, sys
import ray
from vae_service.core.spec_loading import load_spec_text
from vae_service.jobs.warm import TRAINING_LOOP, warm_a_worker

warmed = warm_a_worker(load_spec_text(sys.argv[1]))
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, ignore_reinit_error=True)
warm_pid = ray.get(warmed) if warmed is not None else None

@ray.remote(num_cpus=1)
def probe():
    return os.getpid(), TRAINING_LOOP in sys.modules

pid, imported = ray.get(probe.remote())
print(json.dumps({"warmed": warmed is not None, "same_process": pid == warm_pid, "imported": imported}))
"""


def spec_text(workers: int) -> str:
    return (f"name: warm\ndata: {{limit: 512}}\nmodel: {{hidden: [32], latent_dim: 2}}\n"
            f"resources: {{num_workers: {workers}, cpus_per_worker: 1}}\n")


def run_probe(ray_address: str, text: str, **env) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, text], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, RAY_ADDRESS=ray_address, **env))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_one_worker_job_on_a_running_cluster_finds_its_worker_with_the_loop_imported(ray_address):
    assert run_probe(ray_address, spec_text(workers=1)) == {"warmed": True, "same_process": True, "imported": True}


def test_a_job_that_would_not_use_the_process_starts_none(ray_address):
    """Two workers are Ray Train's worker group (actors of their own): nothing is warmed, and the
    job's first task imports the loop itself (the control: a fresh job has nothing imported)."""
    assert run_probe(ray_address, spec_text(workers=2)) == {"warmed": False, "same_process": False, "imported": False}
