"""Who may do what on this server, and where queued jobs may read and write.

  see, cancel, read logs   a job's owner (`submitted_by`) or an admin (auth.py decides who is);
                           anyone else is told the job does not exist (404), not that it is
                           someone else's
  priority                 others: at most VAE_MAX_USER_PRIORITY (default 100); admins: any
  tracking.alias           never a protected alias: refused for everyone by the spec itself
                           (core/spec.py PROTECTED_ALIASES): only `vae models promote` moves @champion
  tracking.register_as     must match a VAE_REGISTER_NAMES pattern (default `*`; `{user}` is the
                           submitter, so `{user}-*` gives everyone their own names); admins: any
  storage.uri, data.root,  inside VAE_ALLOWED_STORAGE / VAE_ALLOWED_DATA (settings.py for the
  data.source              defaults; a glob's folder must be inside); admins: anywhere

Locations are compared normalised: a relative path is taken from the server's directory (where
the job starts, see job_env.py), `~` expanded, symlinks resolved, then compared by whole path
components (`/data-evil` is not inside `/data`); `..` is refused outright. S3 URIs compare by
bucket and key components. Symlinks are resolved on the server: a cluster node whose file system
differs from the server's is the operator's to keep in step.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from vae_service.core.job import Job
from vae_service.core.spec_loading import SpecProblem
from vae_service.queue.auth import Identity
from vae_service.queue.settings import Settings, split_list

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "vae-service"  # as core/data.py's default_cache_dir


class LocationError(ValueError):
    """A location that cannot be compared (`..`, an empty URI)."""


@dataclass(frozen=True)
class Place:
    """A normalised location: a scheme ("" local, "s3", …) and its path components."""

    scheme: str
    parts: tuple[str, ...]

    def inside(self, other: "Place") -> bool:
        return self.scheme == other.scheme and self.parts[: len(other.parts)] == other.parts

    def __str__(self) -> str:
        if not self.scheme:
            return str(Path(*self.parts)) if self.parts else "/"
        return f"{self.scheme}://" + "/".join(self.parts)


def place(uri: str, base: Optional[Path] = None) -> Place:
    """`uri` normalised (module docstring); LocationError for `..` or nothing at all."""
    text = str(uri).strip()
    if not text:
        raise LocationError("empty location")
    if re.match(r"^s3a?:/[^/]", text):  # `s3:/b/p`, as storage.resolve reads it
        text = text.replace(":/", "://", 1)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        scheme = "s3" if scheme == "s3a" else scheme
        parts = tuple(part for part in rest.split("/") if part)
        if ".." in parts:
            raise LocationError(f"'..' is not allowed in a location (got {uri!r})")
        if not parts:
            raise LocationError(f"no bucket in {uri!r}")
        return Place(scheme, parts)
    if ".." in re.split(r"[/\\]", text):
        raise LocationError(f"'..' is not allowed in a path (got {uri!r})")
    try:
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return Place("", path.resolve().parts)
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop, a name too long
        raise LocationError(f"not a usable path: {uri!r} ({exc.__class__.__name__})") from None


def allowed_places(entries: Iterable[str], base: Optional[Path] = None) -> list[Place]:
    places = []
    for entry in entries:
        try:
            places.append(place(entry, base))
        except LocationError:
            continue  # a bad entry in the server's own setting allows nothing
    return places


@dataclass(frozen=True)
class Policy:
    max_user_priority: int = 100
    register_names: tuple[str, ...] = ("*",)
    allowed_storage: tuple[str, ...] = ("runs",)
    allowed_data: tuple[str, ...] = ()
    base: Optional[Path] = None  # where relative paths start (default: the current directory)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Policy":
        storage = split_list(settings.allowed_storage) if settings.allowed_storage is not None else \
            [settings.storage_uri or "runs"]
        if settings.allowed_data is not None:
            data = split_list(settings.allowed_data)
        else:
            data = [os.environ["VAE_DATA_DIR"]] if os.environ.get("VAE_DATA_DIR") else []
            data.append(os.environ.get("VAE_CACHE_DIR") or str(DEFAULT_CACHE_DIR))
        return cls(settings.max_user_priority, tuple(split_list(settings.register_names)), tuple(storage), tuple(data))

    # ---- jobs --------------------------------------------------------------------------------

    @staticmethod
    def may_see(identity: Identity, submitted_by: str) -> bool:
        return identity.admin or identity.name == submitted_by

    def priority_problem(self, identity: Identity, priority: int) -> Optional[str]:
        if identity.admin or priority <= self.max_user_priority:
            return None
        return f"priority: at most {self.max_user_priority} for non-admin users (got {priority})"

    # ---- specs -------------------------------------------------------------------------------

    def spec_problems(self, job: Job, identity: Identity) -> list[SpecProblem]:
        """What this identity may not queue in `job` (a validated job spec of any kind)."""
        if identity.admin:
            return []
        problems: list[SpecProblem] = []
        for field, name in job.registered_names():
            problems += self._register_problems(field, name, identity)
        for field, uri in job.write_locations():
            problems += self._location_problems(field, uri, self.allowed_storage)
        for field, uri in job.read_locations():
            problems += self._location_problems(field, uri, self.allowed_data)
        return problems

    def _register_problems(self, field: str, name: Optional[str], identity: Identity) -> list[SpecProblem]:
        if name is None:
            return []
        patterns = [p.replace("{user}", glob.escape(identity.name)) for p in self.register_names]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return []
        allowed = ", ".join(patterns) or "none"
        return [SpecProblem(field, f"{name!r} is not a model name you may register (allowed: {allowed})")]

    def _location_problems(self, field: str, uri: str, allowed: tuple[str, ...]) -> list[SpecProblem]:
        places = allowed_places(allowed, self.base)
        listed = ", ".join(str(p) for p in places) or "nowhere"
        try:
            where = place(uri, self.base)
        except LocationError as exc:
            return [SpecProblem(field, str(exc))]
        if any(where.inside(prefix) for prefix in places):
            return []
        unset = "; or leave data.root unset" if field.endswith("data.root") else ""  # the named data sets' default
        return [SpecProblem(field, f"{uri!r} is outside what this server allows (allowed: {listed}{unset})")]
