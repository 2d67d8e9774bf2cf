"""`vae submit`, `vae jobs`, `vae status`, `vae logs`, `vae cancel`: clients of `vae server`.

They find the API at VAE_API_URL (default http://127.0.0.1:8000) and send VAE_API_TOKEN (else
the first token in VAE_API_TOKEN_FILE, else $VAE_HOME/api_token). Exit codes: 0 ok, 1 the job
failed or was cancelled (`submit --wait`), 2 bad input, unknown job or unreachable API, 130 Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from vae_service.cli.common import SET_HELP, app, err, fail, load_or_exit, say
from vae_service.queue.states import State

PANEL = "Queue"
STATES = tuple(state.value for state in State)
FINAL = {"succeeded": 0, "failed": 1, "cancelled": 1}
STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "cancelling": "yellow",
         "preempting": "magenta", "preempted": "magenta"}
WAIT_POLL_S = 1.0
LOG_PAGE_BYTES = 8 * 1024 * 1024  # vae logs --all: the server's largest page
WIDTHS = {"id": 16, "name": 4, "state": 10, "prio": 4, "tries": 5, "pre": 3, "by": 5, "created": 14, "mlflow run": 12, "waiting": 20}
out = Console()  # tables are data: stdout


def _client():
    from vae_service.queue.client import Client

    return Client()


def _call(fn, *args, **kwargs):
    from vae_service.queue.client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        fail(str(exc), exc.code)


def _when(stamp: Optional[str], short: bool = False) -> str:
    if not stamp:
        return ""
    return datetime.fromisoformat(stamp).astimezone().strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")


def _elapsed(job: dict) -> float:
    start = datetime.fromisoformat(job["created_at"])
    end = datetime.fromisoformat(job["finished_at"]) if job.get("finished_at") else datetime.now(timezone.utc)
    return (end - start).total_seconds()


def _describe(job: dict) -> str:
    state = job["state"]
    extra = f" ({job['position']} ahead)" if state == "queued" and job.get("position") is not None else ""
    why = f": {job['waiting_reason']}" if job.get("waiting_reason") else ""
    return f"job {job['id']} {job['name']}: {state}{extra}, {_elapsed(job):.0f} s{why}"


@app.command(rich_help_panel=PANEL)
def submit(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec (YAML or JSON)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    priority: int = typer.Option(0, "--priority", "-p", help="Higher runs first; equal priorities run oldest first."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Wait for the outcome (progress on stderr); exit 0 succeeded, 1 failed or cancelled."),
    key: Optional[str] = typer.Option(None, "--idempotency-key", help="Submitting again with the same key returns the same job."),
) -> None:
    """Queue a job on `vae server`; prints the job id on stdout."""
    load_or_exit(spec_path, set_)  # same checks as the server, with this file's line numbers
    text = spec_path.read_text()
    with _client() as client:
        job = _call(client.submit, text, priority, tuple(set_), key)
        print(job["id"], flush=True)
        say(f"queued job {job['id']} ({job['name']}, priority {job['priority']})")
        if wait:
            raise typer.Exit(_wait(client, job["id"]))


def _wait(client, job_id: str) -> int:
    from vae_service.queue.client import ApiError

    spinner = Spinner("dots", text="")
    last_state = None
    epochs = EpochLines(client, job_id)
    with _ctrl_c_noted() as ctrl_c, Live(spinner, console=err, transient=True, refresh_per_second=8) as live:
        while not ctrl_c:
            try:
                job = client.job(job_id)
            except ApiError as exc:
                spinner.update(text=Text(f"job {job_id}: {exc} (retrying)"))
                _sleep_unless(ctrl_c, WAIT_POLL_S)
                continue
            if job["state"] != last_state:
                live.console.print(f"job {job_id}: [{STYLE.get(job['state'], 'bold')}]{job['state']}[/]", highlight=False)
                last_state = job["state"]
            if job.get("submitted_at"):  # Ray has (or had) it: its finished epochs are in its log
                for line in epochs.new():
                    live.console.print(f"  {line}", markup=False, highlight=False)
            if job["state"] in FINAL:
                break
            spinner.update(text=Text(_describe(job) + (f" · {epochs.latest}" if epochs.latest else "")))
            _sleep_unless(ctrl_c, WAIT_POLL_S)
    if ctrl_c:
        say(f"stopped waiting; the job goes on (vae status {job_id} / vae logs {job_id} -f / vae cancel {job_id})")
        return 130
    run = f", MLflow run {job['mlflow_run_id']}" if job.get("mlflow_run_id") else ""
    say(f"job {job_id} {job['state']} after {_elapsed(job):.0f} s{run}")
    if job.get("error"):
        say(job["error"])
    return FINAL[job["state"]]


@contextmanager
def _ctrl_c_noted() -> Iterator[list]:
    """Ctrl-C while waiting is noted (the list gets an entry) instead of raised: a
    KeyboardInterrupt raised inside a library call (an HTTP request) is not sure to come out of
    it, and a process may inherit SIGINT ignored or blocked. (In CI a `submit --wait` once went on
    for 90 s after SIGINT, its main thread asleep in this loop.)"""
    noted: list = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def _sleep_unless(noted: list, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not noted and time.monotonic() < deadline:
        time.sleep(0.05)


class EpochLines:
    """The finished-epoch lines (core.metrics.EPOCH_LINE) a queued job has written to its log
    since the last call: its log is read on from where the last read ended, whole lines only."""

    def __init__(self, client, job_id: str):
        self.client, self.job_id = client, job_id
        self.offset = 0
        self.latest = ""  # `epoch 3/8`, for the spinner

    def new(self) -> list[str]:
        from vae_service.core.metrics import EPOCH_LINE
        from vae_service.queue.client import ApiError

        try:
            page, start, size = self.client.log_page(self.job_id, offset=self.offset, limit=LOG_PAGE_BYTES)
        except ApiError:  # no log yet, or Ray is busy: the next poll tries again
            return []
        if size is not None and size < self.offset:  # a new attempt (after a preemption) writes a new log
            self.offset = 0
            return self.new()
        whole = page[: page.rfind(b"\n") + 1]
        self.offset = start + len(whole)
        lines = [line for line in whole.decode("utf-8", "replace").splitlines() if EPOCH_LINE.match(line)]
        if lines:
            done, total = EPOCH_LINE.match(lines[-1]).groups()
            self.latest = f"epoch {done}/{total}"
        return lines


@app.command(rich_help_panel=PANEL)
def jobs(
    state: Optional[str] = typer.Option(None, "--state", "-s", help=f"Only jobs in this state: {', '.join(STATES)}."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=500, help="How many (newest first)."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many (paging)."),
    json_output: bool = typer.Option(False, "--json", help="Print the API's JSON instead of a table."),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="Only this user's jobs (admins; others see only their own)."),
) -> None:
    """List your jobs (an admin: everyone's), newest first, then each user's fair share (yours;
    an admin: everyone's): weight, the share held now, the decayed share held lately, and the
    effective share, (now + lately) / weight — among equal priorities the smallest goes first."""
    if state is not None and state not in STATES:
        fail(f"--state: must be one of {', '.join(STATES)} (got {state!r})", 2)
    with _client() as client:
        page = _call(client.jobs, state, limit, offset, user)
        shares = None if json_output else _fair_share(client)
    if json_output:
        print(json.dumps(page))
        return
    table = Table(title=f"{page['total']} job(s)" + (f" {state}" if state else ""), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = ["id", "name", "state", "prio", "tries", "pre", "by", "created", "mlflow run"]  # pre: preemptions
    waiting = any(job.get("waiting_reason") for job in page["jobs"])
    if waiting:
        columns.append("waiting")  # the whole reason: vae status ID
    for column in columns:
        table.add_column(column, justify="right" if column in ("prio", "tries", "pre") else "left", no_wrap=True,
                         overflow="ellipsis", min_width=WIDTHS.get(column))
    for job in page["jobs"]:
        row = [job["id"], job["name"], Text(job["state"], style=STYLE.get(job["state"], "")), str(job["priority"]),
               str(job["attempts"]), str(job.get("preemptions", 0)), job["submitted_by"], _when(job["created_at"], short=True), (job["mlflow_run_id"] or "")[:12]]
        table.add_row(*row, *([job.get("waiting_reason") or ""] if waiting else []))
    out.print(table)
    shown = offset + len(page["jobs"])
    if shown < page["total"]:
        say(f"{shown} of {page['total']} shown; more with --offset {shown}")
    if shares and shares["users"]:
        out.print(_share_table(shares))


def _fair_share(client) -> Optional[dict]:
    """GET /fair-share, or None from a server older than it (the jobs are still listed)."""
    from vae_service.queue.client import ApiError

    try:
        return client.fair_share()
    except ApiError as exc:
        if exc.status == 404:
            return None
        fail(str(exc), exc.code)


def _share_table(shares: dict) -> Table:
    half_life = shares["half_life_s"]
    history = f"half-life {half_life / 86400:g} d" if half_life else "no history"
    table = Table(title=f"fair share ({history})", title_justify="left",
                  caption="effective = (current + historic) / weight: smallest goes next", caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("user", "weight", "current", "historic", "effective"):
        table.add_column(column, justify="left" if column == "user" else "right", no_wrap=True)
    for row in shares["users"]:
        table.add_row(row["user"], f"{row['weight']:g}", *(f"{100 * row[key]:.1f} %"
                                                            for key in ("current_share", "historic_share", "effective_share")))
    return table


@app.command(rich_help_panel=PANEL)
def status(
    job_id: str = typer.Argument(..., metavar="ID", help="Job id (from vae submit / vae jobs)."),
    json_output: bool = typer.Option(False, "--json", help="Print the API's JSON (with the spec)."),
) -> None:
    """Show one job: state, timings, Ray and MLflow ids, error."""
    with _client() as client:
        job = _call(client.job, job_id)
    if json_output:
        print(json.dumps(job))
        return
    table = Table(show_header=False, title=f"job {job['id']}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [("name", job["name"]), ("kind", job["kind"]), ("state", job["state"]), ("priority", str(job["priority"])),
            ("queue position", "" if job.get("position") is None else f"{job['position']} ahead"),
            ("waiting", job.get("waiting_reason") or ""),
            ("attempts", str(job["attempts"])), ("preemptions", str(job.get("preemptions") or "")),
            ("preemptible", "" if job.get("preemptible", True) else "no (resources.preemptible: false)"),
            ("submitted by", job["submitted_by"]),
            ("resources", ", ".join(f"{k} {v:g}" for k, v in job["resources"].items() if v)),
            ("created", _when(job["created_at"])), ("handed to Ray", _when(job["submitted_at"])),
            ("started", _when(job["started_at"])), ("this attempt running since", _when(job.get("running_since"))),
            ("finished", _when(job["finished_at"])),
            ("Ray submission id", job["ray_submission_id"] or ""), ("MLflow run", job["mlflow_run_id"] or ""),
            ("nodes", ", ".join(job.get("nodes") or [])), ("error", job["error"] or "")]
    for name, value in rows:
        if value:
            table.add_row(name, Text(value, style=STYLE.get(value, "")))
    out.print(table)


@app.command(rich_help_panel=PANEL)
def logs(
    job_id: str = typer.Argument(..., metavar="ID", help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing as the job writes, until it ends."),
    tail: Optional[int] = typer.Option(None, "--tail", "-n", min=1, max=100_000, help="Only the last N lines."),
    everything: bool = typer.Option(False, "--all", help="The whole log, however long (fetched a page at a time)."),
) -> None:
    """Print a job's output (the `vae run` driver on Ray): its last MiB unless --tail or --all."""
    if sum((follow, tail is not None, everything)) > 1:
        fail("--follow, --tail and --all: choose one", 2)
    with _client() as client:
        if tail is not None:
            sys.stdout.buffer.write(_call(client.log_page, job_id, tail=tail)[0])
            return
        if everything:
            offset, size = 0, None
            while size is None or offset < size:
                page, start, size = _call(client.log_page, job_id, offset=offset, limit=LOG_PAGE_BYTES)
                sys.stdout.buffer.write(page)
                if not page:
                    break
                offset = start + len(page)
            return
        if not follow:
            page, start, size = _call(client.log_page, job_id)
            sys.stdout.buffer.write(page)
            sys.stdout.flush()
            if start:
                say(f"(the first {start} of {size} bytes are left out: vae logs {job_id} --all prints them)")
            return
        from vae_service.queue.client import ApiError

        try:
            for chunk in client.follow_logs(job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except ApiError as exc:
            fail(str(exc), exc.code)
        except KeyboardInterrupt:
            raise typer.Exit(130)


@app.command(rich_help_panel=PANEL)
def priority(
    job_id: str = typer.Argument(..., metavar="ID", help="Job id."),
    value: int = typer.Argument(..., metavar="PRIORITY", help="The new priority (higher runs first)."),
) -> None:
    """Change a job's priority (admins): a queued job moves in line; a running one may now
    preempt lower-priority jobs, or be preempted by higher ones."""
    with _client() as client:
        job = _call(client.set_priority, job_id, value)
    say(f"job {job['id']}: priority {job['priority']} ({job['state']})")


@app.command(rich_help_panel=PANEL)
def cancel(job_id: str = typer.Argument(..., metavar="ID", help="Job id.")) -> None:
    """Cancel a job: a queued one at once, a running one is stopped on Ray."""
    with _client() as client:
        job = _call(client.cancel, job_id)
    say(f"job {job['id']}: {job['state']}")
