"""Which queued jobs to admit now: priority, then age, within the cluster's free resources.

Free = Ray's total resources − what the admitted jobs (submitted, running, cancelling) asked
for; Ray's live usage is not consulted, so a job that has not yet started its workers still
counts.

Starvation: head-of-line *reservation*. Jobs are considered in order (priority desc, then
oldest first). The first job that does not fit is not skipped and forgotten: what it asks for
is reserved out of the free resources, and later (lower-ranked) jobs may only use what is left
beyond that reservation (backfill). As admitted jobs finish, the reservation is the first thing
that fits, so a large job waits at most for the jobs already running — small jobs behind it
cannot overtake it forever. One reservation at a time (the highest-ranked blocked job); a job
that asks for more than the whole cluster has is never reserved for (it would block everything)
and simply waits for the cluster to grow. Priorities are strict: a low-priority job waits as
long as higher-priority jobs keep arriving — that is what priority means here (no aging).

Every job left waiting gets a reason with the numbers (`waiting_reason`), which the dispatcher
stores and `vae status` shows: "asks for 4 CPUs, the cluster has 2: lower …" for a job that can
never fit, "waiting for 2 CPUs to be free (1 of 2 in use)" for one waiting for room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol, Sequence

EPSILON = 1e-9
# What to lower in a spec when a job asks for more than the cluster has.
LOWER = {"CPU": "resources.cpus_per_worker or resources.num_workers",
         "GPU": "resources.gpus_per_worker or resources.num_workers (or set resources.use_gpu: false)"}


class Candidate(Protocol):
    id: str

    @property
    def resource_request(self) -> dict[str, float]: ...


def fits(request: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(amount <= free.get(name, 0.0) + EPSILON for name, amount in request.items() if amount > 0)


def subtract(free: Mapping[str, float], request: Mapping[str, float]) -> dict[str, float]:
    out = dict(free)
    for name, amount in request.items():
        out[name] = out.get(name, 0.0) - amount
    return out


def free_resources(totals: Mapping[str, float], admitted: Mapping[str, float]) -> dict[str, float]:
    return subtract(totals, admitted)


@dataclass
class Plan:
    chosen: list = field(default_factory=list)  # to admit now, in order
    reserved_for: Optional[object] = None  # the highest-ranked job that waits for room
    reasons: dict[str, str] = field(default_factory=dict)  # job id → why it waits (every job not chosen)


def plan(queued_in_order: Sequence[Candidate], totals: Mapping[str, float], admitted: Mapping[str, float]) -> Plan:
    """Which jobs to admit now, which one the room is reserved for, and why each other one waits."""
    out = Plan()
    free = free_resources(totals, admitted)  # what later jobs may use (less the reservation)
    unreserved = dict(free)  # what is free at all
    for job in queued_in_order:
        request = job.resource_request
        if fits(request, free):
            out.chosen.append(job)
            free, unreserved = subtract(free, request), subtract(unreserved, request)
        elif not fits(request, totals):
            out.reasons[job.id] = too_large(request, totals)
        else:
            out.reasons[job.id] = waiting_for_room(request, totals, unreserved, out.reserved_for)
            if out.reserved_for is None:
                out.reserved_for = job
                free = subtract(free, request)  # may go negative: nothing behind it fits until it runs
    return out


def admit(queued_in_order: Sequence[Candidate], totals: Mapping[str, float], admitted: Mapping[str, float]) -> tuple[list, object]:
    """Returns (jobs to admit now, in order; the job holding the reservation or None)."""
    result = plan(queued_in_order, totals, admitted)
    return result.chosen, result.reserved_for


# ---- why a job waits (one line, with the numbers) ----------------------------------------------


def amount(value: float, name: str) -> str:
    """`1 CPU`, `2 CPUs`, `0.5 CPUs`."""
    return f"{value:g} {name}" + ("" if value == 1 else "s")


def _asked(request: Mapping[str, float]) -> dict[str, float]:
    return {name: value for name, value in request.items() if value > 0}


def too_large(request: Mapping[str, float], totals: Mapping[str, float]) -> str:
    """A job that asks for more than the whole cluster has: it waits until the cluster grows."""
    over = [name for name, value in _asked(request).items() if value > totals.get(name, 0.0) + EPSILON]
    return "; ".join(f"asks for {amount(request[name], name)}, the cluster has {amount(totals.get(name, 0.0), name)}: "
                     f"lower {LOWER.get(name, 'resources')}" for name in over)


def waiting_for_room(request: Mapping[str, float], totals: Mapping[str, float], unreserved: Mapping[str, float],
                     reserved_for: Optional[Candidate] = None) -> str:
    """A job that fits the cluster but not what is free now (`unreserved`: free before any
    reservation); `reserved_for`: the job ranked ahead that holds the room, if it is that."""
    asked = _asked(request)
    short = [name for name, value in asked.items() if value > unreserved.get(name, 0.0) + EPSILON] or list(asked)
    in_use = ", ".join(f"{totals.get(n, 0.0) - unreserved.get(n, 0.0):g} of {amount(totals.get(n, 0.0), n)}"
                       for n in short)
    held = ""
    if reserved_for is not None:
        held = f", the rest held for job {reserved_for.id}, ranked ahead"
    wanted = " and ".join(amount(request[name], name) for name in short)
    return f"waiting for {wanted} to be free ({in_use} in use{held})"
