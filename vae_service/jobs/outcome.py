"""How a job ended, as a small typed record: what `vae run --json` is built on, and what the
queue reads back (`outcome.json` beside the run) instead of the job's log text."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from vae_service import storage
from vae_service.core.errors import JobError, one_line

OUTCOME_FILE = "outcome.json"

SUCCEEDED, FAILED, INTERRUPTED = "succeeded", "failed", "interrupted"


LABELS = {"bad_input": "bad input", "job_failed": "error", "interrupted": "interrupted"}


@dataclass(frozen=True)
class ErrorInfo:
    kind: str  # bad_input | job_failed | interrupted (see core.errors)
    message: str
    resume_dir: Optional[str] = None  # interrupted: the directory --resume continues

    def __str__(self) -> str:
        """The one line a user sees, in the CLI and in the queue's error column."""
        return f"{LABELS.get(self.kind, self.kind)}: {self.message}"


@dataclass
class Outcome:
    job: str  # train | sweep | compare
    state: str  # succeeded | failed | interrupted
    exit_code: int  # the CLI's: 0, 1 failed, 2 bad input, 130 interrupted
    run_dir: Optional[str] = None
    mlflow_run_id: Optional[str] = None
    model_uri: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # the hosts the training ranks ran on, by rank
    error: Optional[ErrorInfo] = None
    # The job kind's own record (RunResult, SweepResult, ComparisonResult): in-process only.
    result: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def succeeded(cls, job: str, result: Any, *, run_dir: str, mlflow_run_id: str, model_uri: Optional[str], metrics: dict,
                  nodes: tuple = ()) -> "Outcome":
        return cls(job, SUCCEEDED, 0, run_dir, mlflow_run_id, model_uri, metrics, list(nodes), result=result)

    @classmethod
    def failed(cls, job: str, error: JobError, *, run_dir: Optional[str] = None, mlflow_run_id: Optional[str] = None) -> "Outcome":
        state = INTERRUPTED if error.kind == "interrupted" else FAILED
        resume_dir = getattr(error, "resume_dir", None)
        return cls(job, state, error.exit_code, run_dir, mlflow_run_id, error=ErrorInfo(error.kind, one_line(error), resume_dir))

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("result")
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Outcome":
        error = data.get("error")
        fields = {k: data.get(k) for k in ("run_dir", "mlflow_run_id", "model_uri")}
        return cls(data["job"], data["state"], int(data["exit_code"]), **fields, metrics=dict(data.get("metrics") or {}),
                   nodes=list(data.get("nodes") or []), error=ErrorInfo(**error) if error else None)


def write_outcome(run_dir: storage.Location, outcome: Outcome) -> None:
    storage.write_text(run_dir.join(OUTCOME_FILE), json.dumps(outcome.to_json(), indent=2, default=str))


def clear_outcome(run_dir: storage.Location) -> None:
    """Removes an earlier attempt's outcome from a run being continued: until this attempt
    writes its own, the queue must not read how the last one ended."""
    storage.delete_file(run_dir.join(OUTCOME_FILE))


def read_outcome(run_dir: storage.Location) -> Optional[Outcome]:
    """The outcome a job wrote beside its run, or None when it wrote none (killed first)."""
    location = run_dir.join(OUTCOME_FILE)
    if not storage.exists(location):
        return None
    return Outcome.from_json(storage.read_json(location))
