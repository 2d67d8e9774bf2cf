"""Which running jobs to stop so that a higher-priority job fits (scheduling.py asks).

A job may be preempted when it is running (not just handed to Ray, not already stopping), its
priority is strictly lower than the waiting job's, its spec allows it (resources.preemptible,
default true), and its current attempt has run at least the thrash guard's minimum
(VAE_PREEMPT_MIN_RUN_S), so a resumed job gets to make progress before it can be stopped again.

Among those: the fewest jobs whose resources, with what is free, make room — never more than
needed (no job in the chosen set could be spared). Between sets of that size, the one with the
lowest priorities, then the most recently started (they lose the least work): candidates are
ranked that way, and sets are tried in the ranking's lexicographic order. Past SEARCH_LIMIT sets
the search gives up exactness: the ranked candidates are taken in order until the job fits,
then any that can be spared are dropped again.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta
from typing import Callable, Optional, Protocol, Sequence

SEARCH_LIMIT = 20_000  # candidate sets examined before falling back to the greedy choice


class Running(Protocol):
    id: str
    priority: int
    state: str
    preemptible: bool
    running_since: Optional[datetime]

    @property
    def resource_request(self) -> dict[str, float]: ...


def candidates(active: Sequence[Running], priority: int, now: datetime, min_run_s: float) -> list[Running]:
    """The jobs that may be stopped for a job of `priority`, most preferred victim first."""
    guard = timedelta(seconds=min_run_s)
    eligible = [job for job in active
                if job.state == "running" and job.preemptible and job.priority < priority
                and job.running_since is not None and now - job.running_since >= guard]
    # lowest priority first; then the most recently started (reverse of the start time)
    return sorted(eligible, key=lambda job: (job.priority, -job.running_since.timestamp(), job.id))


def choose_victims(room_after: Callable[[Sequence[Running]], bool], ranked: Sequence[Running]) -> list[Running]:
    """The fewest of `ranked` (most preferred first) once stopped make room — `room_after(victims)`
    says whether the waiting job then fits, in all and on the nodes where its workers can go;
    [] when even all of them would not."""
    if not ranked or not room_after(ranked):
        return []
    examined = 0
    for size in range(1, len(ranked) + 1):
        if examined + math.comb(len(ranked), size) > SEARCH_LIMIT:
            return _greedy(room_after, ranked)
        for victims in itertools.combinations(ranked, size):  # in the ranking's order
            examined += 1
            if room_after(victims):
                return list(victims)
    return []  # not reached: all of them fit


def _greedy(room_after: Callable[[Sequence[Running]], bool], ranked: Sequence[Running]) -> list[Running]:
    chosen: list[Running] = []
    for job in ranked:
        chosen.append(job)
        if room_after(chosen):
            break
    for job in reversed(list(chosen)):  # spare the least preferred victims that are not needed
        rest = [other for other in chosen if other is not job]
        if room_after(rest):
            chosen = rest
    return chosen
