"""The tally of the abuse suite: hostile inputs tried, and how each ended, per surface (printed
by conftest.py at the end of the run)."""

from __future__ import annotations

from collections import Counter

TALLY: dict[str, Counter] = {}  # surface ("vae validate", "POST /jobs", …) → outcome → count


def record(surface: str, outcomes: Counter) -> None:
    TALLY.setdefault(surface, Counter()).update(outcomes)
