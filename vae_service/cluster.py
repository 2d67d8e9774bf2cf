"""The Ray cluster this process works on: joining it (RAY_ADDRESS, else a local Ray started for
the process), its live nodes, this process's own node, and a worker started ahead for the
job's first task (start_a_worker). Plain Ray core, no Ray Train: the
CLI's data commands, the Train and Tune adapters and Ray Data's encoding all start here."""

from __future__ import annotations

import functools
import importlib
import os
import socket
import time
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vae_service.core.errors import BadInput


CONNECT_TIMEOUT_S = 5.0  # to reach RAY_ADDRESS's GCS port; Ray's own ray.init retries for minutes


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Connects to RAY_ADDRESS when set, else starts a local Ray for this process. An address
    where nothing answers is bad input at once (BadInput naming it), not a wait in ray.init."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        if address in _TOKEN_REFUSED:  # Ray spends 20 s finding that out: once per process
            raise BadInput(_token_refused_message(address))
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            if not _token_refused(exc):
                raise
            _TOKEN_REFUSED.add(address)
            raise BadInput(_token_refused_message(address)) from None
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


_TOKEN_REFUSED: set[str] = set()  # addresses whose cluster refused this process's token


def _token_refused(exc: BaseException) -> bool:
    """Whether Ray's failure to connect was the cluster refusing the token (Ray wraps it, the
    innermost error sometimes only as text)."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _token_refused_message(address: str) -> str:
    return (f"RAY_ADDRESS {address}: the Ray cluster there uses token authentication and refused this "
            "process's token; set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN_PATH, a file "
            "holding it, or RAY_AUTH_TOKEN)")


def _check_reachable(address: str) -> None:
    """Raises BadInput when `address` (host:port or ray://host:port; "auto" is Ray's to find)
    names a port where nothing accepts a connection within CONNECT_TIMEOUT_S."""
    reason = _unreachable(address)
    if reason:
        raise BadInput(f"RAY_ADDRESS {address}: no Ray cluster answers there ({reason}); "
                       "start one (`ray start --head`) or unset RAY_ADDRESS to use a local Ray")


@functools.lru_cache(maxsize=None)  # asked once per process (a job's warm worker, then the job)
def _unreachable(address: str) -> Optional[str]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
            return None
        except OSError as exc:  # refused at once while a head starts: try again until the deadline
            if time.monotonic() >= deadline:
                return exc.strerror or str(exc)
            time.sleep(0.5)


_warming: list[ray.ObjectRef] = []  # the import started ahead by this driver (start_a_worker), if any


@ray.remote(num_cpus=0)
def _import(module: str) -> int:
    try:
        importlib.import_module(module)
    except Exception:  # the task that waits for this imports it again, and fails with the reason
        pass
    return os.getpid()  # the warm process, for whoever wants to see which it is


def start_a_worker(module: str) -> ray.ObjectRef:
    """Starts a worker process of this Ray job importing `module` now, and returns at once (the
    task's result is the process id). A task that passes `warming()` as an argument waits for the
    import and then, Ray handing a job's idle worker process to its next task, runs in that process."""
    ensure_ray()
    _warming[:] = [_import.options(scheduling_strategy="DEFAULT").remote(module)]
    return _warming[0]


def warming() -> Optional[ray.ObjectRef]:
    return _warming[0] if _warming else None


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """Where the actors a driver talks to (progress, a sweep's ledger) go: its own node. Such an
    actor asks for no CPU, so Ray could place it on any worker node, and a worker node that dies
    (a killed container) would take it along and fail a run Ray Train itself survives."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def live_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster this process is connected to."""
    return [dict(node["Resources"]) for node in _alive()]


def this_node() -> dict[str, float]:
    """The total resources of the node this process runs on."""
    here = ray.get_runtime_context().get_node_id()
    return next(dict(node["Resources"]) for node in _alive() if node["NodeID"] == here)


def _alive() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]
