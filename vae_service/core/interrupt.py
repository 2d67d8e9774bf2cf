"""Ctrl-C for a whole job, caught in one place.

The job layer installs the handler once (`catching_sigint`); the Ray Train and Ray Tune
adapters only register what "stop gracefully" means for them (`on_request`): abort the Train
controller, end the Tune experiment. The first Ctrl-C asks for that graceful stop (checkpoints
are kept, the run can be resumed); a second one raises KeyboardInterrupt to stop waiting.
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
    def catching_sigint(self) -> Iterator["Interrupt"]:
        """SIGINT requests a graceful stop while the block runs. Signal handlers exist only in
        the main thread: elsewhere (a test, a sweep trial) the block runs without one."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def on_sigint(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.request()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
