"""Ctrl-C (and SIGTERM) for a whole job, caught in one place.

The job layer installs the handler once (`catching_stop_signals`); the Ray Train and Ray Tune
adapters only register what "stop gracefully" means for them (`on_request`): the workers finish
the step they are in and checkpoint there (the hard stop, aborting the Train controller or
cancelling the task, follows if they have not ended HARD_STOP_AFTER_S later); the Tune
experiment ends. The first Ctrl-C asks for that graceful stop (checkpoints are kept, the run
can be resumed); a second one raises KeyboardInterrupt to stop waiting.
SIGTERM is how Ray stops a queued job the queue cancels or preempts: the same graceful stop
(Ray sends SIGKILL after the grace period, VAE_PREEMPT_GRACE_S, if it has not ended by then).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

# How long the workers have to finish their step and checkpoint before the hard stop. Under the
# queue's grace (VAE_PREEMPT_GRACE_S), so a stopped job's driver still records how it ended.
HARD_STOP_AFTER_S = 20.0


class Interrupt:
    def __init__(self) -> None:
        self.requested = False
        self._callbacks: list[Callable[[], None]] = []

    def on_request(self, callback: Callable[[], None], after_s: float = 0.0) -> None:
        """Calls `callback` when a stop is requested (at once, if it already was), or `after_s`
        seconds later (a daemon timer: the hard stop for a run that has not stopped by then)."""
        if after_s > 0:
            callback = self._later(callback, after_s)
        self._callbacks.append(callback)
        if self.requested:
            callback()

    @staticmethod
    def _later(callback: Callable[[], None], after_s: float) -> Callable[[], None]:
        def start() -> None:
            timer = threading.Timer(after_s, callback)
            timer.daemon = True
            timer.start()
        return start

    def request(self) -> None:
        self.requested = True
        for callback in list(self._callbacks):
            callback()

    @contextlib.contextmanager
    def catching_stop_signals(self) -> Iterator["Interrupt"]:
        """SIGINT and SIGTERM request a graceful stop while the block runs. Signal handlers exist
        only in the main thread: elsewhere (a test, a sweep trial) the block runs without one."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def on_sigint(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.request()

        def on_sigterm(signum, frame):  # repeated: still graceful; Ray's SIGKILL ends the wait
            if not self.requested:
                self.request()

        previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
