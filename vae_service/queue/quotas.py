"""What each user holds on the cluster, their quota, and their fair share.

Usage is what a user's admitted jobs (submitted, running, cancelling, preempting) asked for,
plus how many such jobs they have. A quota (server settings VAE_QUOTA_CPUS / _GPUS / _JOBS, the
same for every user, admins included) caps it: a job that would take its user past the quota
waits, with the reason in `vae status` ("user quota of 2 GPUs in use"); one that asks for more
than the quota on its own is refused when it is submitted.

Fair share: among queued jobs of equal priority, the user with the smallest *dominant share*
goes first — the largest fraction of any one resource of the cluster (CPUs or GPUs) that their
jobs hold (as in Dominant Resource Fairness). Ties go to fewer jobs held, then to the older job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from vae_service.core.capacity import EPSILON, add, amount
from vae_service.queue.settings import Settings

RESOURCES = (("CPU", "cpus"), ("GPU", "gpus"))  # Ray's resource name, the quota's field


@dataclass
class Usage:
    """One user's admitted jobs: the resources they asked for, and how many there are."""

    resources: dict[str, float] = field(default_factory=dict)
    jobs: int = 0

    def add(self, request: Mapping[str, float]) -> None:
        self.resources = add(self.resources, request)
        self.jobs += 1

    def share(self, totals: Mapping[str, float]) -> float:
        """The dominant share: the largest fraction of any resource the cluster has."""
        return max((self.resources.get(name, 0.0) / total for name, total in totals.items() if total > 0), default=0.0)


@dataclass(frozen=True)
class Quota:
    cpus: Optional[float] = None
    gpus: Optional[float] = None
    jobs: Optional[int] = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Quota":
        return cls(settings.quota_cpus, settings.quota_gpus, settings.quota_jobs)

    def _limits(self) -> list[tuple[str, float]]:
        return [(name, getattr(self, attr)) for name, attr in RESOURCES if getattr(self, attr) is not None]

    def never_fits(self, request: Mapping[str, float]) -> Optional[str]:
        """Why a job can never run under this quota (it asks for more on its own), or None."""
        for name, limit in self._limits():
            if request.get(name, 0.0) > limit + EPSILON:
                return f"asks for {amount(request[name], name)}, more than the user quota of {amount(limit, name)}"
        return None

    def exceeded(self, usage: Usage, request: Mapping[str, float]) -> Optional[str]:
        """Why admitting `request` now would take its user past the quota, or None."""
        if self.jobs is not None and usage.jobs + 1 > self.jobs:
            return f"user quota of {self.jobs} running job{'' if self.jobs == 1 else 's'} in use"
        for name, limit in self._limits():
            asked, held = request.get(name, 0.0), usage.resources.get(name, 0.0)
            if asked > 0 and held + asked > limit + EPSILON:
                return f"user quota of {amount(limit, name)} in use ({held:g} held, this job asks for {asked:g})"
        return None
