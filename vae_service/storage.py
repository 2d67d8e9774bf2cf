"""Where run files live: a local directory or `s3://bucket/prefix` on any S3-compatible store.

`resolve(uri)` turns a `storage.uri` into a `Location` — a `pyarrow.fs` filesystem and a path on
it (`fs, path = resolve(uri)` also works). Everything else here reads, writes, lists and copies
through that filesystem, so the runner has one code path for both kinds of storage; Ray Train is
handed the same filesystem (`RunConfig(storage_filesystem=...)`).

S3 settings come from the environment, never from the spec:
  endpoint   VAE_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL
             (`http://host:port` for MinIO or moto; none: AWS itself)
  keys       AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN); none: the AWS
             SDK's default chain (config files, instance metadata)
  region     AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1
The endpoint is always passed to `S3FileSystem(endpoint_override=...)` explicitly: a filesystem
that pyarrow derives from a bare `s3://` URI only knows the endpoint where the AWS SDK finds it
in the environment, and a Ray process without that variable would silently talk to AWS.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional
from urllib.parse import urlsplit

import tenacity

from vae_service.core.errors import one_line

if TYPE_CHECKING:
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)

ENDPOINT_VARS = ("VAE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"
# What a process needs in its environment to reach the same S3 storage (Ray workers get these).
ENV_VARS = ENDPOINT_VARS + REGION_VARS + ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE")

CHECK_ATTEMPTS = 4
CHECK_BACKOFF_S = (0.5, 4.0)  # exponential: 0.5 s, 1 s, 2 s … capped at 4 s between attempts
CHECK_CONNECT_TIMEOUT_S = 3.0
# Errors that retrying cannot fix: the store answered and said no.
_PERMANENT_MARKERS = ("ACCESS_DENIED", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT_MATCH", "response code: 403",
                      "response code: 400", "response code: 301")



def _pafs():
    """pyarrow's filesystems, imported on first use: the processes that only name a store (the
    `vae` CLI's quick commands, the queue's client) are spared pyarrow's 0.1 s import."""
    import pyarrow.fs

    return pyarrow.fs


class StorageError(Exception):
    """Storage is misconfigured or out of reach; the message is one line, without secrets."""


@dataclass(frozen=True, eq=False)
class Location:
    """A path on a pyarrow filesystem. `path` never has a scheme (`bucket/prefix` on S3)."""

    filesystem: pafs.FileSystem
    path: str
    scheme: str = ""  # "s3", or "" for the local filesystem
    endpoint: str = ""  # for messages: the S3 endpoint URL (no credentials) or "AWS S3"

    def __iter__(self):  # `fs, path = resolve(uri)`
        return iter((self.filesystem, self.path))

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.path}" if self.scheme else self.path

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0] if self.scheme else ""

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> "Location":
        return self.at(posixpath.dirname(self.path))

    def join(self, *parts: str) -> "Location":
        return self.at(posixpath.join(self.path, *parts))

    def at(self, path: str) -> "Location":
        """Another path on the same filesystem (e.g. one that Ray reports)."""
        return replace(self, path=path.rstrip("/") or path)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"


def resolve(uri: str | os.PathLike) -> Location:
    """`s3://bucket/prefix` → the S3 filesystem and `bucket/prefix`; anything else is a local
    path (absolute, `~` expanded, like before S3 existed)."""
    text = str(uri)
    if re.match(r"^s3a?:/[^/]", text):  # `s3://b/p` after a trip through pathlib.Path
        text = text.replace(":/", "://", 1)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" not in text:
        return Location(_pafs().LocalFileSystem(), str(Path(text).expanduser().resolve()))
    scheme, rest = text.split("://", 1)
    if scheme.lower() not in ("s3", "s3a"):
        raise StorageError(f"{text}: unsupported storage scheme {scheme}:// (use a path or s3://bucket/prefix)")
    path = "/".join(part for part in rest.split("/") if part)
    if not path:
        raise StorageError(f"{text}: no bucket in the URI (s3://bucket/prefix)")
    endpoint = s3_endpoint()
    return Location(s3_filesystem(), path, "s3", _display_endpoint(endpoint))


def s3_endpoint() -> Optional[str]:
    for name in ENDPOINT_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def s3_filesystem(*, connect_timeout: Optional[float] = None, max_attempts: Optional[int] = None) -> pafs.S3FileSystem:
    """An S3FileSystem for the endpoint, keys and region in the environment (module docstring)."""
    options: dict = {"region": _first_env(REGION_VARS) or DEFAULT_REGION}
    endpoint = s3_endpoint()
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StorageError(f"S3 endpoint {_display_endpoint(endpoint)!r}: expected http(s)://host[:port]")
        options["scheme"] = parts.scheme
        options["endpoint_override"] = parts.netloc.rsplit("@", 1)[-1]
    access_key, secret_key = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        options.update(access_key=access_key, secret_key=secret_key, session_token=os.environ.get("AWS_SESSION_TOKEN") or None)
    if os.environ.get("AWS_CA_BUNDLE") and options.get("scheme", "https") == "https":
        options["tls_ca_file_path"] = os.environ["AWS_CA_BUNDLE"]
    if connect_timeout is not None:
        options["connect_timeout"] = connect_timeout
    if max_attempts is not None:
        options["retry_strategy"] = _pafs().AwsStandardS3RetryStrategy(max_attempts=max_attempts)
    return _pafs().S3FileSystem(**options)


def check_reachable(location: Location) -> None:
    """For S3: the bucket answers (HeadBucket), with bounded retries; else a clear StorageError.
    Local storage needs no check."""
    if location.is_local:
        return
    bucket, endpoint = location.bucket, location.endpoint
    # One attempt per call inside pyarrow, so the retries (and the time they take) are ours.
    probe = s3_filesystem(connect_timeout=CHECK_CONNECT_TIMEOUT_S, max_attempts=1)

    def note_retry(state: tenacity.RetryCallState) -> None:
        log.info("s3://%s at %s: attempt %d failed (%s); retrying", bucket, endpoint,
                    state.attempt_number, reason(state.outcome.exception()))

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(CHECK_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=CHECK_BACKOFF_S[0], max=CHECK_BACKOFF_S[1]),
        retry=tenacity.retry_if_exception(_is_transient),
        before_sleep=note_retry,
        reraise=True,
    )
    try:
        info = retrying(probe.get_file_info, bucket)
    except OSError as exc:
        if _is_transient(exc):
            raise StorageError(f"s3://{bucket}: unreachable at {endpoint} after {CHECK_ATTEMPTS} attempts: {reason(exc)}") from None
        raise StorageError(f"s3://{bucket}: refused at {endpoint}: {reason(exc)}") from None
    if info.type == _pafs().FileType.NotFound:
        raise StorageError(f"s3://{bucket}: no such bucket at {endpoint} (create it first)")


def make_dirs(location: Location) -> None:
    location.filesystem.create_dir(location.path, recursive=True)


def exists(location: Location) -> bool:
    return location.filesystem.get_file_info(location.path).type != _pafs().FileType.NotFound


def delete_file(location: Location) -> None:
    """Removes one file; nothing happens when it is not there."""
    try:
        location.filesystem.delete_file(location.path)
    except FileNotFoundError:
        pass


def delete_dir(location: Location) -> None:
    """Removes a directory and everything under it; nothing happens when it is not there."""
    try:
        location.filesystem.delete_dir(location.path)
    except FileNotFoundError:
        pass


def is_dir(location: Location) -> bool:
    return location.filesystem.get_file_info(location.path).type == _pafs().FileType.Directory


def write_text(location: Location, text: str) -> None:
    with location.filesystem.open_output_stream(location.path) as stream:
        stream.write(text.encode("utf-8"))


def read_text(location: Location) -> str:
    with location.filesystem.open_input_stream(location.path) as stream:
        return stream.read().decode("utf-8")


def read_json(location: Location) -> dict:
    return json.loads(read_text(location))


def list_dirs(location: Location, prefix: str = "") -> list[Location]:
    """The directories directly under `location` whose names start with `prefix`, by name
    (none if `location` does not exist)."""
    selector = _pafs().FileSelector(location.path, recursive=False, allow_not_found=True)
    found = [
        location.at(info.path)
        for info in location.filesystem.get_file_info(selector)
        if info.type == _pafs().FileType.Directory and info.base_name.startswith(prefix)
    ]
    return sorted(found, key=lambda found_dir: found_dir.name)


def list_checkpoints(run_dir: Location) -> list[Location]:
    """The `checkpoint_*` directories directly under a run directory, by name."""
    return list_dirs(run_dir, "checkpoint_")


def upload_dir(local_dir: str | os.PathLike, destination: Location) -> None:
    """Copies a local directory's contents to `destination` (created if missing)."""
    make_dirs(destination)
    _pafs().copy_files(
        str(local_dir), destination.path,
        source_filesystem=_pafs().LocalFileSystem(), destination_filesystem=destination.filesystem,
        # Multi-threaded uploads to S3 can hang in pyarrow (apache/arrow#32372; Ray does the same).
        use_threads=destination.is_local,
    )


def download_dir(source: Location, local_dir: str | os.PathLike) -> Path:
    """Copies a directory's contents from storage into `local_dir` (created if missing)."""
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    _pafs().copy_files(source.path, str(local), source_filesystem=source.filesystem, destination_filesystem=_pafs().LocalFileSystem())
    return local


@contextmanager
def local_copy(source: Location) -> Iterator[Path]:
    """A local directory with `source`'s files: the directory itself when local, else a
    temporary download that is removed afterwards."""
    if source.is_local:
        yield Path(source.path)
        return
    tmp = tempfile.mkdtemp(prefix="vae-storage-")
    try:
        yield download_dir(source, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def writing_dir(destination: Location) -> Iterator[Path]:
    """A local directory to write files into that end up at `destination`: the directory
    itself when local, else a temporary one uploaded when the block ends without an error."""
    if destination.is_local:
        make_dirs(destination)
        yield Path(destination.path)
        return
    tmp = tempfile.mkdtemp(prefix="vae-storage-")
    try:
        yield Path(tmp)
        upload_dir(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_env(names: tuple[str, ...]) -> Optional[str]:
    return next((os.environ[n].strip() for n in names if os.environ.get(n, "").strip()), None)


def _display_endpoint(endpoint: Optional[str]) -> str:
    """The endpoint for messages, without any user:password@ part; AWS when none is set."""
    if not endpoint:
        return "AWS S3"
    parts = urlsplit(endpoint)
    if parts.username or parts.password:
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
    return endpoint


def is_storage_failure(text: str) -> bool:
    """Whether an error's text is pyarrow's S3 client giving up (Ray Train wraps the OSError)."""
    return "AWS Error " in text


def reason(exc: BaseException | str) -> str:
    """pyarrow's error as one line, e.g. `curlCode: 7, Could not connect to server`."""
    text = one_line(exc).split("AWS Error ", 1)[-1]  # drop "When getting information for bucket 'b': "
    return text.split("; Details:", 1)[0]  # curl's restatement of the same thing


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not any(marker in str(exc) for marker in _PERMANENT_MARKERS)
