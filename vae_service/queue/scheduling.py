"""Which queued jobs to admit now, which running jobs to preempt for them, and why the others
wait: priority, quotas, fair share, within the cluster's free resources.

Room is counted twice, and a job needs both: in all (Ray's total resources − what the admitted
jobs — submitted, running, cancelling, preempting — asked for, so a job that has not yet started
its workers still counts), and node by node (core/placement.py: each worker a bundle whole on
one node, packed or spread; the admitted jobs where Ray says they are, else where Ray would put
them). Enough free in all but split across nodes is no room: the job waits and says so.

Order: priority first (strict: a low-priority job waits as long as higher-priority jobs keep
arriving; no aging). Among jobs of equal priority, fair share (quotas.FairShare): the job of the
user with the smallest effective share goes next — what they hold now, counting what this pass
has just admitted, plus their decayed past usage (`history`), over their weight — then the
oldest. A job that would take its user past their quota waits ("user quota
of 2 GPUs in use") without holding anything up.

Starvation: head-of-line *reservation*. The first job (in that order) that does not fit is not
skipped and forgotten: what it asks for is reserved out of the free resources, and later jobs may
only use what is left beyond that reservation (backfill). As admitted jobs finish, the
reservation is the first thing that fits, so a large job waits at most for the jobs already
running. One reservation at a time; a job that asks for more than the whole cluster has is never
reserved for (it would block everything) and simply waits for the cluster to grow.

Preemption (preemption.py): the reserved job may also have running jobs of strictly lower
priority stopped to make room — the fewest that do, where its bundles can then be placed (two
jobs freeing one CPU on each of two nodes are no room for a 2-CPU worker). They are asked to
stop at once (the dispatcher), keep holding their resources until they have (`preempting`), and
are not asked again; no new victims are chosen while those already stopping would make room.

Every job left waiting gets a reason with the numbers (`waiting_reason`), which the dispatcher
stores and `vae status` shows: "asks for 4 CPUs, the cluster has 2: lower …" for a job that can
never fit, "waiting for 2 CPUs to be free (1 of 2 in use)" for one waiting for room.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Optional, Protocol, Sequence, Union

from vae_service.core.capacity import EPSILON, add, amount, fits, subtract, summed
from vae_service.core.placement import Bundles, Cluster
from vae_service.queue import preemption
from vae_service.queue.quotas import FairShare, Quota, Usage
from vae_service.queue.settings import PREEMPT_MIN_RUN_S

# What to lower in a spec when a job asks for more than the cluster has.
LOWER = {"CPU": "resources.cpus_per_worker or resources.num_workers",
         "GPU": "resources.gpus_per_worker or resources.num_workers (or set resources.use_gpu: false)"}


class Candidate(Protocol):
    id: str
    priority: int
    submitted_by: str

    @property
    def resource_request(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Rules:
    """The server's scheduling settings: quotas, the preemption thrash guard, fair share's
    weights and half-life."""

    quota: Quota = Quota()
    preempt_min_run_s: float = PREEMPT_MIN_RUN_S
    fair_share: FairShare = FairShare()


@dataclass
class Plan:
    chosen: list = field(default_factory=list)  # to admit now, in order
    reserved_for: Optional[object] = None  # the highest-ranked job that waits for room
    reasons: dict[str, str] = field(default_factory=dict)  # job id → why it waits (every job not chosen)
    preempt: list = field(default_factory=list)  # running jobs to stop now, for `reserved_for`


def usage_by_user(active: Sequence) -> dict[str, Usage]:
    usage: dict[str, Usage] = defaultdict(Usage)
    for job in active:
        usage[job.submitted_by].add(job.resource_request)
    return usage


def fair_order(queued_in_order: Sequence[Candidate], usage: dict[str, Usage], totals: Mapping[str, float],
               fair: FairShare = FairShare(), history: Mapping[str, float] = {}):
    """Yields the queued jobs in admission order (module docstring); `usage` is read at each
    step, so the caller's updates (a job just admitted) count for the next pick. Only the user
    just picked can have changed, so the users wait in a heap: a pick costs log(users).
    `history`: each user's decayed usage in share-seconds (Store.fair_share_usage)."""
    by_priority: "OrderedDict[int, OrderedDict[str, deque]]" = OrderedDict()
    for job in queued_in_order:  # priority desc, then oldest first: each user's jobs stay in age order
        by_priority.setdefault(job.priority, OrderedDict()).setdefault(job.submitted_by, deque()).append(job)

    def turn(user: str, jobs: deque) -> tuple:
        effective = fair.effective(user, usage[user].share(totals), history.get(user, 0.0))
        return effective, usage[user].jobs, jobs[0].created_at, jobs[0].id, user

    for users in by_priority.values():
        waiting = [turn(user, jobs) for user, jobs in users.items()]
        heapq.heapify(waiting)
        while waiting:
            user = heapq.heappop(waiting)[-1]
            yield users[user].popleft()
            if users[user]:
                heapq.heappush(waiting, turn(user, users[user]))


def bundles_of(job) -> Bundles:
    """A job's workers as Ray places them (a job without a record of them: one bundle)."""
    return getattr(job, "worker_bundles", None) or Bundles(job.resource_request)


def plan(queued_in_order: Sequence[Candidate], cluster: Union[Cluster, Mapping[str, float]], active: Sequence,
         rules: Rules = Rules(), now: Optional[datetime] = None,
         placed: Optional[Mapping[str, Sequence[str]]] = None, history: Mapping[str, float] = {}) -> Plan:
    """Which jobs to admit now, which one the room is reserved for, which running jobs to
    preempt for it, and why each other queued job waits (Planner, over the whole front at once)."""
    return Planner(cluster, active, rules, now, placed, history).consider(queued_in_order)


class Planner:
    """A plan made a priority tier at a time, highest first (the dispatcher hands each tier's
    jobs to Ray before it reads the next). Tiers are strict, so a tier's plan depends only on
    the tiers above it: what they took, and the reservation one of them made. `cluster`: the
    nodes and their totals (a mapping of totals: one node); `active`: the admitted jobs;
    `placed`: where Ray says an active job's bundles are (node ids; the others are counted
    where they would go); `history`: each user's decayed usage (share-seconds) for fair share."""

    def __init__(self, cluster: Union[Cluster, Mapping[str, float]], active: Sequence, rules: Rules = Rules(),
                 now: Optional[datetime] = None, placed: Optional[Mapping[str, Sequence[str]]] = None,
                 history: Mapping[str, float] = {}):
        self.rules, self.history, self.active = rules, history, active
        self.now = now or datetime.now(timezone.utc)
        self.reserved_for: Optional[Candidate] = None  # the highest-ranked job that waits for room
        nodes = cluster.emptied() if isinstance(cluster, Cluster) else Cluster.one_node(cluster)
        self.empty, self.totals = Placing(nodes.copy()), nodes.totals()
        self.at = {job.id: nodes.take(bundles_of(job), (placed or {}).get(job.id)) for job in active}  # node ids
        self.nodes = Placing(nodes)
        self.usage = usage_by_user(active)
        self.free = subtract(self.totals, summed(active))  # what later jobs may use (less the reservation)
        self.unreserved = dict(self.free)  # what is free at all
        self.stopping = [job for job in active if job.state == "preempting"]

    def consider(self, queued_in_order: Sequence[Candidate]) -> Plan:
        """The plan for these queued jobs (in queue order, ranked below every job considered
        before): those to admit, the running jobs to preempt, why the others wait."""
        out = Plan()
        for job in fair_order(queued_in_order, self.usage, self.totals, self.rules.fair_share, self.history):
            request, bundles = job.resource_request, bundles_of(job)
            over_quota = self.rules.quota.exceeded(self.usage[job.submitted_by], request)
            where = self.nodes.where(bundles) if not over_quota and fits(request, self.free) else None
            if over_quota:
                out.reasons[job.id] = over_quota
            elif where is not None:
                out.chosen.append(job)
                self.nodes.take(bundles, where)
                self.free, self.unreserved = subtract(self.free, request), subtract(self.unreserved, request)
                self.usage[job.submitted_by].add(request)
            elif not fits(request, self.totals) or not self.empty.can_place(bundles):
                out.reasons[job.id] = too_large(request, self.totals, bundles, self.empty)
            elif self.reserved_for is None:
                self.reserved_for = job
                room = Room(self.nodes, self.at, self.unreserved, request, bundles)
                out.reasons[job.id] = _make_room(out, job, room, self.totals, self.stopping, self.active, self.rules, self.now)
                self.free = subtract(self.free, request)  # may go negative: nothing behind it fits until it runs
            else:
                out.reasons[job.id] = waiting_for_room(request, self.totals, self.unreserved, self.reserved_for, bundles,
                                                       self.nodes)
        out.reserved_for = self.reserved_for
        return out


class Placing:
    """A view of the nodes that remembers how many bundles of each kind it can hold at most,
    so that each queued job need not walk every node again (a tick over the front of the queue
    on 1,000 nodes: bench/scheduler_sim.py). Within one plan a view only loses room (jobs are
    placed on it, none leave): what did not fit still does not, and an `empty` view's answers
    hold for the whole plan. Where a job goes is unchanged: Cluster.where decides it."""

    def __init__(self, nodes: Cluster):
        self.nodes = nodes
        self._at_most: dict[tuple, float] = {}  # a bundle's resources → how many such bundles the view holds at most
        self._exact: set[tuple] = set()  # … exactly, as nothing was placed since it was counted
        self._short: dict[tuple, str] = {}  # why bundles cannot be placed, until something is

    def where(self, bundles: Bundles) -> Optional[list[str]]:
        shape = tuple(sorted(bundles.each.items()))
        if bundles.count > self._at_most.get(shape, math.inf):
            return None
        where = self.nodes.where(bundles)
        if where is None:  # Cluster.where places them exactly when the nodes hold that many in all
            self._at_most[shape] = min(self._at_most.get(shape, math.inf), bundles.count - 1)
        return where

    def can_place(self, bundles: Bundles) -> bool:
        """Whether `bundles` can be placed now (as `where(bundles) is not None`)."""
        shape = tuple(sorted(bundles.each.items()))
        if bundles.count > self._at_most.get(shape, math.inf):
            return False
        if shape not in self._exact:
            self._at_most[shape] = sum(node.holds(bundles.each) for node in self.nodes.candidates(bundles.each))
            self._exact.add(shape)
        return bundles.count <= self._at_most[shape]

    def take(self, bundles: Bundles, where: Optional[Sequence[str]] = None) -> list[str]:
        self._exact.clear()  # the counts are now only bounds
        self._short.clear()
        return self.nodes.take(bundles, where)

    def copy(self) -> Cluster:
        return self.nodes.copy()

    def short(self, bundles: Bundles) -> str:
        key = (tuple(sorted(bundles.each.items())), bundles.count)
        if key not in self._short:
            self._short[key] = self.nodes.short(bundles)
        return self._short[key]


@dataclass
class Room:
    """Whether a job's bundles would fit once some jobs have stopped: in all (`unreserved`,
    what is free before any reservation) and node by node (their bundles freed where they are)."""

    nodes: Cluster
    at: Mapping[str, Sequence[str]]  # job id → the node of each of its bundles
    unreserved: Mapping[str, float]
    request: Mapping[str, float]
    bundles: Bundles

    def after(self, stopped: Sequence) -> bool:
        if not fits(self.request, add(self.unreserved, summed(stopped))):
            return False
        view = self.nodes.copy()
        for job in stopped:
            view.give(bundles_of(job).each, self.at.get(job.id, ()))
        return view.where(self.bundles) is not None


def _make_room(out: Plan, job, room: Room, totals, stopping, active, rules: Rules, now: datetime) -> str:
    """For the reserved job: preempt what is needed (into out.preempt); returns why it waits.
    Victims are chosen so that the room appears on nodes where its bundles can go."""
    if stopping and room.after(stopping):
        return waiting_for_stop(stopping)
    ranked = preemption.candidates(active, job.priority, now, rules.preempt_min_run_s)
    victims = preemption.choose_victims(lambda chosen: room.after([*stopping, *chosen]), ranked)
    if victims:
        out.preempt.extend(victims)
        return waiting_for_stop(stopping + victims)
    return waiting_for_room(room.request, totals, room.unreserved, None, room.bundles, room.nodes)


# ---- why a job waits (one line, with the numbers) ----------------------------------------------


def _asked(request: Mapping[str, float]) -> dict[str, float]:
    return {name: value for name, value in request.items() if value > 0}


def too_large(request: Mapping[str, float], totals: Mapping[str, float], bundles: Optional[Bundles] = None,
              empty: Optional[Cluster] = None) -> str:
    """A job that asks for more than the whole cluster has, or than its nodes could ever hold
    bundle by bundle: it waits until the cluster grows."""
    over = [name for name, value in _asked(request).items() if value > totals.get(name, 0.0) + EPSILON]
    if over or bundles is None or empty is None:
        return "; ".join(f"asks for {amount(request[name], name)}, the cluster has {amount(totals.get(name, 0.0), name)}: "
                         f"lower {LOWER.get(name, 'resources')}" for name in over)
    return (f"its workers ({bundles.describe()}) never fit on the cluster's nodes, even empty: "
            f"{empty.short(bundles).replace(' free', '', 1)}: lower resources.cpus_per_worker or resources.num_workers")


def waiting_for_room(request: Mapping[str, float], totals: Mapping[str, float], unreserved: Mapping[str, float],
                     reserved_for: Optional[Candidate] = None, bundles: Optional[Bundles] = None,
                     nodes: Optional[Cluster] = None) -> str:
    """A job that fits the cluster but not what is free now (`unreserved`: free before any
    reservation); `reserved_for`: the job ranked ahead that holds the room, if it is that. When
    enough is free in all but not on any node its bundles could use (`nodes`), says so."""
    asked = _asked(request)
    if nodes is not None and bundles is not None and fits(request, unreserved) and nodes.where(bundles) is None:
        in_all = " and ".join(amount(max(unreserved.get(name, 0.0), 0.0), name) for name in asked)
        return f"waiting for room on the nodes for {bundles.describe()}: {in_all} free in all, but {nodes.short(bundles)}"
    short = [name for name, value in asked.items() if value > unreserved.get(name, 0.0) + EPSILON] or list(asked)
    in_use = ", ".join(f"{totals.get(n, 0.0) - unreserved.get(n, 0.0):g} of {amount(totals.get(n, 0.0), n)}"
                       for n in short)
    held = ""
    if reserved_for is not None:
        held = f", the rest held for job {reserved_for.id}, ranked ahead"
    wanted = " and ".join(amount(request[name], name) for name in short)
    return f"waiting for {wanted} to be free ({in_use} in use{held})"


def unplaced_in_ray(bundles: Sequence[Mapping[str, float]], ray_says: str, nodes: Sequence[Mapping[str, float]]) -> str:
    """A running job whose workers Ray has not placed (a worker node was lost, or room is held
    outside the queue): what waits, what the live nodes have, and that it goes on by itself."""
    def counted(requests) -> str:  # "2 × 2 CPUs, 1 × 0 CPUs"
        kinds = Counter(tuple((n, v) for n, v in sorted(r.items()) if v > 0 or n == "CPU") for r in requests)
        return ", ".join(f"{count} × {' + '.join(amount(v, n) for n, v in kind)}" for kind, count in kinds.most_common())

    return (f"waiting for Ray to place its workers ({counted(bundles)}; Ray: {ray_says.lower().replace('_', ' ')}); "
            f"live nodes: {counted(nodes) or 'none'}. It goes on from its checkpoint when room returns (a lost node restarting)")


def waiting_for_stop(stopping: Sequence) -> str:
    """The reserved job waits for preempted jobs to checkpoint and end."""
    ids = ", ".join(job.id for job in stopping)
    return f"waiting for preempted job{'s' if len(stopping) > 1 else ''} {ids} to checkpoint and stop"
