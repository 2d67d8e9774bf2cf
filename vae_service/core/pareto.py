"""Pareto fronts of several objectives (all minimised: negate a maximised one first)."""

from __future__ import annotations

import math
from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (duplicates all stay on the front)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def knee_point(points: Sequence[Sequence[float]]) -> int:
    """The index (into `points`) of the front's point closest to the ideal point, each
    objective scaled to [0, 1] over the front: the balanced trade-off, independent of units."""
    front = non_dominated(points)
    if len(front) == 1:
        return front[0]
    dims = range(len(points[0]))
    lo = [min(points[i][d] for i in front) for d in dims]
    hi = [max(points[i][d] for i in front) for d in dims]

    def distance(i: int) -> float:
        return math.sqrt(sum(((points[i][d] - lo[d]) / ((hi[d] - lo[d]) or 1.0)) ** 2 for d in dims))

    return min(front, key=distance)
