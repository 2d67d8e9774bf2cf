"""Live progress from the workers to the driver's terminal or log.

Rank 0 pushes step updates to a tiny Ray actor (fire and forget) and asks it whether to stop; a
driver thread polls it and draws a rich progress bar ("bar"), or writes one line per finished
epoch ("lines": a queued job's log, which `vae submit --wait` follows). Per-epoch results come from Ray Train's own
reports; a single-worker run (one_worker.py) reports its metrics and checkpoints to the same actor.
"""

from __future__ import annotations

import threading
import time
from typing import Literal, Optional

import ray
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vae_service.core import metrics as M
from vae_service.core.metrics import format_epoch

ProgressMode = Literal["bar", "lines", "off"]  # a live bar (a terminal), a line per epoch (a log), nothing
LINES_POLL_S = 2.0  # a log needs no more than a line per epoch


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Holds the latest progress snapshot (and every finished epoch's metrics), and the driver's
    request that the workers stop (Ctrl-C, the queue's cancel or preemption: worker.StopRequests)."""

    def __init__(self) -> None:
        self.latest: dict = {}
        self.epochs: list[dict] = []
        self.failure: Optional[str] = None
        self.first_step_at: Optional[float] = None  # unix time of the first training step
        self.nodes: dict[int, str] = {}  # rank → the host it runs on
        self.reports: list[tuple[dict, Optional[str]]] = []  # a single-worker run's: (metrics, checkpoint URI)
        self.stopping = False  # the driver asked the workers to stop at their next step (and checkpoint there)

    def update(self, snapshot: dict) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        self.latest = snapshot

    def finish_epoch(self, metrics: dict) -> None:
        self.epochs.append(metrics)

    def node(self, rank: int, host: str) -> None:
        self.nodes[rank] = host

    def report(self, metrics: dict, checkpoint: Optional[str]) -> None:
        self.reports.append((metrics, checkpoint))

    def reports_since(self, count: int) -> list[tuple[dict, Optional[str]]]:
        return self.reports[count:]

    def last_checkpoint(self) -> Optional[str]:
        return next((uri for _, uri in reversed(self.reports) if uri), None)

    def result(self) -> tuple[dict, Optional[str]]:
        """What Ray Train's Result holds: the last metrics reported, the last checkpoint."""
        return (self.reports[-1][0] if self.reports else {}), self.last_checkpoint()

    def request_stop(self) -> None:
        self.stopping = True

    def stop_requested(self) -> bool:
        return self.stopping

    def fail(self, reason: str) -> None:
        """A failure that retrying cannot fix (e.g. a non-finite loss): the run must fail."""
        self.failure = reason

    def read(self) -> dict:
        return {"latest": self.latest, "epochs": self.epochs, "failure": self.failure, "first_step_at": self.first_step_at,
                "nodes": [self.nodes[rank] for rank in sorted(self.nodes)]}


class ProgressDisplay:
    """Polls a ProgressBoard in a background thread and renders epoch, step, loss, images/s, ETA
    ("bar"), or only a line per finished epoch ("lines")."""

    def __init__(self, board, epochs: int, console: Console, mode: ProgressMode = "bar"):
        self.board, self.epochs, self.mode = board, epochs, mode
        self.poll_s = LINES_POLL_S if mode == "lines" else 0.25
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._epochs_shown = 0
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("step {task.fields[step]}/{task.fields[steps]}"),
            TextColumn("loss {task.fields[loss]:.2f}"),
            TextColumn("{task.fields[rate]:,.0f} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> "ProgressDisplay":
        if self.mode == "bar":
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.epochs, epoch=0, epochs=self.epochs, step=0, steps=0, loss=float("nan"), rate=0.0
            )
        if self.mode != "off":
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._refresh()  # the last epoch's line may have arrived after the last poll
        if self.mode == "bar":
            self._progress.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            if not self._refresh():
                return

    def _refresh(self) -> bool:
        try:
            state = ray.get(self.board.read.remote(), timeout=5)
        except Exception:  # the cluster is going away: stop drawing, never crash the run
            return False
        snap, epochs = state["latest"], state["epochs"]
        for metrics in epochs[self._epochs_shown :]:
            self._progress.console.print(format_epoch(metrics, self.epochs), markup=False, highlight=False)
        self._epochs_shown = len(epochs)
        if snap and self.mode == "bar":
            done = snap[M.EPOCH] + snap["step"] / max(snap["steps"], 1)
            self._progress.update(
                self._task,
                completed=done,
                epoch=snap[M.EPOCH] + 1,
                step=snap["step"],
                steps=snap["steps"],
                loss=snap["loss"],
                rate=snap[M.IMAGES_PER_S],
            )
        return True
