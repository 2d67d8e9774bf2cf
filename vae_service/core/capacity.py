"""Arithmetic on amounts of resources ({"CPU": 2.0, "GPU": 0.0}) — a job's request, the room
left, a node — and how an amount is written in a message: the one home of both, used by the
queue's scheduling, quotas and preemption and by `vae run`'s check that a run fits the cluster."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

EPSILON = 1e-9  # resources are floats (0.5 CPUs): compare with a little slack


def fits(request: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(value <= free.get(name, 0.0) + EPSILON for name, value in request.items() if value > 0)


def subtract(free: Mapping[str, float], request: Mapping[str, float]) -> dict[str, float]:
    return _plus(free, request, -1.0)


def add(free: Mapping[str, float], request: Mapping[str, float]) -> dict[str, float]:
    return _plus(free, request, 1.0)


def _plus(free: Mapping[str, float], request: Mapping[str, float], sign: float) -> dict[str, float]:
    # one loop, no negated copy of the request: a tick on 1,000 nodes adds and subtracts millions of times
    out = dict(free)
    for name, value in request.items():
        out[name] = out.get(name, 0.0) + sign * value
    return out


def summed(jobs: Sequence) -> dict[str, float]:
    """What the jobs asked for, together."""
    total: dict[str, float] = {}
    for job in jobs:
        total = add(total, job.resource_request)
    return total


def amount(value: float, name: str) -> str:
    """`1 CPU`, `2 CPUs`, `0.5 CPUs`."""
    return f"{value:g} {name}" + ("" if value == 1 else "s")


def bundles_on_node(bundle: Mapping[str, float], room: Mapping[str, float]) -> int:
    """How many identical bundles fit in one node's `room` (0 when its room has gone below 0)."""
    fit = math.inf  # asks for nothing: any number fits
    for name, value in bundle.items():  # a plain loop: called per node and per queued job each tick
        if value > 0:
            fit = min(fit, math.floor(room.get(name, 0.0) / value + EPSILON))
    return max(0, fit)


def workers_that_fit(bundle: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """How many identical worker bundles the nodes hold at once. Each bundle must sit on one
    node (a Ray placement-group bundle never spans nodes), so this counts per node."""
    return sum(bundles_on_node(bundle, node) for node in nodes)
