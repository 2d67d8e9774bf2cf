"""The abuse suite's shared parts: the queue API over a real SQLite store, and the tally of
hostile inputs tried and how each ended (printed at the end of the run, -s or not, by
tests/suite_plan.py from the tests' reports). Also makes
the shared test helpers (tests/queue_support.py) importable from this folder."""

from __future__ import annotations

import sys
from contextlib import contextmanager
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
USER_TOKEN = "abuse-suite-alice-token-0123456789"  # user_api: a user, not an admin
ADMIN_TOKEN = "abuse-suite-root-token-0123456789"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """The tally travels with each test's report (to the xdist controller, which prints it at the
    end: tests/suite_plan.py), and starts again from nothing for the next test."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and TALLY:
        report.user_properties.append(("abuse_tally", {surface: dict(c) for surface, c in TALLY.items()}))
        TALLY.clear()


@contextmanager
def queue_api(root: Path, tokens: str, admins: str = ""):
    """(TestClient, Store) over a fresh SQLite queue under `root`, with VAE_API_TOKEN=`tokens`
    and VAE_ADMINS=`admins`; jobs keep their runs under the server's default."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("VAE_ADMINS", "VAE_API_TOKEN_FILE", "VAE_REGISTER_NAMES", "VAE_ALLOWED_STORAGE", "VAE_STORAGE_URI"):
            mp.delenv(name, raising=False)
        mp.setenv("VAE_API_TOKEN", tokens)
        if admins:
            mp.setenv("VAE_ADMINS", admins)
        mp.chdir(root)
        engine = make_engine(f"sqlite:///{root / 'queue.db'}")
        upgrade(engine)
        store = Store(engine)
        with TestClient(create_app(store, TokenSet.from_settings(Settings(home=root / "home")))) as client:
            yield client, store
        engine.dispose()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """(TestClient with the token set, Store) over a fresh SQLite queue, one per module; the one
    token makes its holder admin."""
    with queue_api(tmp_path_factory.mktemp("abuse-queue"), TOKEN) as (client, store):
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, store


@pytest.fixture(scope="module")
def user_api(tmp_path_factory):
    """The same for a user who is not an admin (USER_TOKEN; `root` is the admin): the routes'
    refusals (403 for another user's jobs, 404 for jobs it may not see) are in its answers."""
    with queue_api(tmp_path_factory.mktemp("abuse-queue-user"), f"alice:{USER_TOKEN},root:{ADMIN_TOKEN}", "root") \
            as (client, store):
        client.headers["Authorization"] = f"Bearer {USER_TOKEN}"
        yield client, store
