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
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

EPSILON = 1e-9


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


def admit(queued_in_order: Sequence[Candidate], totals: Mapping[str, float], admitted: Mapping[str, float]) -> tuple[list, object]:
    """Returns (jobs to admit now, in order; the job holding the reservation or None)."""
    free = free_resources(totals, admitted)
    chosen, reserved_for = [], None
    for job in queued_in_order:
        request = job.resource_request
        if fits(request, free):
            chosen.append(job)
            free = subtract(free, request)
        elif reserved_for is None and fits(request, totals):
            reserved_for = job
            free = subtract(free, request)  # may go negative: nothing behind it fits until it runs
    return chosen, reserved_for
