"""Fair share with weights and history, beside Kueue's and Slurm's ways, on the scheduler
simulator's trace (bench/scheduler_sim.py: its cluster, trace, clock and measures; the real
scheduling.plan for every policy, which differ only in the share they order users by).

    python bench/fair_share_sim.py [--nodes 100] [--users 20] [--jobs 2000] [--seed 0]
    python bench/fair_share_sim.py --tiny [--output PATH]

The story the trace is given: HISTORY_USER held HISTORY_SHARE of the cluster's GPUs all through
the week before it starts (a week of usage, decayed as the queue would have stored it), and
WEIGHTED_USER's team has weight WEIGHT (VAE_FAIR_SHARE_WEIGHTS); both submit like the other
light users. The trace's HEAVY_USERS still submit far over their share.

The policies (quotas.FairShare's effective share, or a stand-in for another scheduler's):
  drf          the queue before weights and history: the current dominant share (half-life 0,
               no weights)
  kueue        Kueue's fair sharing, roughly: the current dominant share / weight, no history
               (Kueue weighs the share a ClusterQueue borrows above its nominal quota; every
               user here has none, so all of it counts)
  slurm        Slurm's classic fair-share factor F = 2^(−U/S) (U: the user's decayed usage over
               everyone's, S: their weight over everyone's), highest F first; what runs now
               counts only as it accrues into U (the running share is not added)
  vae          (current dominant share + historic share) / weight, half-life HALF_LIFE_S: the
               queue's own (quotas.FairShare)

Measured, per policy (beside scheduler_sim's utilisation, waits per tier, Jain's index):
  weighted Jain  Jain's index over the backlogged users' dominant share / weight (1: each holds
                 in proportion to their weight)
  history user   HISTORY_USER's mean wait and mean dominant share while they had jobs queued,
                 each over the same for the other light users (< 1 share: they yield)
  weighted user  the same for WEIGHTED_USER (a share near WEIGHT × the others': their weight holds)

Writes bench/results/fair_share_sim.json (never scheduler_sim.json) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "fair_share_sim.json"
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402
import scheduler_sim as sim  # noqa: E402

from vae_service.queue import scheduling  # noqa: E402
from vae_service.queue.quotas import FairShare, Quota  # noqa: E402

TINY = {"nodes": 20, "users": 10, "jobs": 300}
HALF_LIFE_S = 7 * 24 * 3600.0  # the queue's default
HISTORY_USER, HISTORY_SHARE = "user03", 0.5  # a light submitter who held half the GPUs all last week
WEIGHTED_USER, WEIGHT = "user04", 2.0


@dataclasses.dataclass(frozen=True)
class SlurmLike(FairShare):
    """Slurm's fair-share factor as an ordering key: −2^(−U/S), so that the highest factor goes
    first in fair_order's smallest-first heap. U = usage / everyone's usage (`total_usage_s`,
    fixed for one tick), S = weight / everyone's weight; the current share is not used."""

    total_usage_s: float = 0.0
    total_weight: float = 1.0

    def effective(self, user: str, current: float, usage_s: float) -> float:
        normalised_usage = usage_s / self.total_usage_s if self.total_usage_s > 0 else 0.0
        normalised_shares = self.weight(user) / self.total_weight
        return -(2.0 ** (-normalised_usage / normalised_shares))


def fair_shares(users: int) -> dict[str, FairShare]:
    """Each policy's fair share (half-life 0: no history)."""
    weights = {WEIGHTED_USER: WEIGHT}
    return {"drf": FairShare(half_life_s=0), "kueue": FairShare(weights, half_life_s=0),
            "slurm": SlurmLike(weights, HALF_LIFE_S, total_weight=users - 1 + WEIGHT),
            "vae": FairShare(weights, HALF_LIFE_S)}


class FairShareSimulation(sim.Simulation):
    """scheduler_sim's Simulation that also keeps each user's decayed usage, as the dispatcher
    does (Store.record_usage: the share held over each interval), and what the measures need."""

    def __init__(self, trace, nodes: int, fair: FairShare, quota_gpus: float):
        super().__init__(trace, nodes, None)
        self.fair, self.users = fair, sorted({record["user"] for record in trace})
        history_fair = dataclasses.replace(fair, half_life_s=HALF_LIFE_S)  # the stored history the week left
        self.history = {user: 0.0 for user in self.users}
        if HISTORY_USER in self.history:
            self.history[HISTORY_USER] = history_fair.decayed(0.0, HISTORY_SHARE, HALF_LIFE_S)
        self.rules = scheduling.Rules(quota=Quota(gpus=quota_gpus), fair_share=fair)
        self.decide = self.plan
        self.weighted_jain = 0.0
        self.backlogged_s: dict[str, float] = defaultdict(float)  # per user: seconds with jobs queued
        self.share_s: dict[str, float] = defaultdict(float)  # … and ∫ their dominant share over those seconds

    def plan(self, queue, cluster, active, now_s):
        rules = self.rules
        if isinstance(self.fair, SlurmLike):  # everyone's usage, once a tick
            rules = dataclasses.replace(rules, fair_share=dataclasses.replace(self.fair, total_usage_s=sum(self.history.values())))
        plan = scheduling.plan(queue.head(), cluster, active, rules, now=sim.at(now_s),
                               placed={job.id: job.nodes for job in active}, history=self.history)
        return sim.Decision(plan.chosen, plan.preempt, plan.reserved_for)

    def account(self, seconds: float) -> None:
        super().account(seconds)
        held = scheduling.usage_by_user(list(self.active.values()))
        shares = {user: held[user].share(self.totals) for user in self.users}
        for user in self.users:
            self.history[user] = self.fair.decayed(self.history[user], shares[user], seconds)
        waiting = self.queue.users()
        if self.queue.count and len(waiting) > 1:
            self.weighted_jain += sim.jain([shares[user] / self.fair.weight(user) for user in waiting]) * seconds
        for user in waiting:
            self.backlogged_s[user] += seconds
            self.share_s[user] += shares[user] * seconds

    def fairness(self) -> dict:
        light = [user for user in self.users if user not in sim_heavy(self.users) and user not in (HISTORY_USER, WEIGHTED_USER)]
        waits = defaultdict(list)
        for job in self.jobs:
            waits[job.submitted_by].append(job.waited_s)
        mean_wait = {user: float(np.mean(waits[user])) if waits[user] else 0.0 for user in self.users}
        mean_share = {user: self.share_s[user] / self.backlogged_s[user] if self.backlogged_s[user] else 0.0 for user in self.users}
        light_wait, light_share = float(np.mean([mean_wait[u] for u in light])), float(np.mean([mean_share[u] for u in light]))

        def compared(user: str) -> dict:
            return {"user": user, "mean_wait_s": mean_wait.get(user, 0.0), "mean_share_backlogged": mean_share.get(user, 0.0),
                    "wait_vs_light": mean_wait.get(user, 0.0) / light_wait if light_wait else None,
                    "share_vs_light": mean_share.get(user, 0.0) / light_share if light_share else None}

        return {"weighted_jain_index": self.weighted_jain / self.jain_seconds if self.jain_seconds else None,
                "light_users": {"users": len(light), "mean_wait_s": light_wait, "mean_share_backlogged": light_share},
                "history_user": compared(HISTORY_USER), "weighted_user": compared(WEIGHTED_USER)}


def sim_heavy(users: list[str]) -> set[str]:
    return set(users[:sim.HEAVY_USERS])


def table(results: dict) -> str:
    rows = [("utilisation under backlog", lambda r: f"{100 * r['utilisation_under_backlog']:.1f} %"),
            *[(f"tier {t} wait p95", lambda r, t=t: f"{r['wait_s'][f'tier{t}']['p95']:.0f} s") for t in sim.TIERS],
            ("Jain (dominant shares)", lambda r: f"{r['jain_index']:.3f}"),
            ("Jain (share / weight)", lambda r: f"{r['fairness']['weighted_jain_index']:.3f}"),
            ("history user: wait ×", lambda r: f"{r['fairness']['history_user']['wait_vs_light']:.2f}"),
            ("history user: share ×", lambda r: f"{r['fairness']['history_user']['share_vs_light']:.2f}"),
            ("weight-2 user: wait ×", lambda r: f"{r['fairness']['weighted_user']['wait_vs_light']:.2f}"),
            ("weight-2 user: share ×", lambda r: f"{r['fairness']['weighted_user']['share_vs_light']:.2f}"),
            ("preemptions", lambda r: f"{r['preemptions']}"),
            ("simulated in", lambda r: f"{r['wall_s']:.0f} s")]
    lines = [f"{'':28s}" + "".join(f"{name:>12s}" for name in results)]
    lines += [f"{label:28s}" + "".join(f"{cell(r):>12s}" for r in results.values()) for label, cell in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = _tiny.parse_args(parser, RESULTS, TINY)
    started = time.perf_counter()
    trace = sim.make_trace(args.jobs, args.users, args.nodes, args.seed)
    quota_gpus = max(max(sim.GPU_SIZES), sim.QUOTA_SHARE * args.nodes * sim.GPUS_PER_NODE)
    results = {}
    for name, fair in fair_shares(args.users).items():
        run = FairShareSimulation(trace, args.nodes, fair, quota_gpus).run()
        results[name] = {**run.summary(), "fairness": run.fairness()}
        print(f"{name}: {results[name]['ticks']} ticks simulated in {results[name]['wall_s']:.0f} s", flush=True)
    output = {
        "benchmark": "fair_share_sim", "tiny": bool(args.tiny),
        "setup": {"nodes": args.nodes, "users": args.users, "jobs": args.jobs, "seed": args.seed, "quota_gpus": quota_gpus,
                  "half_life_s": HALF_LIFE_S, "history_user": HISTORY_USER, "history_share": HISTORY_SHARE,
                  "weighted_user": WEIGHTED_USER, "weight": WEIGHT, "heavy_users": sim.HEAVY_USERS,
                  "heavy_weight": sim.HEAVY_WEIGHT, "load": sim.LOAD,
                  "arrival_window_h": trace[-1]["submitted_s"] / 3600 if trace else 0.0},
        "policies": results, "wall_s": time.perf_counter() - started,
        "machine": f"{platform.machine()}, {platform.python_version()}", "when": datetime.now().isoformat(timespec="seconds"),
    }
    print(table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {_tiny.shown(args.output)}")


if __name__ == "__main__":
    main()
