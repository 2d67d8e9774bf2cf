"""Job states and the one table of legal transitions.

    queued ──▶ submitted ──▶ running ──▶ succeeded | failed | cancelled
      │            │            │
      │            └──────┬─────┘
      │                   ▼
      │              cancelling ──▶ cancelled (or succeeded | failed, if it finished first)
      └──▶ cancelled (never reached Ray)

`submitted` means "handed to Ray (or about to be)": the dispatcher commits it *before* calling
Ray, with submission_id = the job id, so a crash in between is repaired by submitting again
(Ray refuses a second submission with the same id). Every state change goes through `check`.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
# Admitted to the cluster: these hold the resources their spec asks for.
ACTIVE = frozenset({State.SUBMITTED, State.RUNNING, State.CANCELLING})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.SUBMITTED, State.CANCELLED}),
    State.SUBMITTED: frozenset({State.RUNNING, State.CANCELLING} | TERMINAL),
    State.RUNNING: frozenset({State.CANCELLING} | TERMINAL),
    State.CANCELLING: TERMINAL,
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A state change the table does not allow (e.g. cancelling a job that already finished)."""

    def __init__(self, job_id: str, old: State, new: State):
        self.job_id, self.old, self.new = job_id, State(old), State(new)
        super().__init__(f"job {job_id} is {self.old}: it cannot become {self.new}")


def check(job_id: str, old: str, new: str) -> None:
    """Raises IllegalTransition unless old → new is in the table."""
    if State(new) not in TRANSITIONS[State(old)]:
        raise IllegalTransition(job_id, State(old), State(new))
