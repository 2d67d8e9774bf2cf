"""What a job asks of the cluster: the queue admits it only when this much is free."""

from __future__ import annotations

from vae_service.core.spec import TrainSpec
from vae_service.core.sweep_spec import SweepSpec


def train_resources(spec: TrainSpec) -> dict[str, float]:
    """One Ray Train run: its workers. The Train controller, the progress actor and a job's
    driver take no CPU in Ray's accounting, so they are not counted."""
    workers = spec.resources.num_workers
    return {"CPU": workers * spec.resources.cpus_per_worker, "GPU": workers * spec.resources.gpus}


def requested_resources(spec) -> dict[str, float]:
    """Peak Ray resources of a job spec (any kind)."""
    if isinstance(spec, TrainSpec):
        return train_resources(spec)
    if isinstance(spec, SweepSpec):  # up to max_concurrent trials at once (fewer if they don't fit)
        trials = min(spec.sweep.max_concurrent, spec.sweep.trial_count())
        return {name: trials * amount for name, amount in train_resources(spec.train).items()}
    raise TypeError(f"unknown spec type {type(spec).__name__}")
