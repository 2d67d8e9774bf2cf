"""How the suite is run: which tests share a pytest-xdist worker, in what order they start, how
long each kind may take, and a check that the `slow` marker tells the truth. Its hooks are
registered by tests/conftest.py.

- **Groups.** `--dist loadgroup` keeps the tests of one xdist group on one worker. A test that
  uses a module-scoped fixture (a trained model, a server) is grouped with its module, so the
  fixture is built once; the queue's end-to-end modules share one Ray head (`queue_head`,
  stopped once the group is done) and so one group; the docker compose cluster is a group of its
  own. Every other test is a unit of its own and goes wherever a worker is free.
- **Order.** Longest first (LONGEST_FIRST, measured on 2 cores): the compose cluster's image
  build and the long end-to-end modules start at once, and the many short tests fill the gaps.
- **Time limits** by kind, so that a hung test fails with its name within minutes: the ini's
  `timeout` for every test, SLOW_LIMIT_S for `slow` ones, CLUSTER_LIMIT_S for `cluster` ones;
  a test's own `@pytest.mark.timeout` wins.
- **The fast tier stays fast.** `pytest -m "not slow"` is the inner loop; a test not marked
  slow that takes longer than UNMARKED_SLOW_S is named at the end of the run.
- **A timeline on request**: with VAE_SUITE_TIMELINE=path, every test phase's worker, start and
  end (wall clock) are written there as JSON at the end of the run, to see where a worker idled or
  which tests ran beside which.
- **What workers found reaches the end of the run**: the abuse suite's tally of hostile inputs
  travels in the tests' reports (user_properties) and is printed here, in the one process that
  sees every report.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

SLOW_LIMIT_S = 480
CLUSTER_LIMIT_S = 2400
UNMARKED_SLOW_S = 10.0

# Groups that span modules: the modules of a group share a session fixture that one worker holds.
QUEUE_HEAD_GROUP = "queue-head"
SHARED_GROUPS = {
    "tests/test_queue_ray.py": QUEUE_HEAD_GROUP,
    "tests/test_queue_preemption.py": QUEUE_HEAD_GROUP,
    "tests/test_queue_ui.py": QUEUE_HEAD_GROUP,
    "tests/test_cluster.py": "docker-cluster",
}
# Where the time goes (2 cores, one worker): these start first, in this order; the rest keep
# their collection order after them.
LONGEST_FIRST = [
    "tests/test_cluster.py",
    "tests/test_queue_ray.py", "tests/test_queue_preemption.py", "tests/test_queue_ui.py",
    "tests/test_queue_nodes.py",  # its own three-node cluster; with GPU quotas, fair share, preemption, a killed node: ~5 min alone on 2 cores
    "tests/test_benches.py",
    "tests/test_sweeps.py",
    "tests/test_training_ray.py",
    "tests/test_own_data.py",
    "tests/faults/test_worker_killed.py",
    "tests/faults/test_ray_head_restarted.py",
    "tests/test_cli_run.py",
    "tests/test_compare.py",
    "tests/test_eval_command.py",
    "tests/test_registry.py",
]


def group_of(item: pytest.Item) -> str | None:
    """The xdist group of a test: a shared group, its module when it uses a module-scoped
    fixture, or none (a unit of its own)."""
    module = item.nodeid.split("::")[0]
    if module in SHARED_GROUPS:
        return SHARED_GROUPS[module]
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is not None:
        for definitions in fixtures.name2fixturedefs.values():
            if any(d.scope in ("module", "class", "package") for d in definitions):
                return module
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: collection order after
    for item in items:
        group = group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        if item.get_closest_marker("timeout") is None:
            if item.get_closest_marker("cluster"):
                item.add_marker(pytest.mark.timeout(CLUSTER_LIMIT_S))
            elif item.get_closest_marker("slow"):
                item.add_marker(pytest.mark.timeout(SLOW_LIMIT_S))


_unmarked_durations: dict[str, float] = {}
_abuse_tally: dict[str, Counter] = {}  # the abuse suite's hostile inputs, from the reports (tests/abuse/conftest.py)


_timeline: list[dict] = []  # with VAE_SUITE_TIMELINE: each test phase's worker, start and end


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get("VAE_SUITE_TIMELINE"):
        worker = getattr(report, "node", None)  # xdist's worker controller; absent without xdist
        _timeline.append({"test": report.nodeid, "phase": report.when, "outcome": report.outcome,
                          "worker": worker.gateway.id if worker is not None else None,
                          "start": report.start, "stop": report.stop})
    if "slow" not in report.keywords:
        _unmarked_durations[report.nodeid] = _unmarked_durations.get(report.nodeid, 0.0) + report.duration
    for name, value in report.user_properties:
        if name == "abuse_tally":
            for surface, outcomes in value.items():
                _abuse_tally.setdefault(surface, Counter()).update(outcomes)


def pytest_terminal_summary(terminalreporter) -> None:
    if os.environ.get("VAE_SUITE_TIMELINE") and _timeline:
        with open(os.environ["VAE_SUITE_TIMELINE"], "w") as handle:
            json.dump(_timeline, handle)
    if _abuse_tally:
        total = sum(sum(c.values()) for surface, c in _abuse_tally.items() if not surface.startswith("("))
        terminalreporter.section(f"abuse suite: {total} hostile inputs tried")
        for surface, outcomes in _abuse_tally.items():
            detail = ", ".join(f"{outcome}: {count}" for outcome, count in sorted(outcomes.items()))
            terminalreporter.write_line(f"{surface}: {sum(outcomes.values())} ({detail})")
    slow = sorted(((s, n) for n, s in _unmarked_durations.items() if s > UNMARKED_SLOW_S), reverse=True)
    if slow:
        terminalreporter.section(f"tests not marked slow that took over {UNMARKED_SLOW_S:.0f} s (mark them slow)")
        for seconds, nodeid in slow:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")
