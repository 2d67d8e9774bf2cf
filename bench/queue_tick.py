"""The dispatcher's admission pass as the queue grows: what it costs with 0 … 100,000 jobs
queued, on SQLite and PostgreSQL, beside the same pass over every queued row (how a tick
worked before it read only the front of the queue).

    python bench/queue_tick.py [--queued 0 1000 10000 100000] [--passes 5]
    python bench/queue_tick.py --tiny [--output PATH]

A pass is what Dispatcher.admit does over the whole front: read the queued jobs
(Store.queue_head; the baseline reads them all), then plan (scheduling.plan: fair share,
quotas, placement on the nodes, the reservation, preemption, a reason for every job that
waits). The worst case for the plan: a cluster of 4 nodes × 8 CPUs full of running jobs, so
nothing queued fits and every job considered gets a reason; the queue holds jobs of 50 users at
three priorities, 1 to 4 CPUs each; an urgent job (priority 10) arrives last and must be the one
the pass reserves for and preempts for. Each pass is checked to do that, in both modes.

The dispatcher reads and plans the front a priority tier at a time and hands each tier's jobs
to Ray before it reads the next (Store.queue_tiers, scheduling.Planner), so what an urgent job
waits for is the top tier's pass alone: measured too ("the urgent job's tier").

Prints a table and writes bench/results/queue_tick.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "queue_tick.json"
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import _tiny  # noqa: E402
from _queue_fill import USERS, insert_rows, job_row, queued_rows  # noqa: E402
from queue_support import temporary_database  # noqa: E402

from vae_service.core.placement import Cluster, Node  # noqa: E402
from vae_service.queue import scheduling  # noqa: E402
from vae_service.queue.db import make_engine, upgrade  # noqa: E402
from vae_service.queue.models import Job  # noqa: E402
from vae_service.queue.states import ACTIVE, State  # noqa: E402
from vae_service.queue.store import WITHOUT_SPECS, Store  # noqa: E402

TINY = {"queued": [0, 300], "passes": 2}
NODES, NODE_CPUS = 4, 8  # and USERS (_queue_fill.py)
TARGET_P95_MS = 50.0  # the tick target at 20,000 queued (scheduler simulator); here per pass


def fill(store: Store, queued: int, seed: int = 0) -> str:
    """A full cluster (NODES × NODE_CPUS running 1-CPU jobs at priority 0), `queued` jobs
    behind it, then one urgent job; returns the urgent job's id."""
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    rows = [job_row(i, State.RUNNING.value, 0, 1, f"user{i % USERS}", start) for i in range(NODES * NODE_CPUS)]
    rows += queued_rows(len(rows), queued, start, seed)
    urgent = job_row(len(rows), State.QUEUED.value, 10, 1, "urgent-user", datetime.now(timezone.utc))
    insert_rows(store, [*rows, urgent])
    return urgent["id"]


def every_queued_row(store: Store) -> list:
    """The baseline's read: every queued job, in queue order, in one query."""
    with store.session() as session:
        return list(session.scalars(select(Job).options(*WITHOUT_SPECS).where(Job.state == State.QUEUED.value)
                                    .order_by(Job.priority.desc(), Job.created_at, Job.id)))


def one_pass(store: Store, cluster: Cluster, whole_queue: bool) -> tuple[float, float, scheduling.Plan, int]:
    """(read s, plan s, the plan, jobs read)."""
    started = time.perf_counter()
    queued = every_queued_row(store) if whole_queue else store.queue_head()
    active = store.in_states(ACTIVE)
    read = time.perf_counter()
    plan = scheduling.plan(queued, cluster, active)
    return read - started, time.perf_counter() - read, plan, len(queued)


def urgent_pass(store: Store, cluster: Cluster) -> tuple[float, scheduling.Plan]:
    """(s, its plan) of what the dispatcher does before it hands the urgent job to Ray: read the
    top priority tier (Store.queue_tiers) and the admitted jobs, and plan that tier."""
    started = time.perf_counter()
    top = next(store.queue_tiers())
    plan = scheduling.Planner(cluster, store.in_states(ACTIVE)).consider(top)
    return time.perf_counter() - started, plan


def measure(backend: str, queued: int, passes: int, workdir: Path) -> list[dict]:
    rows = []
    with temporary_database(backend, workdir) as url:
        engine = make_engine(url)
        upgrade(engine)
        store = Store(engine)
        filled = time.perf_counter()
        urgent = fill(store, queued)
        fill_s = time.perf_counter() - filled
        cluster = Cluster([Node(f"node{i}", {"CPU": float(NODE_CPUS), "GPU": 0.0}) for i in range(NODES)])
        for whole_queue in (True, False):
            reads, plans, totals = [], [], []
            for _ in range(passes):
                read_s, plan_s, plan, jobs_read = one_pass(store, cluster, whole_queue)
                assert plan.reserved_for is not None and plan.reserved_for.id == urgent, "the urgent job was not reserved for"
                assert len(plan.preempt) == 1, f"expected one victim for a 1-CPU urgent job, got {len(plan.preempt)}"
                reads.append(read_s)
                plans.append(plan_s)
                totals.append(read_s + plan_s)
            rows.append({"backend": backend, "queued": queued, "mode": "every row" if whole_queue else "front",
                         "jobs_read": jobs_read, "read_ms": 1000 * statistics.median(reads),
                         "plan_ms": 1000 * statistics.median(plans), "pass_ms": 1000 * statistics.median(totals),
                         "pass_max_ms": 1000 * max(totals), "fill_s": fill_s})
        urgent_s = []
        for _ in range(passes):
            seconds, plan = urgent_pass(store, cluster)
            assert plan.reserved_for is not None and plan.reserved_for.id == urgent and len(plan.preempt) == 1
            urgent_s.append(seconds)
        rows[-1].update(urgent_ms=1000 * statistics.median(urgent_s), urgent_max_ms=1000 * max(urgent_s))
        engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queued", type=int, nargs="+", default=[0, 1000, 10000, 100000])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = _tiny.parse_args(parser, RESULTS, TINY)
    rows = []
    with tempfile.TemporaryDirectory(prefix="queue-tick-") as tmp:
        for backend in args.backends:
            for queued in args.queued:
                workdir = Path(tmp) / f"{backend}-{queued}"
                workdir.mkdir()
                rows += measure(backend, queued, args.passes, workdir)
                for row in rows[-2:]:
                    print(f"{row['backend']:10s} {row['queued']:>7d} queued  {row['mode']:9s}  read {row['jobs_read']:>7d} jobs  "
                          f"{row['read_ms']:8.1f} + {row['plan_ms']:8.1f} = {row['pass_ms']:8.1f} ms (max {row['pass_max_ms']:.1f})",
                          flush=True)
                print(f"{'':29s}the urgent job's tier: {rows[-1]['urgent_ms']:8.1f} ms (max {rows[-1]['urgent_max_ms']:.1f})", flush=True)
    # a pass at the largest queue / at the next smaller one: flat when the queue's length costs nothing
    growth = {"front": {}, "urgent": {}}
    for backend in args.backends:
        for kind, key in (("front", "pass_ms"), ("urgent", "urgent_ms")):
            ms = {row["queued"]: row[key] for row in rows if row["backend"] == backend and row["mode"] == "front"}
            sizes = sorted(ms)
            growth[kind][backend] = ms[sizes[-1]] / ms[sizes[-2]] if len(sizes) > 1 and ms[sizes[-2]] > 0 else None
    results = {"benchmark": "queue_tick", "setup": {"nodes": NODES, "node_cpus": NODE_CPUS, "users": USERS,
                                                    "passes": args.passes},
               "results": rows, "front_growth": growth["front"], "urgent_growth": growth["urgent"],
               "target_pass_ms": TARGET_P95_MS,
               "machine": f"{platform.machine()}, {platform.python_version()}", "when": datetime.now().isoformat(timespec="seconds")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for kind, what in (("front", "the whole front"), ("urgent", "the urgent job's tier")):
        print(f"{what}: a pass at the largest queue / at the next smaller one: " +
              ", ".join(f"{b} {g:.2f}×" for b, g in growth[kind].items() if g is not None))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
