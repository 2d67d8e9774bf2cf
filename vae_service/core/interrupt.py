"""Ctrl-C (and SIGTERM) for a whole job, caught in one place.

The job layer installs the handler once (`catching_stop_signals`); the Ray Train and Ray Tune
adapters only register what "stop gracefully" means for them (`on_request`): abort the Train
controller, end the Tune experiment. The first Ctrl-C asks for that graceful stop (checkpoints
are kept, the run can be resumed); a second one raises KeyboardInterrupt to stop waiting.
SIGTERM is how Ray stops a queued job the queue cancels or preempts: the same graceful stop
(Ray sends SIGKILL after the grace period, VAE_PREEMPT_GRACE_S, if it has not ended by then).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


class Interrupt:
    def __init__(self) -> None:
        self.requested = False
        self._callbacks: list[Callable[[], None]] = []

    def on_request(self, callback: Callable[[], None]) -> None:
        """Calls `callback` when a stop is requested (at once, if it already was)."""
        self._callbacks.append(callback)
        if self.requested:
            callback()

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
