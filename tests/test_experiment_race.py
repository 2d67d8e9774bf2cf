"""Two jobs that start at once in a new MLflow store both find their experiment missing and both
create it: the one whose create loses must use the winner's experiment, not fail the job
(seen on a fresh queue: `Experiment(name=queue-tests) already exists`)."""

from __future__ import annotations

import threading

import pytest
from mlflow.tracking import MlflowClient

from vae_service.tracking.mlflow_run import experiment_id

pytestmark = pytest.mark.slow  # a new MLflow store and eight clients: 6–15 s here
STARTS = 8


def test_jobs_starting_at_once_share_the_experiment_they_all_create(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the store's tables, so that only the experiment is raced
    clients = [MlflowClient(uri) for _ in range(STARTS)]
    barrier = threading.Barrier(STARTS)
    ids, errors = [], []

    def start(mlflow: MlflowClient) -> None:
        barrier.wait()
        try:
            ids.append(experiment_id(mlflow, "raced"))
        except Exception as exc:  # what the job would have failed with
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(mlflow,)) for mlflow in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert len(ids) == STARTS and len(set(ids)) == 1
    assert MlflowClient(uri).get_experiment_by_name("raced").experiment_id == ids[0]
