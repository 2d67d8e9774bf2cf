"""Where a job's workers go, node by node, as Ray places them.

Ray places a job's workers as identical bundles (one per worker: its CPUs and GPUs), each bundle
whole on one node — a bundle never spans nodes — with a strategy: PACK (as few nodes as possible,
fast collectives) or SPREAD (one per node where it can). So "4 CPUs free in all" is not room for
a 1 × 4-CPU worker when the four are 2 + 2 on two nodes. The queue admits a job only when its
bundles can be placed on what is free on each node now (`Cluster.where`), and says which nodes
are short when they cannot.

Arithmetic on the amounts themselves lives in capacity.py; this module adds the nodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from vae_service.core.capacity import EPSILON, add, amount, bundles_on_node, subtract


@dataclass(frozen=True)
class Bundles:
    """What a job asks of Ray: `count` identical bundles of `each`, placed by `strategy`."""

    each: Mapping[str, float]
    count: int = 1
    strategy: str = "PACK"

    @property
    def total(self) -> dict[str, float]:
        return {name: value * self.count for name, value in self.each.items()}

    def to_json(self) -> str:
        return json.dumps({"each": dict(self.each), "count": self.count, "strategy": self.strategy}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Bundles":
        data = json.loads(text)
        return cls(data["each"], int(data["count"]), data.get("strategy", "PACK"))

    def describe(self) -> str:
        """`2 × 1 CPU (spread)`, `1 × 2 CPUs + 1 GPU`."""
        each = " + ".join(amount(v, n) for n, v in self.each.items() if v > 0) or "nothing"
        return f"{self.count} × {each}" + (" (spread)" if self.strategy == "SPREAD" and self.count > 1 else "")


@dataclass
class Node:
    id: str
    total: dict[str, float]
    free: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.free:
            self.free = dict(self.total)

    def holds(self, each: Mapping[str, float]) -> int:
        """How many bundles of `each` fit in what this node has free."""
        return bundles_on_node(each, self.free)


class Cluster:
    """The nodes with what each has free; jobs are placed on it (`take`) and removed (`give`)."""

    def __init__(self, nodes: Sequence[Node]):
        self.nodes = list(nodes)
        self._by_id = {node.id: node for node in self.nodes}
        self._position = {node.id: i for i, node in enumerate(self.nodes)}
        # The nodes with anything free: the only ones a bundle can go to. Behind a full cluster
        # they are few, and a queued job is checked against them, not against every node.
        self._with_room = {i for i, node in enumerate(self.nodes) if _has_room(node)}

    @classmethod
    def one_node(cls, totals: Mapping[str, float]) -> "Cluster":
        """A cluster of a single node holding `totals` (a machine, or a test's whole cluster)."""
        return cls([Node("node-1", {name: float(value) for name, value in totals.items()})])

    def copy(self) -> "Cluster":
        return Cluster([Node(node.id, dict(node.total), dict(node.free)) for node in self.nodes])

    def emptied(self) -> "Cluster":
        """The same nodes with nothing placed on them."""
        return Cluster([Node(node.id, dict(node.total)) for node in self.nodes])

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for node in self.nodes:
            out = add(out, node.total)
        return out

    def where(self, bundles: Bundles) -> Optional[list[str]]:
        """The node id of each bundle as Ray would place them now, or None when they do not fit.

        PACK fills the nodes that hold the most bundles first (the fewest nodes); SPREAD deals
        one bundle per node in turn, the roomiest first."""
        candidates = self.candidates(bundles.each)
        room = {node.id: node.holds(bundles.each) for node in candidates}
        if sum(min(r, bundles.count) for r in room.values()) < bundles.count:
            return None
        order = sorted((node for node in candidates if room[node.id] > 0), key=lambda n: -min(room[n.id], bundles.count))
        placed: list[str] = []
        if bundles.strategy == "SPREAD":
            while len(placed) < bundles.count:
                for node in order:
                    if room[node.id] > 0 and len(placed) < bundles.count:
                        placed.append(node.id)
                        room[node.id] -= 1
        else:
            for node in order:
                take = min(room[node.id], bundles.count - len(placed))
                placed += [node.id] * take
        return placed

    def take(self, bundles: Bundles, where: Optional[Sequence[str]] = None) -> list[str]:
        """Places `bundles` (on the nodes Ray says they are on, else where they would go) and
        returns the node ids. A job already holding room is counted even when this view has no
        room for it (Ray oversubscribed, a node gone): bundle by bundle on the roomiest node, its
        free room going below 0."""
        if where is not None and len(where) < bundles.count:  # Ray placed some (a sweep between trials)
            rest = Bundles(bundles.each, bundles.count - len(where), bundles.strategy)
            return self.take(Bundles(bundles.each, len(where), bundles.strategy), where) + self.take(rest)
        where = list(where) if where is not None else self.where(bundles)
        if where is None:
            where = []
            for _ in range(bundles.count if self.nodes else 0):
                roomiest = max(self.nodes, key=lambda node: _headroom(node, bundles.each))
                self._set_free(roomiest, subtract(roomiest.free, bundles.each))
                where.append(roomiest.id)
            return where
        for node_id in where:
            node = self._by_id.get(node_id)
            if node is not None:
                self._set_free(node, subtract(node.free, bundles.each))
        return where

    def give(self, each: Mapping[str, float], where: Sequence[str]) -> None:
        """Frees one bundle of `each` on every node of `where` (a job that stops)."""
        for node_id in where:
            node = self._by_id.get(node_id)
            if node is not None:
                self._set_free(node, add(node.free, each))

    def candidates(self, each: Mapping[str, float]) -> list[Node]:
        """The nodes where a bundle of `each` might go, in the cluster's order: those with
        anything free (every node, for a bundle that asks for nothing)."""
        if not any(value > 0 for value in each.values()):
            return self.nodes
        return [self.nodes[i] for i in sorted(self._with_room)]

    def _set_free(self, node: Node, free: dict[str, float]) -> None:
        node.free = free
        if _has_room(node):
            self._with_room.add(self._position[node.id])
        else:
            self._with_room.discard(self._position[node.id])

    def largest_free(self, name: str) -> float:
        return max((node.free.get(name, 0.0) for node in self.nodes), default=0.0)

    def short(self, bundles: Bundles) -> str:
        """Why `bundles` cannot be placed now, node by node: `no node has 2 CPUs free (1 CPU
        free on each of 2 nodes)`, or `the nodes have room for 1 of its 2 workers (…)`."""
        asked = {name: value for name, value in bundles.each.items() if value > 0} or {"CPU": 0.0}
        name = max(asked, key=lambda n: asked[n] - self.largest_free(n))  # the resource that binds
        counts: dict[float, int] = {}
        for node in self.nodes:
            value = max(node.free.get(name, 0.0), 0.0)
            counts[value] = counts.get(value, 0) + 1
        per_node = ", ".join(f"{amount(value, name)} free on {f'each of {count} nodes' if count > 1 else '1 node'}"
                             for value, count in sorted(counts.items(), reverse=True))
        if asked[name] > self.largest_free(name) + EPSILON:
            return f"no node has {amount(asked[name], name)} free ({per_node})"
        room = sum(min(node.holds(bundles.each), bundles.count) for node in self.nodes)
        return f"the nodes have room for {room} of its {bundles.count} workers ({per_node})"


def _has_room(node: Node) -> bool:
    return any(value > EPSILON for value in node.free.values())


def _headroom(node: Node, each: Mapping[str, float]) -> float:
    """How much of the scarcest asked-for resource a node has free, in bundles (may be < 0)."""
    return min((node.free.get(name, 0.0) / value for name, value in each.items() if value > 0), default=0.0)
