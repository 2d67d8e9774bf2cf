"""The job lifecycle without a cluster: outcomes, their errors and exit codes, outcome.json
beside the run, Ctrl-C as one handler, and where the queue looks for a job's outcome."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from vae_service import storage
from vae_service.core.errors import BadInput, Interrupted, JobFailed, one_line
from vae_service.core.interrupt import Interrupt
from vae_service.core.spec_loading import dump_spec
from vae_service.jobs.execute import execute
from vae_service.jobs.locations import queued_run_dir
from vae_service.jobs.outcome import OUTCOME_FILE, ErrorInfo, Outcome, read_outcome, write_outcome
from vae_service.jobs.reporter import Reporter
from vae_service.queue.dispatcher import read_job_outcome
from vae_service.queue.models import Job


def test_outcome_round_trips_through_json_without_its_in_process_record(tmp_path):
    failed = Outcome.failed("train", Interrupted("runs/x"), run_dir="runs/x", mlflow_run_id="abc")
    assert (failed.state, failed.exit_code, failed.error.kind, failed.error.resume_dir) == ("interrupted", 130, "interrupted", "runs/x")
    done = Outcome.succeeded("train", object(), run_dir=str(tmp_path), mlflow_run_id="r1", model_uri="models:/m/1", metrics={"val_kl": 1.5})
    assert "result" not in done.to_json()
    for outcome in (failed, done):
        write_outcome(storage.resolve(str(tmp_path)), outcome)
        again = read_outcome(storage.resolve(str(tmp_path)))
        assert again == outcome and again.result is None


def test_each_error_kind_has_its_exit_code_and_one_line():
    assert [(e.kind, e.exit_code) for e in (BadInput("x"), JobFailed("x"), Interrupted("d"))] == [
        ("bad_input", 2), ("job_failed", 1), ("interrupted", 130)]
    assert str(ErrorInfo("job_failed", "non-finite loss at epoch 0 step 3")) == "error: non-finite loss at epoch 0 step 3"
    assert str(ErrorInfo("bad_input", "data: no MNIST")) == "bad input: data: no MNIST"
    assert one_line(ValueError("a\n  b")) == "a b" and one_line(ValueError()) == "ValueError"
    assert one_line("x" * 50, 10) == "x" * 10


def test_a_wrong_resume_directory_is_bad_input_and_creates_nothing(tiny_spec, tmp_path):
    outcome = execute(tiny_spec(), resume=str(tmp_path / "nothing-here"), reporter=Reporter.quiet())
    assert (outcome.state, outcome.exit_code, outcome.error.kind) == ("failed", 2, "bad_input")
    assert "is not a run directory" in outcome.error.message
    assert not (tmp_path / "nothing-here").exists()


def test_missing_data_fails_before_ray_with_an_outcome_beside_the_run(tiny_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "cache"))
    spec = tiny_spec(data__download=False)
    outcome = execute(spec, reporter=Reporter.quiet(), job_id="0123abcd", run_dir=queued_run_dir(spec, "0123abcd").uri)
    assert (outcome.exit_code, outcome.error.kind) == (2, "bad_input")
    assert outcome.error.message.startswith("data: ") and "VAE_DATA_DIR" in outcome.error.message
    assert outcome.run_dir == str(tmp_path / "runs" / "tiny-0123abcd")
    written = json.loads((tmp_path / "runs" / "tiny-0123abcd" / OUTCOME_FILE).read_text())
    assert written["error"]["kind"] == "bad_input" and written["exit_code"] == 2


def test_the_queue_reads_the_outcome_where_execute_wrote_it(tiny_spec, tmp_path, monkeypatch):
    """The run directory is decided once, when the queue stores the job: the job runs there and
    the dispatcher reads its outcome there (a job stored before: where its spec put it)."""
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "cache"))
    spec = tiny_spec(data__download=False)
    run_dir = queued_run_dir(spec, "feedbeef").uri
    assert run_dir == str(tmp_path / "runs" / "tiny-feedbeef")
    elsewhere = str(tmp_path / "decided" / "at-submission")
    execute(spec, reporter=Reporter.quiet(), job_id="feedbeef", run_dir=elsewhere)
    outcome = read_job_outcome(Job(id="feedbeef", spec_normalised=dump_spec(spec), run_dir=elsewhere))
    assert outcome is not None and outcome.error.kind == "bad_input" and outcome.run_dir == elsewhere
    assert read_job_outcome(Job(id="feedbeef", spec_normalised=dump_spec(spec))) is None  # not where the spec says
    execute(spec, reporter=Reporter.quiet(), job_id="feedbeef", run_dir=run_dir)
    assert read_job_outcome(Job(id="feedbeef", spec_normalised=dump_spec(spec))).error.kind == "bad_input"
    assert read_job_outcome(Job(id="00000000", spec_normalised=dump_spec(spec))) is None


def test_interrupt_runs_callbacks_once_asked_and_for_late_registrations():
    interrupt, calls = Interrupt(), []
    interrupt.on_request(lambda: calls.append("early"))
    assert calls == [] and not interrupt.requested
    interrupt.request()
    interrupt.on_request(lambda: calls.append("late"))
    assert interrupt.requested and calls == ["early", "late"]


def test_a_hard_stop_registered_with_a_delay_runs_that_long_after_the_request():
    interrupt, calls = Interrupt(), []
    interrupt.on_request(lambda: calls.append(time.monotonic()), after_s=0.3)
    asked = time.monotonic()
    interrupt.request()
    assert calls == []
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 1 and calls[0] - asked >= 0.3


def test_first_ctrl_c_requests_a_stop_second_one_raises():
    interrupt = Interrupt()
    before = signal.getsignal(signal.SIGINT)
    with interrupt.catching_stop_signals():
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_credentials_never_reach_an_error_message(tiny_spec, monkeypatch, ray_cluster):
    """Issue 12, defect 5: a password in MLFLOW_TRACKING_URI used to be printed (and stored by
    the queue) in the "MLflow is unavailable" error. (The job checks that it fits on Ray before
    it opens its MLflow run: on the session's cluster, not a local Ray left behind in this process.)"""
    from vae_service.core.errors import redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2-secret")
    assert redact("s3://key:hunter2-secret@bucket and https://u:p@host:5000/x") == "s3://***@bucket and https://***@host:5000/x"
    assert one_line(RuntimeError("refused: hunter2-secret")) == "refused: ***"

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:pa55word@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    outcome = execute(tiny_spec(), reporter=Reporter.quiet())
    assert outcome.error.kind == "job_failed" and "is unavailable" in outcome.error.message
    written = (Path(outcome.run_dir) / OUTCOME_FILE).read_text()
    assert "pa55word" not in str(outcome.error) and "pa55word" not in written
    assert "http://***@127.0.0.1" in outcome.error.message


def test_every_kind_of_job_implements_the_job_interface_and_only_a_train_job_trains_in_its_driver():
    """Each kind answers every member of core/job.Job, so no caller needs to branch on the kind;
    `trained_by_driver` is what decides whether a worker is started ahead (jobs/warm.py)."""
    import inspect

    from vae_service.core.encode_spec import EncodeDatasetSpec
    from vae_service.core.job import Job
    from vae_service.core.spec_loading import load_spec
    from vae_service.jobs.compare import default_spec_paths, load_comparison
    from vae_service.jobs.execute import EXECUTORS

    root = Path(__file__).resolve().parents[1] / "jobs"
    jobs = {
        "train": load_spec(root / "mnist-vae.yaml"),
        "sweep": load_spec(root / "beta-sweep.yaml"),
        "compare": load_comparison(default_spec_paths(root.parent)),
        "encode-dataset": EncodeDatasetSpec(model="models:/m/1", data={"source": "/data/x", "format": "numpy"}, output="/out"),
    }
    assert set(jobs) == set(EXECUTORS)
    members = [name for name, _ in inspect.getmembers(Job) if not name.startswith("_")]
    assert {"train_specs", "trained_by_driver", "worker_resources", "storage_uri"} <= set(members)
    for kind, job in jobs.items():
        assert job.kind == kind
        missing = [name for name in members if not hasattr(job, name)]
        assert not missing, f"{kind} lacks {missing}"
        assert job.trained_by_driver() is (job if kind == "train" else None)
