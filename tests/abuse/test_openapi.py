"""The HTTP API as schemathesis sees it: every operation in /openapi.json, called with
generated parameters and bodies and a valid token, never answers with a server error (a 503
from a deliberately absent Ray is the one 5xx allowed), and never echoes the token. Every route
but /healthz and the documentation refuses a missing or wrong token."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.engine import events, from_schema
from schemathesis.generation.stateful import run_state_machine_as_test


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


def every_route(app) -> list:
    """The app's routes, those of its included routers too (FastAPI keeps an included router
    as one entry of app.routes; iter_route_contexts opens it)."""
    return [context for context in iter_route_contexts(app.routes) if context.methods]


def test_every_route_but_healthz_the_docs_and_the_page_needs_a_valid_token(app, token):
    routes = [(method, route.path.replace("{job_id}", "some-job")) for route in every_route(app)
              if route.path not in OPEN | PAGE for method in route.methods]
    assert PAGE <= {route.path for route in every_route(app)}
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


# ---------------------------------------------------------------------------------------------
# The document tells the truth: every status, body, media type and link, as schemathesis checks them

PHASES = ("examples", "coverage", "fuzzing", "stateful")


def contract_config(token: str, max_examples: int) -> schemathesis.Config:
    """Every check schemathesis has, in every phase, as alice (not an admin: 403 and 404 are in
    the answers). Two answers the document gives that the checks' defaults do not expect: a 422
    for a spec that is a mapping (all the schema says) but breaks the spec's own rules, and a
    503 from the logs route (this server has no Ray)."""
    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {token}"},
        "phases": {phase: {"enabled": True} for phase in PHASES},
        "generation": {"max-examples": max_examples, "deterministic": True, "database": "none"},
        "operations": [
            {"include-operation-id": "submitJob",
             "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "403", "422"]}}},
            {"include-operation-id": "getJobLogs",
             "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}}},
        ],
    })
    config.projects.override.checks.update(included_check_names=["all"])  # `--checks all`
    return config


@pytest.fixture(scope="module")
def as_user(user_api):
    """(the app, the token of alice, who is not an admin)"""
    client, _ = user_api
    return client.app, client.headers["Authorization"].removeprefix("Bearer ")


def failed_checks(recorder) -> list[str]:
    return [f"{recorder.label}: {check.name}: {check.failure_info.failure.title}\n{check.failure_info.code_sample}"
            for checks in recorder.checks.values() for check in checks if check.failure_info is not None]


@pytest.mark.slow  # the coverage phase alone makes a few hundred calls: 12 s
def test_every_check_in_every_phase_finds_the_document_true(as_user):
    """What `st run --checks all --phases examples,coverage,fuzzing,stateful` does, as a user:
    no undocumented status, media type, body or header, no server error (but the logs' 503)."""
    app, token = as_user
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=contract_config(token, max_examples=5))
    failures, scenarios, answers = [], Counter(), Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"{event.__class__.__name__}: {getattr(event, 'value', None) or event.exception!r}")
        elif isinstance(event, events.ScenarioFinished):
            scenarios[event.phase.value] += 1
            failures.extend(failed_checks(event.recorder))
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    answers[(event.phase.value, interaction.request.method, interaction.response.status_code)] += 1
    assert not failures, "\n\n".join(failures)
    assert set(scenarios) == set(PHASES), scenarios  # the stateful phase runs only when the links are there
    assert {phase for phase, _, _ in answers} == set(PHASES), answers


def test_the_links_take_a_new_jobs_id_to_its_routes(as_user):
    """The stateful phase alone (schema.as_state_machine, run by Hypothesis), every check on each
    answer: POST /jobs's 201 and 200 link to the job's routes, which find the job."""
    app, token = as_user
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=contract_config(token, max_examples=5))
    answered = Counter()

    class Machine(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": {"Authorization": f"Bearer {token}"}}  # the checks know the token was given

        def after_call(self, response, case):
            answered[(case.operation.label, response.status_code)] += 1

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=8, stateful_step_count=5, derandomize=True, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))
    assert answered[("POST /jobs", 201)] + answered[("POST /jobs", 200)], answered  # 200: a key seen before
    chained = {label for (label, status), n in answered.items() if label != "POST /jobs" and status < 300}
    assert chained & {"GET /jobs/{job_id}", "POST /jobs/{job_id}/cancel"}, answered
