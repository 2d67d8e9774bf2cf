"""Only one dispatcher is active per job store; the others wait for its lock.

PostgreSQL: a session-level advisory lock held on a dedicated connection. SQLite: an exclusive
file lock (flock) on `<database>.dispatcher.lock`. Both are released by the operating system
or the database when the holder dies, even by SIGKILL, so a restarted dispatcher takes over
without anyone cleaning up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

DISPATCHER_LOCK_KEY = 0x7661655F64697370  # "vae_disp"


class Leadership:
    """`acquire(timeout)` → True when this process is the dispatcher; `alive()` → still so."""

    def acquire(self, timeout: float) -> bool:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class FileLeadership(Leadership):
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(path))

    def acquire(self, timeout: float) -> bool:
        try:
            self._lock.acquire(timeout=timeout)
            return True
        except Timeout:
            return False

    def alive(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    def describe(self) -> str:
        return f"file lock {self.path}"


class AdvisoryLeadership(Leadership):
    def __init__(self, engine: Engine):
        self.engine = engine
        self._connection: Optional[Connection] = None

    def acquire(self, timeout: float) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while True:
            if self._try():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _try(self) -> bool:
        connection = self.engine.connect()
        try:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": DISPATCHER_LOCK_KEY}).scalar()
            connection.commit()
        except Exception:
            connection.close()
            raise
        if got:
            self._connection = connection
            return True
        connection.close()
        return False

    def alive(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1")).scalar()
            self._connection.commit()
            return True
        except Exception:  # the connection (and with it the lock) is gone
            self._connection = None
            return False

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": DISPATCHER_LOCK_KEY})
                self._connection.commit()
            finally:
                self._connection.close()
                self._connection = None

    def describe(self) -> str:
        return "PostgreSQL advisory lock"


def leadership_for(engine: Engine) -> Leadership:
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return AdvisoryLeadership(engine)
    database = make_url(str(url)).database or "memory"
    return FileLeadership(Path(f"{database}.dispatcher.lock"))
