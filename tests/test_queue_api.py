"""The HTTP API through FastAPI's TestClient, on SQLite and PostgreSQL (no Ray, no dispatcher):
auth, submissions (YAML and JSON), bad specs, size limit, idempotency, listing, cancel, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from queue_support import BACKENDS, temporary_database, tiny_spec_text

from vae_service.core.placement import Bundles
from vae_service.queue.api import create_app
from vae_service.queue.auth import TokenSet, client_token
from vae_service.queue.db import make_engine, upgrade
from vae_service.queue.policy import Policy
from vae_service.queue.settings import Settings
from vae_service.queue.states import State
from vae_service.queue.store import Store

TOKEN = "s3cret-token-for-tests"
ALICE = "alice-token-0123456789"


@pytest.fixture(params=BACKENDS)
def app_store(request, tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_API_TOKEN", f"{TOKEN},alice:{ALICE}")
    with temporary_database(request.param, tmp_path) as url:
        engine = make_engine(url)
        upgrade(engine)
        store = Store(engine)
        tokens = TokenSet.from_settings(Settings(home=tmp_path / "home"))
        with TestClient(create_app(store, tokens)) as client:
            yield client, store
        engine.dispose()


@pytest.fixture
def client(app_store):
    client, _ = app_store
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


ROUTES = [("get", "/jobs"), ("post", "/jobs"), ("get", "/jobs/x"), ("post", "/jobs/x/cancel"),
          ("get", "/jobs/x/logs"), ("get", "/metrics")]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer "])
def test_every_route_but_healthz_needs_a_valid_token(app_store, header):
    client, store = app_store
    headers = {"Authorization": header} if header else {}
    for method, path in ROUTES:
        response = getattr(client, method)(path, headers=headers, **({"content": tiny_spec_text()} if method == "post" else {}))
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert store.list()[1] == 0  # nothing was stored by the refused POST


def test_submit_yaml_then_read_it_back(client, app_store):
    response = client.post("/jobs?priority=7&set=optim.epochs=3", content=tiny_spec_text("first"),
                           headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert (job["state"], job["priority"], job["name"], job["kind"], job["attempts"]) == ("queued", 7, "first", "train", 0)
    assert job["resources"] == {"CPU": 1.0, "GPU": 0.0} and job["submitted_by"].startswith("token-")
    detail = client.get(f"/jobs/{job['id']}").json()
    assert detail["spec_submitted"] == tiny_spec_text("first")
    assert detail["overrides"] == ["optim.epochs=3"]
    assert "epochs: 3" in detail["spec"] and "binarize:" in detail["spec"]  # normalised: defaults filled in
    assert detail["position"] == 0 and detail["waiting_reason"] is None
    # The bundles the queue places node by node: one worker of 1 CPU, packed.
    assert app_store[1].get(job["id"]).worker_bundles == Bundles({"CPU": 1.0, "GPU": 0.0}, 1, "PACK")
    second = client.post("/jobs", content=tiny_spec_text("second")).json()
    # Behind the front of the queue the dispatcher reads, a job's reason is its place in line.
    assert client.get(f"/jobs/{second['id']}").json()["waiting_reason"] == "in line: 1 queued job(s) are ranked ahead of it"


def test_a_queued_run_recovers_from_worker_failures_unless_its_spec_says_otherwise(client):
    import yaml

    def max_failures(query: str = "", spec: str = tiny_spec_text()) -> int:
        response = client.post(f"/jobs{query}", content=spec)
        assert response.status_code == 201, response.text
        return yaml.safe_load(client.get(f"/jobs/{response.json()['id']}").json()["spec"])["storage"]["max_failures"]

    assert max_failures() == 3  # the queue's default: a cluster may lose a node mid-run
    assert max_failures("?set=storage.max_failures=0") == 0  # the spec's own value wins, even the spec default's
    assert max_failures(spec=tiny_spec_text() + "storage: {max_failures: 1}\n") == 1
    sweep = client.post("/jobs", content="kind: sweep\nsweep: {space: {optim.lr: {grid: [1e-3, 2e-3]}}}\n" + "train: {optim: {epochs: 1}}\n")
    assert sweep.status_code == 201, sweep.text
    assert yaml.safe_load(client.get(f"/jobs/{sweep.json()['id']}").json()["spec"])["train"]["storage"]["max_failures"] == 3


def test_a_job_s_run_directory_is_decided_when_it_is_stored(client, app_store, tmp_path):
    """Every kind: `<storage>/<name>-<job id>` (an encode-dataset job's runs go with its output),
    stored with the job; a replay of the same submission keeps the first one's. Where a job
    writes is the server's to allow, its output as much as its storage."""
    runs = Path("runs").resolve()  # the server's default storage, where this user may write
    train = client.post("/jobs", content=tiny_spec_text("first"), headers={"Idempotency-Key": "k1"}).json()
    assert train["run_dir"] == str(runs / f"first-{train['id']}")
    assert app_store[1].get(train["id"]).run_dir == train["run_dir"]
    replay = client.post("/jobs", content=tiny_spec_text("first"), headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 200 and replay.json()["run_dir"] == train["run_dir"]

    allowed_data = Policy.from_settings(Settings()).allowed_data[0]  # where this user may read

    def encode(output) -> dict:
        return client.post("/jobs", content=f"kind: encode-dataset\nname: codes\nmodel: models:/own/1\n"
                                            f"data: {{source: {allowed_data}/vectors, format: numpy}}\n"
                                            f"output: {output}\nresources: {{num_workers: 2}}\n")

    queued = encode("runs/codes")
    assert queued.status_code == 201, queued.text
    job = queued.json()
    assert (job["kind"], job["resources"]) == ("encode-dataset", {"CPU": 2.0, "GPU": 0.0})
    assert job["run_dir"] == str(runs / "codes" / "_runs" / f"codes-{job['id']}")
    refused = encode(tmp_path / "codes")
    assert refused.status_code == 422 and refused.json()["detail"][0]["path"] == "output", refused.text


def test_submit_json_body_names_the_submitter(client):
    spec = {"name": "from-json", "optim": {"epochs": 1}, "resources": {"num_workers": 2, "cpus_per_worker": 0.5}}
    response = client.post("/jobs", content=json.dumps(spec), headers={"Content-Type": "application/json",
                                                                       "Authorization": f"Bearer {ALICE}"})
    assert response.status_code == 201, response.text
    assert response.json()["submitted_by"] == "alice"
    assert response.json()["resources"]["CPU"] == 1.0


def test_bad_spec_is_422_with_field_paths_and_nothing_is_stored(app_store, client):
    _, store = app_store
    bad = "name: bad\nmodel:\n  latent_dim: 0\noptim:\n  lr: -1\n  epochz: 2\n"
    response = client.post("/jobs", content=bad)
    assert response.status_code == 422
    problems = {p["path"]: p for p in response.json()["detail"]}
    assert set(problems) == {"model.latent_dim", "optim.lr", "optim.epochz"}
    assert problems["model.latent_dim"]["line"] == 3 and "must be >" in problems["model.latent_dim"]["msg"]
    assert problems["optim.epochz"]["msg"] == "unknown field"
    for body in ("not: [valid", "- a list", "", b"\xff\xfe"):
        assert client.post("/jobs", content=body).status_code == 422
    assert client.post("/jobs?set=optim.epochs=0", content=tiny_spec_text()).status_code == 422
    assert store.list()[1] == 0


def test_bodies_over_one_mib_are_413_and_nothing_is_stored(app_store, client):
    _, store = app_store
    big = tiny_spec_text() + "#" * (1 << 20)
    assert client.post("/jobs", content=big).status_code == 413

    def chunks():  # no Content-Length: the server must count as it reads
        yield tiny_spec_text().encode()
        for _ in range(20):
            yield b"#" * 65536

    assert client.post("/jobs", content=chunks()).status_code == 413
    assert store.list()[1] == 0


def test_idempotency_key_returns_the_same_job(client):
    first = client.post("/jobs", content=tiny_spec_text("once"), headers={"Idempotency-Key": "abc-1"})
    again = client.post("/jobs", content=tiny_spec_text("once"), headers={"Idempotency-Key": "abc-1"})
    other = client.post("/jobs", content=tiny_spec_text("once"), headers={"Idempotency-Key": "abc-2"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert client.get("/jobs").json()["total"] == 2


def test_an_empty_idempotency_key_is_no_key(client):
    """Stored as a key, a second empty one broke the unique constraint: a 503 (schemathesis)."""
    first, second = (client.post("/jobs", content=tiny_spec_text(), headers={"Idempotency-Key": ""}) for _ in range(2))
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert first.json()["id"] != second.json()["id"] and first.json()["idempotency_key"] is None


def test_list_filters_and_pages(client):
    ids = [client.post("/jobs", content=tiny_spec_text(f"j{i}")).json()["id"] for i in range(5)]
    client.post(f"/jobs/{ids[1]}/cancel")
    page = client.get("/jobs?limit=2&offset=0").json()
    assert page["total"] == 5 and [j["id"] for j in page["jobs"]] == [ids[4], ids[3]]
    assert [j["id"] for j in client.get("/jobs?limit=2&offset=4").json()["jobs"]] == [ids[0]]
    cancelled = client.get("/jobs?state=cancelled").json()
    assert cancelled["total"] == 1 and cancelled["jobs"][0]["id"] == ids[1]
    assert client.get("/jobs?state=bogus").status_code == 422
    assert client.get("/jobs?limit=0").status_code == 422


def test_cancel_and_unknown_jobs(client):
    job_id = client.post("/jobs", content=tiny_spec_text()).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/jobs/nope/cancel").status_code == 404
    assert client.get(f"/jobs/{job_id}/logs").status_code == 503  # this app has no Ray address


def test_metrics_count_jobs_per_state(client):
    ids = [client.post("/jobs", content=tiny_spec_text()).json()["id"] for _ in range(3)]
    client.post(f"/jobs/{ids[0]}/cancel")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'vae_jobs{state="queued"} 2.0' in text and 'vae_jobs{state="cancelled"} 1.0' in text
    assert "vae_dispatch_latency_seconds_count 0.0" in text


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/logs", "/jobs/{job_id}/cancel", "/healthz", "/metrics"} <= set(paths)


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("VAE_API_TOKEN", raising=False)
    monkeypatch.delenv("VAE_API_TOKEN_FILE", raising=False)
    settings = Settings(home=tmp_path / "home")
    tokens = TokenSet.from_settings(settings, create=True)  # generated once, mode 0600
    path = tmp_path / "home" / "api_token"
    assert path.stat().st_mode & 0o777 == 0o600
    token = client_token(settings)
    assert token and tokens.identify(token) is not None and tokens.identify(token + "x") is None
    assert TokenSet.from_settings(settings, create=True).identify(token) is not None  # not regenerated
    listed = tmp_path / "tokens"
    listed.write_text("# ops\nbob:bob-token\nplain-token\n")
    from_file = TokenSet.from_settings(Settings(home=tmp_path, api_token_file=listed))
    assert from_file.identify("bob-token").name == "bob" and from_file.identify("plain-token").name.startswith("token-")
    assert from_file.identify("nobody") is None and from_file.identify(None) is None


@pytest.mark.parametrize("body, content_type, field", [
    ("resources: {cpus_per_worker: .inf}\n", "application/yaml", "resources.cpus_per_worker"),
    ("optim: {lr: .nan}\n", "application/yaml", "optim.lr"),
    ('{"optim": {"lr": 1e400}}', "application/json", "optim.lr"),
    ('{"objective": {"beta": "Infinity"}}', "application/json", "objective.beta"),
    ("resources: {num_workers: 1024, cpus_per_worker: 1.0e+306}\n", "application/yaml", "resources.cpus_per_worker"),
])
def test_non_finite_numbers_are_refused_and_nothing_is_stored(app_store, body, content_type, field):
    """Issue 12, defect 1: such a spec used to be stored after a 500 and break GET /jobs for everyone."""
    client, store = app_store
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    response = client.post("/jobs", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert field in [problem["path"] for problem in response.json()["detail"]]
    listing = client.get("/jobs")
    assert listing.status_code == 200 and listing.json()["jobs"] == [] and store.in_states(list(State)) == []


def test_deeply_nested_bodies_are_refused_not_a_500(app_store):
    """Issue 12, defect 4 (and in `set=` values)."""
    client, store = app_store
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    deep_json = '{"kind": "train", "model": ' + '{"a": ' * 600 + "1" + "}" * 600 + "}"
    response = client.post("/jobs", content=deep_json, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "nested more than" in response.text
    response = client.post("/jobs", params={"set": "model.hidden=" + "[" * 700 + "]" * 700}, content="kind: train\n",
                           headers={"Content-Type": "application/yaml"})
    assert response.status_code == 422 and "nested more than" in response.text
    assert store.in_states(list(State)) == []
