"""Arithmetic on resource requests ({"CPU": 2.0, "GPU": 0.0}), shared by scheduling, quotas
and preemption, and how an amount is written in a waiting reason."""

from __future__ import annotations

from typing import Mapping, Sequence

EPSILON = 1e-9  # resources are floats (0.5 CPUs): compare with a little slack


def fits(request: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(value <= free.get(name, 0.0) + EPSILON for name, value in request.items() if value > 0)


def subtract(free: Mapping[str, float], request: Mapping[str, float]) -> dict[str, float]:
    out = dict(free)
    for name, value in request.items():
        out[name] = out.get(name, 0.0) - value
    return out


def add(free: Mapping[str, float], request: Mapping[str, float]) -> dict[str, float]:
    return subtract(free, {name: -value for name, value in request.items()})


def summed(jobs: Sequence) -> dict[str, float]:
    """What the jobs asked for, together."""
    total: dict[str, float] = {}
    for job in jobs:
        total = add(total, job.resource_request)
    return total


def amount(value: float, name: str) -> str:
    """`1 CPU`, `2 CPUs`, `0.5 CPUs`."""
    return f"{value:g} {name}" + ("" if value == 1 else "s")
