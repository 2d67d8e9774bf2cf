"""What each user holds on the cluster, their quota, and their fair share.

Usage is what a user's admitted jobs (submitted, running, cancelling, preempting) asked for,
plus how many such jobs they have. A quota (server settings VAE_QUOTA_CPUS / _GPUS / _JOBS, the
same for every user, admins included) caps it: a job that would take its user past the quota
waits, with the reason in `vae status` ("user quota of 2 GPUs in use"); one that asks for more
than the quota on its own is refused when it is submitted.

Fair share: among queued jobs of equal priority, the user with the smallest *effective share*
goes first (`FairShare.effective`, the one formula): what they hold now — their *dominant share*,
the largest fraction of any one resource of the cluster (CPUs or GPUs) that their jobs hold (as
in Dominant Resource Fairness) — plus what they held lately (their decayed usage, as a share),
divided by their weight. Ties go to fewer jobs held, then to the older job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

from vae_service.core.capacity import EPSILON, add, amount
from vae_service.queue.settings import FAIR_SHARE_HALF_LIFE_S, Settings

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


@dataclass(frozen=True)
class FairShare:
    """Weighted, history-aware fair share (server settings VAE_FAIR_SHARE_WEIGHTS and
    VAE_FAIR_SHARE_HALF_LIFE_S).

    A user's *usage* u is their dominant share integrated over time (share-seconds), decayed
    with the half-life h: after Δt holding a share s, u ← u·2^(−Δt/h) + s·(1 − 2^(−Δt/h))·h/ln 2
    (`decayed`: the exact integral, ≈ u·2^(−Δt/h) + s·Δt for a tick). Their *historic share* is
    u / (h/ln 2): holding s forever makes it s, so it is comparable to a share; it halves every
    half-life once they stop. The order among equal priorities is by

        effective share = (current dominant share + historic share) / weight

    smallest first: a weight-2 team may hold about twice as much before it yields, and a user who
    held the cluster all week yields to one who did not, until their history has decayed.
    h = 0 is no history: the current share / weight (Kueue's fair sharing, roughly); with weights
    all 1 that is plain DRF, the order before history existed.
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    half_life_s: float = FAIR_SHARE_HALF_LIFE_S

    @classmethod
    def from_settings(cls, settings: Settings) -> "FairShare":
        return cls(settings.weights, settings.fair_share_half_life_s)

    def weight(self, user: str) -> float:
        return self.weights.get(user, 1.0)

    @property
    def window_s(self) -> float:
        """h / ln 2: the mean age of decayed usage; share-seconds / window = a share."""
        return self.half_life_s / math.log(2)

    def decayed(self, usage_s: float, share: float, elapsed_s: float) -> float:
        """Usage after `elapsed_s` seconds holding `share` (0 without history)."""
        if self.half_life_s <= 0:
            return 0.0
        kept = 2.0 ** (-max(elapsed_s, 0.0) / self.half_life_s)
        return usage_s * kept + share * (1.0 - kept) * self.window_s

    def historic(self, usage_s: float) -> float:
        return usage_s / self.window_s if self.half_life_s > 0 else 0.0

    def effective(self, user: str, current: float, usage_s: float) -> float:
        """The ordering key (class docstring): smallest goes first."""
        return (current + self.historic(usage_s)) / self.weight(user)
