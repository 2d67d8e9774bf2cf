"""Weighted, history-aware fair share (quotas.FairShare): the order it gives, the history the
store keeps (SQLite and PostgreSQL, a restart included), the settings, and GET /fair-share."""

from __future__ import annotations

import heapq
import itertools
import os
import random
import subprocess
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from queue_support import VAE

from vae_service.queue import scheduling
from vae_service.queue.api import create_app
from vae_service.queue.auth import TokenSet
from vae_service.queue.db import make_engine, upgrade
from vae_service.queue.dispatcher import Dispatcher
from vae_service.queue.quotas import FairShare
from vae_service.queue.ray_jobs import RayJobs
from vae_service.queue.scheduling import Rules
from vae_service.queue.settings import Settings, parse_weights
from vae_service.queue.store import Store

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
DAY, WEEK = 24 * 3600.0, 7 * 24 * 3600.0
_created = itertools.count()


@dataclass
class Fake:
    """A job as scheduling sees one: 1 CPU unless said, created in the order made."""

    id: str
    submitted_by: str
    cpus: float = 1.0
    priority: int = 0
    state: str = "queued"
    preemptible: bool = True
    running_since: datetime = None
    resource_request: dict = field(init=False)
    created_at: datetime = field(init=False)

    def __post_init__(self):
        self.resource_request = {"CPU": self.cpus, "GPU": 0.0}
        self.created_at = NOW - timedelta(hours=1) + timedelta(seconds=next(_created))


def holding(user: str, cpus: float) -> Fake:
    return Fake(f"{user}-running", user, cpus, priority=10**6, state="running", running_since=NOW - timedelta(days=1))


def admitted(queue, totals, active=(), fair=FairShare(), history=None) -> list[str]:
    plan = scheduling.plan(queue, totals, list(active), Rules(fair_share=fair), now=NOW, history=history or {})
    return [job.id for job in plan.chosen]


def alternating(users, each: int) -> list[Fake]:
    """`each` jobs per user, interleaved in age (no user is older as a whole)."""
    return [Fake(f"{user}{i}", user) for i in range(each) for user in users]


# ---- the order -----------------------------------------------------------------------------------


def test_a_weight_2_user_gets_twice_the_share_before_yielding():
    queue, totals = alternating(["alice", "bob"], 12), {"CPU": 12.0}
    plain = admitted(queue, totals, fair=FairShare(half_life_s=0))
    weighted = admitted(queue, totals, fair=FairShare({"alice": 2.0}, half_life_s=0))
    count = lambda chosen, user: sum(job_id.startswith(user) for job_id in chosen)  # noqa: E731
    assert (count(plain, "alice"), count(plain, "bob")) == (6, 6)
    assert (count(weighted, "alice"), count(weighted, "bob")) == (8, 4)
    # Holding 4 of 12 already, weight 2: alice (4/12 / 2) still goes before bob who holds 3 of 12.
    queue = [Fake("a", "alice"), Fake("b", "bob")]
    active = [holding("alice", 4), holding("bob", 3)]
    assert admitted(queue, {"CPU": 8.0}, active, FairShare({"alice": 2.0}, half_life_s=0)) == ["a"]
    assert admitted(queue, {"CPU": 8.0}, active, FairShare(half_life_s=0)) == ["b"]


def test_a_user_with_a_week_of_heavy_history_yields_to_a_fresh_one():
    fair = FairShare(half_life_s=WEEK)
    week_of_all = fair.decayed(0.0, 1.0, WEEK)  # alice held the whole cluster for a week
    assert fair.historic(week_of_all) == pytest.approx(0.5)  # half the way to a share of 1
    queue = [Fake("a", "alice"), Fake("b", "bob")]  # alice's job is older
    active = [holding("alice", 1), holding("bob", 1)]  # and they hold the same now
    assert admitted(queue, {"CPU": 3.0}, active, fair, {"alice": week_of_all}) == ["b"]
    assert admitted(queue, {"CPU": 3.0}, active, fair, {}) == ["a"]  # no history: the older job
    # On an empty cluster of 4, bob is admitted until he holds as much as alice's history (half) …
    queue = [Fake("a1", "alice"), Fake("b1", "bob"), Fake("b2", "bob"), Fake("b3", "bob"), Fake("b4", "bob")]
    assert admitted(queue, {"CPU": 4.0}, [], fair, {"alice": week_of_all}) == ["b1", "b2", "a1", "b3"]
    # … and it is forgotten: four half-lives later it counts for 1/16, less than one CPU of bob's.
    later = fair.decayed(week_of_all, 0.0, 4 * WEEK)
    assert admitted(queue, {"CPU": 4.0}, [], fair, {"alice": later}) == ["b1", "a1", "b2", "b3"]


def old_fair_order(queued, usage, totals):
    """The order before weights and history (DRF on what is held now), kept here as the reference."""
    by_priority = OrderedDict()
    for job in queued:
        by_priority.setdefault(job.priority, OrderedDict()).setdefault(job.submitted_by, deque()).append(job)

    def turn(user, jobs):
        return usage[user].share(totals), usage[user].jobs, jobs[0].created_at, jobs[0].id, user

    for users in by_priority.values():
        waiting = [turn(user, jobs) for user, jobs in users.items()]
        heapq.heapify(waiting)
        while waiting:
            user = heapq.heappop(waiting)[-1]
            yield users[user].popleft()
            if users[user]:
                heapq.heappush(waiting, turn(user, users[user]))


def test_half_life_0_and_no_weights_give_the_order_of_before_exactly():
    rng = random.Random(7)
    for _ in range(30):
        users = [f"u{i}" for i in range(rng.randint(2, 6))]
        queue = [Fake(f"q{i}", rng.choice(users), rng.choice([0.5, 1, 2]), priority=rng.choice([0, 0, 5])) for i in range(25)]
        queue.sort(key=lambda job: (-job.priority, job.created_at))
        active = [Fake(f"r{i}", rng.choice(users), rng.choice([1, 2]), state="running", running_since=NOW) for i in range(4)]
        totals = {"CPU": 40.0, "GPU": 0.0}
        history = {user: rng.uniform(0, 1e6) for user in users}  # ignored without a half-life
        before = [job.id for job in old_fair_order(queue, scheduling.usage_by_user(active), totals)]
        now = [job.id for job in scheduling.fair_order(queue, scheduling.usage_by_user(active), totals,
                                                       FairShare(half_life_s=0), history)]
        assert now == before
        # and with a half-life but no history yet, too
        assert [job.id for job in scheduling.fair_order(queue, scheduling.usage_by_user(active), totals)] == before


# ---- the history in the store -----------------------------------------------------------------




def test_usage_accrues_and_halves_after_one_half_life(store):
    fair = FairShare(half_life_s=DAY)
    assert store.record_usage({"alice": 1.0, "bob": 0.25}, fair, NOW) == {"alice": 0.0, "bob": 0.0}
    # alice held all of it for one half-life: half the way to a historic share of 1; bob a quarter of that
    after = store.record_usage({"bob": 0.25}, fair, NOW + timedelta(seconds=DAY))
    assert fair.historic(after["alice"]) == pytest.approx(0.5) and fair.historic(after["bob"]) == pytest.approx(0.125)
    halved = store.record_usage({}, fair, NOW + timedelta(seconds=2 * DAY))  # alice held nothing since
    assert halved["alice"] == pytest.approx(after["alice"] / 2)
    rows = {row.submitted_by: row for row in store.fair_share_usage()}
    assert rows["alice"].current_share == 0 and rows["bob"].current_share == 0
    # a week of half-lives later, both are forgotten (rows dropped: the table stays per active user)
    assert store.record_usage({}, fair, NOW + timedelta(days=60)) == {} and store.fair_share_usage() == []


def test_the_history_survives_a_restart_and_orders_the_queue(db_url):
    fair = FairShare(half_life_s=WEEK)
    engine = make_engine(db_url)
    upgrade(engine)
    now = datetime.now(timezone.utc)  # the dispatcher decays the history to the wall clock's now, not to NOW
    Store(engine).record_usage({"alice": 1.0}, fair, now - timedelta(days=7))
    Store(engine).record_usage({}, fair, now)
    engine.dispose()
    # a new server: migrates again, and its dispatcher reads the history on its first tick
    engine = make_engine(db_url)
    upgrade(engine)
    store = Store(engine)
    dispatcher = Dispatcher(store, RayJobs("http://127.0.0.1:9"), rules=Rules(fair_share=fair))  # nothing running: Ray is not asked
    dispatcher.record_usage()
    assert fair.historic(dispatcher._history["alice"]) == pytest.approx(0.5, rel=1e-3)
    queue = [Fake("a", "alice"), Fake("b", "bob")]
    assert admitted(queue, {"CPU": 1.0}, [], fair, dispatcher._history) == ["b"]
    engine.dispose()


# ---- the settings -------------------------------------------------------------------------------


def test_weights_parse_and_bad_text_is_refused_naming_the_variable():
    assert parse_weights("alice=2, bob = 0.5,") == {"alice": 2.0, "bob": 0.5}
    assert parse_weights(None) == {} and Settings(fair_share_weights="team-a=3").weights == {"team-a": 3.0}
    for bad in ("alice", "alice=two", "alice=0", "alice=-1", "=2", "alice=nan", "alice=inf", "alice=1,alice=2"):
        with pytest.raises(ValueError, match="VAE_FAIR_SHARE_WEIGHTS"):
            Settings(fair_share_weights=bad)
    with pytest.raises(ValueError):
        Settings(fair_share_half_life_s=-1)
    assert Settings().fair_share_half_life_s == WEEK


def test_the_server_refuses_to_start_with_bad_weights(tmp_path):
    env = {**os.environ, "VAE_HOME": str(tmp_path), "VAE_FAIR_SHARE_WEIGHTS": "alice=lots"}
    result = subprocess.run([VAE, "server", "--port", "9"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "VAE_FAIR_SHARE_WEIGHTS" in result.stderr and "'alice=lots'" in result.stderr


# ---- GET /fair-share ---------------------------------------------------------------------------


def test_the_route_shows_each_users_shares_to_them_and_everyones_to_an_admin(store, tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_API_TOKEN", "root:root-token,alice:alice-token,bob:bob-token")
    monkeypatch.setenv("VAE_ADMINS", "root")
    fair = FairShare({"alice": 2.0, "carol": 3.0}, half_life_s=WEEK)
    now = datetime.now(timezone.utc)
    store.record_usage({"alice": 0.5, "bob": 0.25}, fair, now - timedelta(days=7))
    store.record_usage({"alice": 0.5, "bob": 0.25}, fair, now)
    with TestClient(create_app(store, TokenSet.from_settings(Settings(home=tmp_path / "home")), fair=fair)) as client:
        assert client.get("/fair-share").status_code == 401
        everyone = client.get("/fair-share", headers={"Authorization": "Bearer root-token"}).json()
        mine = client.get("/fair-share", headers={"Authorization": "Bearer alice-token"}).json()
    assert everyone["half_life_s"] == WEEK
    rows = {row["user"]: row for row in everyone["users"]}
    assert list(rows) == ["carol", "alice", "bob"]  # smallest effective share first
    assert rows["carol"] == {"user": "carol", "weight": 3.0, "current_share": 0.0, "historic_share": 0.0, "effective_share": 0.0}
    alice = rows["alice"]
    assert alice["weight"] == 2.0 and alice["current_share"] == 0.5
    assert alice["historic_share"] == pytest.approx(0.25, rel=1e-3)  # half a share for a week: half of 0.5
    assert alice["effective_share"] == pytest.approx((0.5 + 0.25) / 2, rel=1e-3)
    assert rows["bob"]["effective_share"] == pytest.approx(0.25 + 0.125, rel=1e-3)
    assert [row["user"] for row in mine["users"]] == ["alice"]  # not the others'
    assert "token" not in str(everyone)
