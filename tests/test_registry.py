"""The registry's plumbing, without a store: paging, and no MLflow state left behind.

MLflow's fluent API reads a process-wide tracking URI; vae_service sets it only inside
mlflow_run.fluent_tracking, which uses a private MLflow helper. These tests fail loudly when an
MLflow upgrade moves that helper, or when the block leaks its URI. (tests/test_cli_models.py
checks that logging and registering real models leave the process as they found it.)
"""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.store.entities.paged_list import PagedList

from vae_service.environment import MLFLOW_PROCESS_DEFAULTS, apply_process_defaults
from vae_service.tracking.mlflow_run import client, fluent_tracking
from vae_service.tracking.registry import all_pages


def _environ() -> dict[str, str]:
    """The environment, less MLflow's private bookkeeping (its telemetry sets and clears
    _MLFLOW_TELEMETRY_SESSION_ID on its own)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("_MLFLOW_")}


def test_mlflow_still_has_the_private_use_tracking_uri():
    try:
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:
        pytest.fail("MLflow moved mlflow.tracking._tracking_service.utils._use_tracking_uri: "
                    "update vae_service.tracking.mlflow_run.fluent_tracking")
    assert callable(_use_tracking_uri)


@pytest.mark.parametrize("configured", [True, False], ids=["env-set", "env-unset"])
def test_fluent_tracking_restores_the_uri_and_the_environment(configured, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if configured:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mine.db'}")
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before, environ = mlflow.get_tracking_uri(), _environ()
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with fluent_tracking(elsewhere):
        assert mlflow.get_tracking_uri() == elsewhere
    assert mlflow.get_tracking_uri() == before
    assert _environ() == environ
    with pytest.raises(RuntimeError), fluent_tracking(elsewhere):
        raise RuntimeError("the block failed")
    assert mlflow.get_tracking_uri() == before
    assert _environ() == environ


def test_all_pages_follows_page_tokens():
    pages = {None: PagedList([1, 2], "a"), "a": PagedList([3], "b"), "b": PagedList([], None)}
    calls = []

    def search(query, max_results, page_token=None):
        calls.append((query, max_results, page_token))
        return pages[page_token]

    assert all_pages(search, "name = 'x'", max_results=2) == [1, 2, 3]
    assert calls == [("name = 'x'", 2, None), ("name = 'x'", 2, "a"), ("name = 'x'", 2, "b")]


def test_apply_process_defaults_fills_only_what_is_unset():
    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}
    apply_process_defaults(environ)
    assert environ == {**MLFLOW_PROCESS_DEFAULTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


def test_library_calls_leave_the_environment_alone(monkeypatch):
    for name in MLFLOW_PROCESS_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    environ = _environ()
    client()
    assert _environ() == environ


def test_workers_get_the_process_defaults(monkeypatch):
    from vae_service.environment import forwarded_env

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "45")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    env = forwarded_env()
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "45"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in env  # only what is set is handed on
