"""The abuse suite's shared parts: the queue API over a real SQLite store, and the tally of
hostile inputs tried and how each ended (printed at the end of the run, -s or not, by
tests/suite_plan.py from the tests' reports). Also makes
the shared test helpers (tests/queue_support.py) importable from this folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae_service.queue.api import create_app
from vae_service.queue.auth import TokenSet
from vae_service.queue.db import make_engine, upgrade
from vae_service.queue.settings import Settings
from vae_service.queue.store import Store

from abuse_support import TALLY  # noqa: E402 (beside this file)

TOKEN = "abuse-suite-token-0123456789"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """The tally travels with each test's report (to the xdist controller, which prints it at the
    end: tests/suite_plan.py), and starts again from nothing for the next test."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and TALLY:
        report.user_properties.append(("abuse_tally", {surface: dict(c) for surface, c in TALLY.items()}))
        TALLY.clear()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """(TestClient with the token set, Store) over a fresh SQLite queue, one per module; the one
    token makes its holder admin, and jobs keep their runs under the server's default."""
    root: Path = tmp_path_factory.mktemp("abuse-queue")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("VAE_ADMINS", "VAE_API_TOKEN_FILE", "VAE_REGISTER_NAMES", "VAE_ALLOWED_STORAGE", "VAE_STORAGE_URI"):
            mp.delenv(name, raising=False)
        mp.setenv("VAE_API_TOKEN", TOKEN)
        mp.chdir(root)
        engine = make_engine(f"sqlite:///{root / 'queue.db'}")
        upgrade(engine)
        store = Store(engine)
        tokens = TokenSet.from_settings(Settings(home=root / "home"))
        with TestClient(create_app(store, tokens)) as client:
            client.headers["Authorization"] = f"Bearer {TOKEN}"
            yield client, store
        engine.dispose()
