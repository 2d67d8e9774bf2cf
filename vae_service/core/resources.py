"""What a job asks of the cluster: the queue admits it only when this much is free."""

from __future__ import annotations

from vae_service.core.spec import TrainSpec


def train_resources(spec: TrainSpec) -> dict[str, float]:
    """One Ray Train run: its workers. The Train controller, the progress actor and a job's
    driver take no CPU in Ray's accounting, so they are not counted."""
    workers = spec.resources.num_workers
    return {"CPU": workers * spec.resources.cpus_per_worker, "GPU": workers * spec.resources.gpus}


def requested_resources(spec) -> dict[str, float]:
    """Peak Ray resources of a job spec (any kind)."""
    if isinstance(spec, TrainSpec):
        return train_resources(spec)
    raise TypeError(f"unknown spec type {type(spec).__name__}")
