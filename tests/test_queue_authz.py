"""Who may do what through the API (queue/policy.py), on SQLite and PostgreSQL through FastAPI's
TestClient: jobs are seen, cancelled and logged only by their owner or an admin (404 otherwise),
idempotency keys are per user, priorities are capped for non-admins, @champion cannot be moved
by a spec, register names follow the server's patterns, and storage.uri / data.root stay inside
the server's allow-lists (normalised: `..`, prefix tricks and symlinks out are refused). Also:
who is admin by default, paging bounds, and a queued job's waiting reason."""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient
from queue_support import BACKENDS, temporary_database, tiny_spec_text

from vae_service.core.spec import PROTECTED_ALIASES
from vae_service.queue import scheduling
from vae_service.queue.api import create_app
from vae_service.queue.auth import TokenSet
from vae_service.queue.db import make_engine, upgrade
from vae_service.queue.policy import Policy
from vae_service.queue.settings import Settings
from vae_service.queue.store import Store

ADMIN, ALICE, BOB = "admin-token-0123456789", "alice-token-0123456789", "bob-token-0123456789"


@pytest.fixture(params=BACKENDS)
def app(request, tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_API_TOKEN", f"root:{ADMIN},alice:{ALICE},bob:{BOB}")
    monkeypatch.setenv("VAE_ADMINS", "root")
    (tmp_path / "runs").mkdir()
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    policy = Policy(max_user_priority=100, register_names=("{user}-*", "shared"),
                    allowed_storage=("runs", "s3://bucket/team"), allowed_data=(str(tmp_path / "data"),), base=tmp_path)
    with temporary_database(request.param, tmp_path) as url:
        engine = make_engine(url)
        upgrade(engine)
        store = Store(engine)
        tokens = TokenSet.from_settings(Settings(home=tmp_path / "home"))
        with TestClient(create_app(store, tokens, policy=policy)) as client:
            yield client, store, tmp_path
        engine.dispose()


def as_(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def submit(client, token: str, text: str = None, **kwargs):
    return client.post("/jobs", content=text or tiny_spec_text(), headers={**as_(token), **kwargs.pop("headers", {})}, **kwargs)


def spec(**sections) -> str:
    """The tiny spec with these sections merged in (as JSON, which is YAML)."""
    base = yaml.safe_load(tiny_spec_text())
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return json.dumps(base)


def problems(response) -> dict:
    assert response.status_code == 422, response.text
    return {p["path"]: p["msg"] for p in response.json()["detail"]}


# ---- seeing and cancelling ---------------------------------------------------------------------


def test_another_users_job_does_not_exist_for_you_but_does_for_an_admin(app):
    client, store, _ = app
    job_id = submit(client, ALICE).json()["id"]
    bob_id = submit(client, BOB).json()["id"]
    unknown = client.get("/jobs/0000000000000000", headers=as_(BOB))
    for method, path in (("get", f"/jobs/{job_id}"), ("post", f"/jobs/{job_id}/cancel"), ("get", f"/jobs/{job_id}/logs")):
        response = getattr(client, method)(path, headers=as_(BOB))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["detail"] == unknown.json()["detail"].replace("0000000000000000", job_id)
    assert store.get(job_id).state == "queued"  # bob's cancel did nothing

    assert [j["id"] for j in client.get("/jobs", headers=as_(BOB)).json()["jobs"]] == [bob_id]
    assert [j["id"] for j in client.get("/jobs", headers=as_(ALICE)).json()["jobs"]] == [job_id]
    assert client.get("/jobs?user=bob", headers=as_(ALICE)).status_code == 403
    assert client.get("/jobs?user=alice", headers=as_(ALICE)).json()["total"] == 1

    everyone = client.get("/jobs", headers=as_(ADMIN)).json()
    assert everyone["total"] == 2 and {j["submitted_by"] for j in everyone["jobs"]} == {"alice", "bob"}
    only_alice = client.get("/jobs?user=alice", headers=as_(ADMIN)).json()
    assert [j["id"] for j in only_alice["jobs"]] == [job_id]
    assert client.get(f"/jobs/{job_id}", headers=as_(ADMIN)).json()["submitted_by"] == "alice"
    assert client.post(f"/jobs/{job_id}/cancel", headers=as_(ADMIN)).json()["state"] == "cancelled"
    assert client.post(f"/jobs/{bob_id}/cancel", headers=as_(BOB)).json()["state"] == "cancelled"


def test_idempotency_keys_are_per_user(app):
    client, store, _ = app
    key = {"Idempotency-Key": "nightly-1"}
    alice = submit(client, ALICE, tiny_spec_text("alices"), headers=key)
    bob = submit(client, BOB, tiny_spec_text("bobs"), headers=key)
    alice_again = submit(client, ALICE, tiny_spec_text("alices"), headers=key)
    bob_again = submit(client, BOB, tiny_spec_text("bobs"), headers=key)
    assert (alice.status_code, bob.status_code, alice_again.status_code, bob_again.status_code) == (201, 201, 200, 200)
    assert alice.json()["id"] == alice_again.json()["id"] != bob.json()["id"] == bob_again.json()["id"]
    assert bob_again.json()["name"] == "bobs" and bob_again.json()["submitted_by"] == "bob"
    assert store.list()[1] == 2


# ---- what a submission may ask for -------------------------------------------------------------


def test_priority_above_the_limit_is_for_admins_only(app):
    client, store, _ = app
    refused = submit(client, ALICE, params={"priority": 101})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "priority: at most 100 for non-admin users (got 101)"
    assert store.list()[1] == 0
    assert submit(client, ALICE, params={"priority": 100}).json()["priority"] == 100
    assert submit(client, ALICE, params={"priority": -5}).status_code == 201
    assert submit(client, ADMIN, params={"priority": 5000}).json()["priority"] == 5000


def test_a_spec_cannot_move_a_protected_alias_not_even_an_admins(app):
    client, store, _ = app
    assert PROTECTED_ALIASES == ("champion",)
    for token in (ALICE, ADMIN):
        for alias in ("champion", "Champion"):
            found = problems(submit(client, token, spec(tracking={"register_as": "alice-vae", "alias": alias})))
            assert list(found) == ["tracking.alias"] and "vae models promote" in found["tracking.alias"]
    sweep = ("kind: sweep\nname: s\ntrain: {optim: {epochs: 1}, tracking: {alias: champion}}\n"
             "sweep: {space: {objective.beta: {choice: [1, 2]}}, num_samples: 2}\n")
    assert list(problems(submit(client, ALICE, sweep))) == ["train.tracking.alias"]
    assert store.list()[1] == 0
    assert submit(client, ALICE, spec(tracking={"register_as": "alice-vae", "alias": "candidate"})).status_code == 201


def test_register_names_follow_the_servers_patterns(app):
    client, store, _ = app
    found = problems(submit(client, ALICE, spec(tracking={"register_as": "bob-vae"})))
    assert found == {"tracking.register_as": "'bob-vae' is not a model name you may register (allowed: alice-*, shared)"}
    assert store.list()[1] == 0
    for name in ("alice-vae", "shared"):
        assert submit(client, ALICE, spec(tracking={"register_as": name})).status_code == 201
    assert submit(client, ADMIN, spec(tracking={"register_as": "bob-vae"})).status_code == 201


def test_storage_outside_the_allow_list_is_refused_and_nothing_is_stored(app):
    client, store, tmp = app
    (tmp / "outside").mkdir()
    (tmp / "runs" / "escape").symlink_to(tmp / "outside")  # inside by name, outside in fact
    (tmp / "runs" / "loop").symlink_to(tmp / "runs" / "loop")
    for uri in ("../../etc", "runs/../../x", "/tmp/../etc", str(tmp / "runs-evil"), str(tmp / "runs" / "escape" / "x"),
                str(tmp), "/", "s3://bucket/team-evil", "s3://bucket", "s3://other/team", "s3://bucket/team/../x",
                "gs://bucket/team", "~/runs"):
        found = problems(submit(client, ALICE, spec(storage={"uri": uri})))
        assert list(found) == ["storage.uri"], uri
        assert uri in found["storage.uri"] or "'..'" in found["storage.uri"]
        if ".." not in uri:
            assert f"allowed: {tmp / 'runs'}, s3://bucket/team" in found["storage.uri"]
    for uri in ("runs/loop/x", "runs/nul\x00"):  # a symlink loop, a NUL byte: one line, not a 500
        assert "not a usable path" in problems(submit(client, ALICE, spec(storage={"uri": uri})))["storage.uri"], uri
    # `..` is refused even where it would lead back inside: no path arithmetic to get wrong.
    for uri in ("runs/a/../b", f"{tmp}/runs/a/../b", "s3://bucket/team/a/../b"):
        assert "'..' is not allowed" in problems(submit(client, ALICE, spec(storage={"uri": uri})))["storage.uri"], uri
    assert store.list()[1] == 0


def test_storage_inside_the_allow_list_is_accepted(app):
    client, store, tmp = app
    (tmp / "link-to-runs").symlink_to(tmp / "runs")  # outside by name, inside in fact
    for uri in ("runs", "runs/alice", str(tmp / "runs"), str(tmp / "runs" / "deep" / "er"), str(tmp / "link-to-runs" / "a"),
                "s3://bucket/team", "s3://bucket/team/alice", "s3a://bucket//team/x", f"file://{tmp / 'runs' / 'f'}"):
        response = submit(client, ALICE, spec(storage={"uri": uri}))
        assert response.status_code == 201, (uri, response.text)
    assert submit(client, ALICE).status_code == 201  # no storage.uri: the spec's default, runs/
    assert submit(client, ADMIN, spec(storage={"uri": "/srv/elsewhere"})).status_code == 201  # admins: anywhere
    assert store.list()[1] == 11


def test_data_root_inside_the_allow_list_or_unset(app):
    client, store, tmp = app
    for root in ("../data", str(tmp / "data-evil"), str(tmp / "data" / ".." / "runs"), "/etc"):
        found = problems(submit(client, ALICE, spec(data={"root": root, "limit": 256})))
        assert list(found) == ["data.root"], root
    sweep = ("kind: sweep\nname: s\ntrain: {optim: {epochs: 1}}\n"
             f"sweep: {{space: {{data.root: {{choice: [{tmp / 'data' / 'mnist'}, /etc]}}}}, num_samples: 2}}\n")
    assert list(problems(submit(client, ALICE, sweep))) == ["sweep.space.data.root"]
    assert store.list()[1] == 0
    assert submit(client, ALICE, spec(data={"root": str(tmp / "data" / "mnist"), "limit": 256})).status_code == 201
    assert submit(client, ALICE).status_code == 201


def test_data_source_inside_the_allow_list(app):
    client, store, tmp = app
    own = {"format": "numpy", "key": "X"}
    for source in (str(tmp / "data-evil" / "x.npz"), "/etc/*.npy", str(tmp / "data" / ".." / "x.npz"), "s3://other/x.npz"):
        found = problems(submit(client, ALICE, spec(data={"source": source, **own}, model={"likelihood": "gaussian"})))
        assert list(found) == ["data.source"], source
    assert store.list()[1] == 0
    inside = spec(data={"source": str(tmp / "data" / "cells" / "*.npz"), **own}, model={"likelihood": "gaussian"})
    assert submit(client, ALICE, inside).status_code == 201


# ---- admins by default, paging, waiting reasons ----------------------------------------------------


def test_who_is_admin_when_vae_admins_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("VAE_ADMINS", raising=False)
    monkeypatch.setenv("VAE_API_TOKEN", "only-one-token")  # like the token `vae server` generates
    assert TokenSet.from_settings(Settings()).identify("only-one-token").admin
    monkeypatch.setenv("VAE_API_TOKEN", "alice:a-token,alice:rotated-token")  # one identity, two tokens
    assert TokenSet.from_settings(Settings()).identify("rotated-token").admin
    monkeypatch.setenv("VAE_API_TOKEN", "alice:a-token,bob:b-token")  # several: nobody, unless named
    assert not TokenSet.from_settings(Settings()).identify("a-token").admin
    monkeypatch.setenv("VAE_ADMINS", "bob")
    tokens = TokenSet.from_settings(Settings())
    assert tokens.identify("b-token").admin and not tokens.identify("a-token").admin
    monkeypatch.setenv("VAE_ADMINS", "")  # empty (compose passes it so): as if unset
    assert not TokenSet.from_settings(Settings()).identify("a-token").admin
    monkeypatch.setenv("VAE_API_TOKEN", "only-one-token")
    assert TokenSet.from_settings(Settings()).identify("only-one-token").admin
    monkeypatch.setenv("VAE_ADMINS", "somebody-else")  # a one-token server where its holder is not admin
    assert not TokenSet.from_settings(Settings()).identify("only-one-token").admin
    # The generated token file of a zero-config `vae server`
    monkeypatch.delenv("VAE_API_TOKEN")
    monkeypatch.delenv("VAE_ADMINS")
    settings = Settings(home=tmp_path / "home")
    tokens = TokenSet.from_settings(settings, create=True)
    assert tokens.identify(settings.token_file.read_text().strip()).admin


def test_paging_offsets_are_bounded(app):
    client, _, _ = app
    assert client.get(f"/jobs?offset={2**63}", headers=as_(ALICE)).status_code == 422
    assert client.get(f"/jobs?offset={10**9 + 1}", headers=as_(ALICE)).status_code == 422
    assert client.get(f"/jobs?offset={10**9}", headers=as_(ALICE)).json()["jobs"] == []


def test_a_waiting_jobs_reason_is_shown_while_it_is_queued(app):
    client, store, _ = app
    big = submit(client, ALICE, spec(resources={"num_workers": 2, "cpus_per_worker": 2})).json()["id"]
    small = submit(client, ALICE).json()["id"]
    assert client.get(f"/jobs/{big}", headers=as_(ALICE)).json()["waiting_reason"] is None
    plan = scheduling.plan(store.queue_head(), {"CPU": 2.0, "GPU": 0.0}, [])
    store.set_waiting_reasons(plan.reasons)
    shown = client.get(f"/jobs/{big}", headers=as_(ALICE)).json()["waiting_reason"]
    assert shown == "asks for 4 CPUs, the cluster has 2 CPUs: lower resources.cpus_per_worker or resources.num_workers"
    listed = {j["id"]: j["waiting_reason"] for j in client.get("/jobs", headers=as_(ALICE)).json()["jobs"]}
    assert listed == {big: shown, small: None}  # the small one fits: it is admitted, no reason
    client.post(f"/jobs/{big}/cancel", headers=as_(ALICE))
    assert client.get(f"/jobs/{big}", headers=as_(ALICE)).json()["waiting_reason"] is None  # not waiting any more
