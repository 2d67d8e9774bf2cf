"""A run the cluster can never hold fails at once, saying how to fit, instead of Ray Train's
controller waiting for its workers forever (issue 12, defect 9)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_service.core.capacity import workers_that_fit
from vae_service.core.resources import shortfall
from vae_service.core.spec import ResourcesSpec

REPO = Path(__file__).resolve().parents[1]


def test_workers_are_counted_per_node_not_over_the_cluster_total():
    two_small_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert workers_that_fit({"CPU": 2.0, "GPU": 0.0}, two_small_nodes) == 2
    assert workers_that_fit({"CPU": 3.0, "GPU": 0.0}, two_small_nodes) == 0  # 4 CPUs in all, 2 per node
    assert workers_that_fit({"CPU": 1.0, "GPU": 1.0}, [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0}]) == 2
    assert workers_that_fit({"CPU": 0.5, "GPU": 0.0}, [{"CPU": 1.0}]) == 2


def test_the_message_names_what_is_asked_what_there_is_and_how_to_fit():
    machine = [{"CPU": 2.0, "GPU": 0.0}]
    assert shortfall(ResourcesSpec(num_workers=2, cpus_per_worker=1), machine) is None
    too_many = shortfall(ResourcesSpec(num_workers=2, cpus_per_worker=2), machine)
    assert too_many.startswith("resources: 2 worker(s) ask for 4 CPUs, this machine has 2 CPUs")
    assert "lower resources.num_workers to 1 or resources.cpus_per_worker" in too_many
    too_wide = shortfall(ResourcesSpec(num_workers=1, cpus_per_worker=3), [{"CPU": 2.0}, {"CPU": 2.0}])
    assert "the Ray cluster (2 nodes) has 4 CPUs" in too_wide
    assert "no node has more than 2 CPUs: lower resources.cpus_per_worker" in too_wide
    no_gpu = shortfall(ResourcesSpec(num_workers=1, use_gpu=True), machine)
    assert "set resources.use_gpu: false" in no_gpu


@pytest.mark.slow
def test_vae_run_larger_than_the_machine_exits_2_at_once_and_leaves_no_mlflow_run(tmp_path):
    cores = os.cpu_count() or 2
    store = tmp_path / "mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store}", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "vae_service.cli", "run", str(REPO / "jobs" / "mnist-vae.yaml"),
         "--set", "resources.num_workers=2", "--set", f"resources.cpus_per_worker={cores}",
         "--set", f"storage.uri={tmp_path / 'runs'}"],
        capture_output=True, text=True, env=env, timeout=180)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"ask for {2 * cores} CPUs, this machine has {cores} CPUs" in proc.stderr
    assert "lower resources.num_workers to 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 120, f"took {elapsed:.0f} s: the check must come before Ray Train waits for workers"
    if store.exists():  # nothing was tracked: the run never started
        import sqlite3

        with sqlite3.connect(store) as db:
            assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
