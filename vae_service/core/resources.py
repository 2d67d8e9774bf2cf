"""What a job asks of the cluster, and whether the cluster can ever hold it.

The queue admits a job only when `requested_resources` is free; `vae run` checks `shortfall`
before Ray Train starts, because an infeasible ScalingConfig makes Ray Train's controller wait
(and retry) forever instead of failing.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from vae_service.core.capacity import EPSILON, amount, workers_that_fit
from vae_service.core.placement import Bundles
from vae_service.core.job import Job
from vae_service.core.spec import ResourcesSpec

FIELD_OF = {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker"}


def per_worker(resources: ResourcesSpec) -> dict[str, float]:
    return {"CPU": resources.cpus_per_worker, "GPU": resources.gpus}


def runs_as_one_task(resources: ResourcesSpec) -> bool:
    """A run of one worker is one Ray task, not a Ray Train worker group (training/one_worker.py)."""
    return resources.num_workers == 1


def requested_resources(job: Job) -> dict[str, float]:
    """Peak Ray resources of a job (any kind)."""
    return requested_bundles(job).total


def requested_bundles(job: Job) -> Bundles:
    """A job's workers at its peak, as Ray places them: one bundle per worker (a sweep: per
    worker of each of up to max_concurrent trials at once), packed or spread as the spec says."""
    # The Train controller, the progress actor and a job's driver take no CPU in Ray's
    # accounting, so only the workers count.
    resources = job.worker_resources()
    return Bundles(per_worker(resources), job.peak_workers(), resources.placement.upper())


def preemptible(job: Job) -> bool:
    """Whether the queue may stop this job for a higher-priority one (resources.preemptible;
    a sweep's is its base train spec's)."""
    return job.worker_resources().preemptible


def larger_than_any_node(resources: ResourcesSpec, nodes: Sequence[Mapping[str, float]]) -> Optional[tuple[str, str]]:
    """(the field to change, why) when one worker asks for more than any of `nodes` has — Ray
    never splits a worker across nodes, so such a run waits forever — else None."""
    bundle = per_worker(resources)
    largest = {n: max((node.get(n, 0.0) for node in nodes), default=0.0) for n in bundle}
    too_big = [n for n, a in bundle.items() if a > largest[n] + EPSILON]
    if not too_big:
        return None
    if "GPU" in too_big and largest["GPU"] == 0:
        return "resources.use_gpu", "the cluster has no GPU: set resources.use_gpu: false"
    name = too_big[0]
    return FIELD_OF[name], (f"one worker asks for {amount(bundle[name], name)} and no node has more than "
                            f"{amount(largest[name], name)}: lower {FIELD_OF[name]}")


def shortfall(resources: ResourcesSpec, nodes: Sequence[Mapping[str, float]]) -> Optional[str]:
    """None when the nodes (each a {"CPU": n, "GPU": m} of its total resources) can hold the
    run's workers at once; else what it asks for, what the cluster has, and how to fit."""
    bundle, workers = per_worker(resources), resources.num_workers
    fit = workers_that_fit(bundle, nodes)
    if fit >= workers:
        return None
    asked = ", ".join(f"{amount(workers * a, n)}" for n, a in bundle.items() if a > 0)
    where = "this machine has" if len(nodes) == 1 else f"the Ray cluster ({len(nodes)} nodes) has"
    have = ", ".join(amount(sum(node.get(n, 0.0) for node in nodes), n) for n, a in bundle.items() if a > 0)
    too_big = larger_than_any_node(resources, nodes)
    advice = too_big[1] if too_big else f"lower resources.num_workers to {fit} or resources.cpus_per_worker"
    return (f"resources: {workers} worker(s) ask for {asked}, {where} {have}; "
            f"they would wait forever: {advice}")
