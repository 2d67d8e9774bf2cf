"""The HTTP API as schemathesis sees it: every operation in /openapi.json, called with
generated parameters and bodies and a valid token, never answers with a server error (a 503
from a deliberately absent Ray is the one 5xx allowed), and never echoes the token. Every route
but /healthz and the documentation refuses a missing or wrong token."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings


OPEN = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PAGE = {"/ui", "/ui/app.js", "/ui/style.css"}  # the web page's static files: no data in them (tests/test_queue_ui.py)


@pytest.fixture(scope="module")
def app(api):
    """The abuse suite's API (conftest.py: a real SQLite store, one admin token)."""
    client, _ = api
    return client.app


@pytest.fixture(scope="module")
def token(api):
    client, _ = api
    return client.headers["Authorization"].removeprefix("Bearer ")


@pytest.mark.slow  # 40 generated calls per operation: 9 s alone, over a minute on a loaded machine (CI)
def test_no_operation_answers_a_server_error(app, token):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            nonlocal calls
            calls += 1
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            assert response.status_code < 500 or (response.status_code == 503 and "Ray" in response.text), \
                (case.method, case.path, response.status_code, response.text[:500])
            assert token not in response.text

        no_server_error()
    print(f"\nschemathesis: {calls} generated calls over {len(list(schema.get_all_operations()))} operations")
    assert calls >= 100


def test_every_route_but_healthz_the_docs_and_the_page_needs_a_valid_token(app, token):
    routes = [(method, route.path.replace("{job_id}", "some-job")) for route in app.routes
              if isinstance(route, APIRoute) and route.path not in OPEN | PAGE for method in route.methods]
    assert PAGE <= {route.path for route in app.routes if isinstance(route, APIRoute)}
    assert len(routes) >= 6  # the jobs routes and /metrics, at least
    with TestClient(app) as client:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.status_code)
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "vae-service job queue"
        assert "swagger" in client.get("/docs").text.lower()
        for path in PAGE:  # static: the same bytes for anyone, no job data and no token in them
            response = client.get(path)
            assert response.status_code == 200 and token not in response.text and "some-job" not in response.text
