"""Job states and the one table of legal transitions.

    queued ──▶ submitted ──▶ running ──▶ succeeded | failed | cancelled
      ▲  │         │            │  │
      │  │         └──────┬─────┘  └──▶ preempting ──▶ preempted ──▶ queued (again)
      │  │                ▼                 │              │
      │  │           cancelling ◀───────────┘              └──▶ cancelled
      │  │                └──▶ cancelled (or succeeded | failed, if it finished first)
      │  └──▶ cancelled (never reached Ray)
      └── preempted

Preemption (scheduling.py decides, the dispatcher acts): a running job of lower priority is
asked to stop (`preempting`: Ray sends its driver SIGTERM; it still holds its resources), ends
with its checkpoints kept (`preempted`: the attempt's outcome), and goes back to `queued` with
its run directory, to be resumed from its latest checkpoint when it is admitted again.

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
    PREEMPTING = "preempting"
    PREEMPTED = "preempted"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
# Admitted to the cluster: these hold the resources their spec asks for.
ACTIVE = frozenset({State.SUBMITTED, State.RUNNING, State.CANCELLING, State.PREEMPTING})
# Not on the cluster, waiting for it: a cancel ends these at once.
WAITING = frozenset({State.QUEUED, State.PREEMPTED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.SUBMITTED, State.CANCELLED}),
    State.SUBMITTED: frozenset({State.RUNNING, State.CANCELLING} | TERMINAL),
    State.RUNNING: frozenset({State.CANCELLING, State.PREEMPTING} | TERMINAL),
    State.CANCELLING: TERMINAL,
    # It may finish (or fail) before the stop lands; a cancel wins over the requeue.
    State.PREEMPTING: frozenset({State.PREEMPTED, State.CANCELLING} | TERMINAL),
    State.PREEMPTED: frozenset({State.QUEUED, State.CANCELLED}),
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
