"""The web page at /ui: its routes and headers through FastAPI's TestClient, `job_links`, and
the page itself in a real browser (Debian's chromium driven by Playwright; no downloaded
browser) against a real `vae server` and a real Ray head, with real trainings: a job seen
queued then running, its log and spec, a second one waiting with its reason, both cancelled
from the page.

Screenshots go under the test's tmp_path and, when VAE_UI_SCREENSHOTS names a directory, there too.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from queue_support import api, job_state, start_server, tiny_spec_text, wait_for

from vae_service.queue.api import create_app
from vae_service.queue.auth import TokenSet
from vae_service.queue.db import make_engine, upgrade
from vae_service.queue.settings import Settings
from vae_service.queue.store import Store
from vae_service.queue.ui import job_links
from vae_service.tracking.mlflow_run import client as mlflow_client

pytestmark = pytest.mark.slow
USER, TOKEN = "alice", "ui-test-token-5f0c2a9e1b"
MLFLOW_UI = "http://someone:secret@127.0.0.1:5999/mlflow/"  # the password must never reach the page
KEY = "vae-api-token"  # app.js's sessionStorage key
LONG = ["optim.epochs=300", "data.limit=2048"]  # trains for minutes: cancelled long before it ends
HTML = '<b id="injected">bold?</b>'  # user input that must stay text


# ---------------------------------------------------------------------------------------------
# Without a browser


def test_job_links_strip_credentials_and_need_http():
    job = SimpleNamespace(mlflow_run_id="abc123", ray_submission_id="0123abcd")
    settings = Settings(ray_address="http://u:p@ray.example:8265/", mlflow_ui_url="https://x:y@mlflow.example/base/?q=1#f")
    assert job_links(job, settings) == {"mlflow": "https://mlflow.example/base/#/runs/abc123",
                                        "ray": "http://ray.example:8265/#/jobs/0123abcd"}
    assert job_links(job, Settings(ray_address="ray://head:10001", mlflow_ui_url="sqlite:///mlflow.db")) == \
        {"mlflow": None, "ray": None}
    assert job_links(job, Settings(ray_address="http://[::1]:8265", mlflow_ui_url=None))["ray"] == "http://[::1]:8265/#/jobs/0123abcd"
    not_yet = SimpleNamespace(mlflow_run_id=None, ray_submission_id=None)
    assert job_links(not_yet, settings) == {"mlflow": None, "ray": None}
    # Where the server reaches Ray by a name a browser cannot (compose's ray-head), VAE_RAY_UI_URL wins.
    behind = Settings(ray_address="http://ray-head:8265", ray_ui_url="http://127.0.0.1:8266/")
    assert job_links(job, behind)["ray"] == "http://127.0.0.1:8266/#/jobs/0123abcd"


def test_mlflow_ui_url_defaults_to_an_http_tracking_uri(monkeypatch):
    monkeypatch.delenv("VAE_MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Settings().mlflow_ui_url == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///tmp/mlflow.db")
    assert Settings().mlflow_ui_url is None
    monkeypatch.setenv("VAE_MLFLOW_UI_URL", "https://mlflow.example")
    assert Settings().mlflow_ui_url == "https://mlflow.example"


def test_ui_routes_headers_and_job_links(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_API_TOKEN", f"{USER}:{TOKEN}")
    monkeypatch.setenv("VAE_MLFLOW_UI_URL", MLFLOW_UI)
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade(engine)
    store = Store(engine)
    with TestClient(create_app(store, TokenSet.from_settings(Settings(home=tmp_path / "home")))) as client:
        page = client.get("/ui")  # no token: the page holds no data
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert TOKEN not in page.text and "<script src=\"ui/app.js\"" in page.text
        assert "<style" not in page.text and " style=" not in page.text and "<script>" not in page.text  # CSP: no inline
        assert not re.search(r"https?://", page.text), "the page loads nothing from elsewhere"
        script, css = client.get("/ui/app.js"), client.get("/ui/style.css")
        assert script.status_code == css.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert css.headers["content-type"].startswith("text/css")
        assert "innerHTML" not in script.text and "localStorage" not in script.text and "sessionStorage" in script.text
        assert len(page.content) + len(script.content) + len(css.content) < 24_000
        assert not [path for path in client.get("/openapi.json").json()["paths"] if path.startswith("/ui")]

        assert client.get("/jobs").status_code == 401  # the data still needs the token
        auth = {"Authorization": f"Bearer {TOKEN}"}
        job = client.post("/jobs", content=tiny_spec_text("links"), headers=auth).json()
        assert client.get(f"/jobs/{job['id']}", headers=auth).json()["links"] == {"mlflow": None, "ray": None}
        store.update(job["id"], ray_submission_id=job["id"], mlflow_run_id="run0123")
        links = client.get(f"/jobs/{job['id']}", headers=auth).json()["links"]
        assert links == {"mlflow": "http://127.0.0.1:5999/mlflow/#/runs/run0123",
                         "ray": f"http://127.0.0.1:8265/#/jobs/{job['id']}"}  # the default Ray address
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# In a browser


@pytest.fixture(scope="module")
def head(queue_head):
    """The session's token-auth head (2 CPUs), shared with the other queue modules."""
    return queue_head.get()


@pytest.fixture(scope="module")
def server(head, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ui-server")
    started = start_server(workdir, head.server_env(workdir, VAE_API_TOKEN=f"{USER}:{TOKEN}", VAE_MLFLOW_UI_URL=MLFLOW_UI))
    yield started
    started.stop()


@pytest.fixture
def browser():
    from playwright import sync_api  # a test dependency: missing, this fails rather than skips
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():  # a test dependency too: missing, this fails rather than skips
        pytest.fail("no chromium: infra/machine-setup.sh installs Debian's")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])  # tests run as root
        yield launched
        launched.close()


def screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("VAE_UI_SCREENSHOTS"):
        target = Path(os.environ["VAE_UI_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)


def test_the_page_in_a_browser(head, server, browser, tmp_path):
    from playwright.sync_api import expect

    client = api(server, TOKEN)
    page = browser.new_page(viewport={"width": 1360, "height": 820})
    problems, requests, dialogs = [], [], []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    # Chromium logs every 4xx answer (the refused token, the refused cancel) as a console error: not a problem.
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    session_token = "() => sessionStorage.getItem('vae-api-token')"

    # The token is asked for; a wrong one is refused and not kept.
    page.goto(f"{server.url}/ui")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#token")).to_have_attribute("type", "password")
    expect(page.locator("#jobs")).to_be_hidden()
    screenshot(page, tmp_path, "login.png")
    page.fill("#token", "not-the-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#message")).to_have_text("token refused")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate(session_token) is None

    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    expect(page.locator("#jobs")).to_be_visible()
    expect(page.locator("#message")).to_be_hidden()
    page.evaluate("window.notReloaded = true")  # gone if anything reloads the page

    # Two jobs that each want both CPUs: one runs, the other waits (and says why).
    submitted = client.post("/jobs", content=tiny_spec_text("ui-job", cpus=2), params={"set": LONG})
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    waiting = client.post("/jobs", content=tiny_spec_text("ui-waits", cpus=2),
                          params={"set": [*LONG, f"tracking.experiment={HTML}"]})
    assert waiting.status_code == 201, waiting.text
    waiting_id = waiting.json()["id"]

    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=10_000)  # the table refreshes itself
    state = row.locator('[data-field="state"]')
    assert state.inner_text() in ("queued", "submitted", "running")
    expect(row.locator('[data-field="name"]')).to_have_text("ui-job")
    expect(row.locator('[data-field="kind"]')).to_have_text("train")
    expect(row.locator('[data-field="user"]')).to_have_text(USER)
    expect(row.locator('[data-field="resources"]')).to_have_text("2 CPU, 0 GPU")
    expect(row.locator('[data-field="preemptions"]')).to_have_text("0")
    expect(row.locator('[data-field="age"]')).to_have_text(re.compile(r"^\d+s$|^\d+m \d+s$"))
    expect(state).to_have_text("running", timeout=180_000)
    expect(row.locator('[data-field="attempts"]')).to_have_text("1")
    other = page.locator(f'tr[data-job-id="{waiting_id}"]')
    expect(other.locator('[data-field="state"]')).to_have_text("queued")
    # The scheduler's reason, word for word: the running job holds both CPUs of the head.
    reason = "waiting for 2 CPUs to be free (2 of 2 CPUs in use)"
    expect(other.locator('[data-field="waiting_reason"]')).to_have_text(reason, timeout=30_000)
    assert job_state(client, waiting_id)["waiting_reason"] == reason
    # The user's fair share: the running job holds both CPUs, all of the head (the dispatcher
    # records it every few seconds); no weights set: weight 1.
    share = page.locator(f'#shares-body tr[data-user="{USER}"]')
    expect(share.locator('[data-field="current_share"]')).to_have_text("100.0 %", timeout=30_000)
    expect(share.locator('[data-field="weight"]')).to_have_text("1")
    expect(page.locator("#shares-note")).to_contain_text("half-life 7 d")
    screenshot(page, tmp_path, "jobs-table.png")

    # The waiting job's page: its spec as text (no markup from it), then cancelled from the page.
    other.locator('[data-field="id"] a').click()
    expect(page).to_have_url(re.compile(rf"/ui#/jobs/{waiting_id}$"))
    expect(page.locator("#job-spec")).to_contain_text(HTML)
    expect(page.locator('#job-fields [data-field="overrides"]')).to_contain_text(HTML)
    assert page.locator("#injected").count() == 0
    expect(page.locator('#job-fields [data-field="waiting_reason"]')).to_have_text(reason)
    expect(page.locator("#link-ray")).to_have_text("—")  # never submitted to Ray
    page.click("#cancel")
    expect(page.locator('#job-state-badge [data-field="state"]')).to_have_text("cancelled")
    expect(page.locator("#cancel")).to_be_hidden()
    # A refused cancel shows the API's reason: the button, shown again by hand, on a finished job.
    page.evaluate("document.getElementById('cancel').hidden = false")
    page.click("#cancel")
    expect(page.locator("#cancel-error")).to_contain_text("Not cancelled: 409")

    # The running job's page: fields, spec, a live log tail, its Ray link.
    page.goto(f"{server.url}/ui#/jobs/{job_id}")
    expect(page.locator("#job-spec")).to_contain_text("name: ui-job")
    expect(page.locator('#job-fields [data-field="user"]')).to_have_text(USER)
    log = page.locator("#job-log")
    first = wait_for(lambda: log.inner_text().strip() not in ("", "(no output yet)") and log.inner_text(), 120,
                     "log lines on the job page")
    # Ray's own first lines, then the training's: the tail follows the job while the page stays open.
    wait_for(lambda: len(log.inner_text().strip().splitlines()) > len(first.strip().splitlines()) + 1, 180,
             "the job's own output in the log tail")
    assert "\x1b" not in log.inner_text()  # Ray's terminal colours are dropped
    ray_id = job_state(client, job_id)["ray_submission_id"]
    assert ray_id
    expect(page.locator("#link-ray")).to_have_attribute("href", f"{head.address}/#/jobs/{ray_id}")
    expect(page.locator("#link-mlflow")).to_have_text("—")  # the run id is recorded when the job ends
    # The job opens its MLflow run (tagged with its id) before it trains: wait for it, so that
    # the cancel below comes after it and the job must end with that run id.
    mlflow = mlflow_client()
    experiment = wait_for(lambda: mlflow.get_experiment_by_name("queue-tests"), 120, "the job's MLflow experiment")
    run = wait_for(lambda: mlflow.search_runs([experiment.experiment_id], f"tags.\"vae.job_id\" = '{job_id}'"), 120,
                   "the job's MLflow run")[0]
    expect(page.locator('#job-state-badge [data-field="state"]')).to_have_text("running")
    screenshot(page, tmp_path, "job-page.png")
    page.click("#cancel")
    expect(page.locator('#job-state-badge [data-field="state"]')).to_have_text("cancelled", timeout=120_000)
    expect(page.locator("#cancel")).to_be_hidden()
    assert dialogs == [f"Cancel job {waiting_id}?"] * 2 + [f"Cancel job {job_id}?"]
    assert job_state(client, job_id)["mlflow_run_id"] == run.info.run_id  # recorded when the job ended
    expect(page.locator("#link-mlflow")).to_have_attribute("href", f"http://127.0.0.1:5999/mlflow/#/runs/{run.info.run_id}")
    screenshot(page, tmp_path, "job-cancelled.png")
    page.click("text=← all jobs")
    expect(row.locator('[data-field="state"]')).to_have_text("cancelled")

    # The token: in this tab's sessionStorage only; never in an address, a cookie or localStorage.
    assert page.evaluate("window.notReloaded") is True
    assert TOKEN not in page.url and page.evaluate("localStorage.length") == 0
    assert page.evaluate(session_token) == TOKEN and page.context.cookies() == []
    assert requests and all(url.startswith(server.url) for url in requests), "a request left the server"
    assert not [url for url in requests if TOKEN in url]
    assert "secret" not in page.content()
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate(session_token) is None
    assert not problems, problems
