"""The queue commands' exit codes (README, "Job queue"): `0` ok, `1` the job failed or was
cancelled (`submit --wait`), `2` bad spec, unknown id, refused token or unreachable API, `130`
Ctrl-C (the job goes on). Real `vae` processes against a real `vae server --no-dispatcher`
(SQLite store): jobs stay queued, so no Ray is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from queue_support import VAE, api, free_port, job_state, start_server, tiny_spec_text, wait_for

pytestmark = pytest.mark.slow  # a real `vae server` process and `vae` subprocesses
ADMIN, ALICE = "admin-token-0123456789", "alice-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An API-only server (no dispatcher, no Ray) with an admin and a non-admin user."""
    workdir = tmp_path_factory.mktemp("cli-queue")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAE_API", "RAY_"))}
    env.update(VAE_HOME=str(workdir / ".vae"), VAE_DB_URL=f"sqlite:///{workdir / 'queue.db'}",
               VAE_API_TOKEN=f"admin:{ADMIN},alice:{ALICE}", VAE_ADMINS="admin",
               VAE_RAY_ADDRESS=f"http://127.0.0.1:{free_port()}",  # nothing there: never called
               VAE_FAIR_SHARE_WEIGHTS="alice=2,team-b=3")
    started = start_server(workdir, env, "--no-dispatcher")
    started.workdir = workdir
    yield started
    started.stop()


def client_env(server, token: str = ADMIN, url: str | None = None) -> dict:
    return dict(server.env, VAE_API_URL=url or server.url, VAE_API_TOKEN=token)


def vae(server, *args, token: str = ADMIN, url: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([VAE, *map(str, args)], env=client_env(server, token, url), cwd=server.workdir,
                          capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failing command prints on stderr (fails if there are more, or a traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def spec_file(server, name: str, text: str) -> Path:
    path = server.workdir / f"{name}.yaml"
    path.write_text(text)
    return path


def total_jobs(server) -> int:
    return api(server, ADMIN).get("/jobs").json()["total"]


def submit_waiting(server, spec: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """`vae submit SPEC --wait` in the background: (process, job id, its stderr lines so far),
    once it has printed the job's first state (it is in its wait loop)."""
    process = subprocess.Popen([VAE, "submit", str(spec), "--wait"], env=client_env(server), cwd=server.workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = process.stdout.readline().strip()
    assert len(job_id) == 16, job_id
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    wait_for(lambda: any(f"job {job_id}: queued" in line for line in lines), 30, "submit --wait to report the job")
    return process, job_id, lines


def exit_code(process: subprocess.Popen, lines: list[str], timeout: float = 90) -> int:
    """The exit code of a `vae submit --wait` told to end; a hang fails with what it printed and where it is stuck
    (CI once saw a 30 s wait run out with the machine at load 13, and nothing to tell why)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        py_spy = Path(sys.executable).with_name("py-spy")
        stack = subprocess.run([str(py_spy), "dump", "--pid", str(process.pid)], capture_output=True, text=True).stdout
        pytest.fail(f"still running after {timeout:.0f} s; its stderr so far: {lines}\nits stack:\n{stack}")


def test_an_unreachable_api_is_exit_2_and_one_line(server):
    """Every queue command, with nothing listening at VAE_API_URL: exit 2, one line naming it."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    spec = spec_file(server, "unreachable", tiny_spec_text("unreachable"))
    for args in (("submit", spec), ("jobs",), ("status", "0123456789abcdef"), ("cancel", "0123456789abcdef")):
        result = vae(server, *args, url=nowhere)
        assert result.returncode == 2, (args, result.stderr)
        assert f"cannot reach the API at {nowhere}" in error_line(result), args
        assert result.stdout == "", args


def test_a_bad_spec_is_exit_2_naming_the_field_and_nothing_is_queued(server):
    """Refused by `vae submit` itself (a field, a --set value) or by the server (where a
    non-admin may write): exit 2, one line naming the field; no job stored."""
    before = total_jobs(server)
    bad = spec_file(server, "bad", tiny_spec_text("bad").replace("epochs: 1", "epochs: -1"))
    line = error_line(result := vae(server, "submit", bad))
    assert result.returncode == 2 and line == f"{bad}: optim.epochs: must be > 0 (got -1) (line 4)", line
    good = spec_file(server, "good", tiny_spec_text("good"))
    line = error_line(result := vae(server, "submit", good, "--set", "optim.lr=fast"))
    assert result.returncode == 2 and line.startswith(f"{good}: optim.lr: "), line
    elsewhere = spec_file(server, "elsewhere", tiny_spec_text("elsewhere") + "storage: {uri: /tmp/not-allowed}\n")
    line = error_line(result := vae(server, "submit", elsewhere, token=ALICE))
    assert result.returncode == 2 and line.startswith("storage.uri: "), line  # the server's 422
    assert result.stdout == "" and total_jobs(server) == before


def test_cancel_exit_codes(server):
    """`vae cancel`: a queued job is cancelled at once (exit 0); a finished or unknown one is exit 2."""
    spec = spec_file(server, "cancel-me", tiny_spec_text("cancel-me"))
    submitted = vae(server, "submit", spec)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    result = vae(server, "cancel", job_id)
    assert result.returncode == 0 and error_line(result) == f"job {job_id}: cancelled", result.stderr
    assert job_state(api(server, ADMIN), job_id)["state"] == "cancelled"
    again = vae(server, "cancel", job_id)
    assert again.returncode == 2 and "cancelled: it cannot become cancelling" in error_line(again)
    unknown = vae(server, "cancel", "0123456789abcdef")
    assert unknown.returncode == 2 and "no job" in error_line(unknown)
    # Another user's job does not exist for them: the same answer as an unknown id.
    theirs = vae(server, "submit", spec)
    hidden = vae(server, "cancel", theirs.stdout.strip(), token=ALICE)
    assert hidden.returncode == 2 and "no job" in error_line(hidden)
    assert job_state(api(server, ADMIN), theirs.stdout.strip())["state"] == "queued"


def test_submit_wait_on_a_job_cancelled_meanwhile_exits_1(server):
    """`vae submit --wait`, then `vae cancel` from elsewhere: the waiting command ends with 1."""
    process, job_id, lines = submit_waiting(server, spec_file(server, "waited", tiny_spec_text("waited")))
    try:
        assert vae(server, "cancel", job_id).returncode == 0
        assert exit_code(process, lines) == 1
    finally:
        process.kill()
    wait_for(lambda: any(f"job {job_id} cancelled after" in line for line in lines), 60, "the closing line")


def test_ctrl_c_during_submit_wait_exits_130_and_the_job_goes_on(server):
    """SIGINT to `vae submit --wait`: exit 130 with how to follow the job; the job stays queued."""
    process, job_id, lines = submit_waiting(server, spec_file(server, "interrupted", tiny_spec_text("interrupted")))
    try:
        process.send_signal(signal.SIGINT)
        assert exit_code(process, lines) == 130
    finally:
        process.kill()
    wait_for(lambda: any("stopped waiting; the job goes on" in line for line in lines), 60, "the goodbye line")
    assert not any("Traceback" in line for line in lines), lines
    assert job_state(api(server, ADMIN), job_id)["state"] == "queued"


def test_jobs_shows_each_users_fair_share(server):
    """`vae jobs` ends with the fair-share table (GET /fair-share): weight, current, historic and
    effective share; a user sees their own row, an admin everyone's."""
    from datetime import datetime, timedelta, timezone

    from vae_service.queue.db import make_engine
    from vae_service.queue.quotas import FairShare
    from vae_service.queue.store import Store

    engine = make_engine(server.env["VAE_DB_URL"])
    fair, now = FairShare(half_life_s=7 * 86400.0), datetime.now(timezone.utc)
    Store(engine).record_usage({"alice": 0.5}, fair, now - timedelta(days=7))  # what the dispatcher would store
    Store(engine).record_usage({"alice": 0.5}, fair, now)
    engine.dispose()
    result = vae(server, "jobs")
    assert result.returncode == 0, result.stderr
    assert "fair share (half-life 7 d)" in result.stdout, result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip().startswith(("alice", "team-b"))}
    assert rows["alice"] == ["2", "50.0", "%", "25.0", "%", "37.5", "%"]  # (50 % + 25 %) / 2
    assert rows["team-b"] == ["3", "0.0", "%", "0.0", "%", "0.0", "%"]
    mine = vae(server, "jobs", token=ALICE).stdout
    assert "alice" in mine and "team-b" not in mine
