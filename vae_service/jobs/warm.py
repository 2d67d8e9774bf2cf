"""A worker process started ahead for a job that joins a running Ray cluster: it imports torch
and the training loop while the driver does its own imports (torch, MLflow: seconds each).

Ray hands an idle worker process of a Ray job to that job's next task, so a one-worker run's
training task (training/one_worker.py), which waits for the import (it would otherwise start a
second process that imports the same beside it), finds this process with everything imported.

Only where it can help: a train job of one worker, whose driver's node could hold that worker
(the task goes where the driver runs, and a worker process is never shared between nodes). A
local Ray is started later, once the data is checked (jobs/execute.py), so a bad spec fails at
once: there is nothing to join yet. The warm task holds no resources; if another task of the
job took the process first, the training task starts a process as before. A worker process
belongs to one Ray job, so nothing warm is shared between jobs.
"""

from __future__ import annotations

import os
from typing import Optional

import ray

from vae_service.cluster import ensure_ray, start_a_worker, this_node
from vae_service.core.capacity import workers_that_fit
from vae_service.core.errors import JobError
from vae_service.core.job import Job
from vae_service.core.resources import per_worker, runs_as_one_task

TRAINING_LOOP = "vae_service.training.one_worker"  # what the training task imports first


def warm_a_worker(job: Job) -> Optional[ray.ObjectRef]:
    """Starts a worker importing the training loop when `job` would use it (RAY_ADDRESS set, a
    single-worker train job, this node big enough for it); returns the import's task
    (its result: the warm process's id), else None."""
    spec = job.trained_by_driver()
    if spec is None or not os.environ.get("RAY_ADDRESS"):
        return None
    if not runs_as_one_task(spec.resources):  # Ray Train's worker group: actors of their own
        return None
    try:
        ensure_ray()
    except JobError:  # the job itself says so, with its outcome (jobs/execute.py)
        return None
    if not workers_that_fit(per_worker(spec.resources), [this_node()]):
        return None  # the training task will run on another node
    return start_a_worker(TRAINING_LOOP)
