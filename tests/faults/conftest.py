"""Makes the shared test helpers (tests/queue_support.py, tests/cluster_support.py) importable
from this folder; the fixtures in tests/conftest.py apply here as everywhere under tests/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
