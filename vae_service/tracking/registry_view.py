"""The read side of the model registry, for `vae models …`, `vae sample|interpolate|encode`.

Listing models, one model's versions with their aliases and the key metrics of each version's
source run, moving an alias, and opening a model URI as a VAE (downloaded into a temporary
directory that is removed afterwards). Every user mistake — no tracking store, an unknown
model, alias or version — raises `ModelNotFound` with a message that says what exists.
Registry stages are deprecated in MLflow 3: only aliases are used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from vae_service.core.checkpoint import load_model
from vae_service.core.model import VAE
from vae_service.tracking.mlflow_run import client, tracking_uri
from vae_service.tracking.model_store import ModelNotFound, model_directory
from vae_service.tracking.model_store import promote as _promote

KEY_METRICS = ("val_neg_elbo", "test_neg_elbo", "active_units")
PAGE = 100


@dataclass
class ModelSummary:
    name: str
    latest_version: Optional[int]
    aliases: dict[str, int]
    last_updated: Optional[datetime]
    version_count: int


@dataclass
class VersionView:
    version: int
    aliases: list[str]
    created: Optional[datetime]
    status: str
    run_id: Optional[str]
    run_status: Optional[str] = None  # FINISHED, FAILED, … or "missing"
    metrics: dict[str, Optional[float]] = field(default_factory=dict)


@dataclass
class ModelView:
    name: str
    description: str
    aliases: dict[str, int]
    last_updated: Optional[datetime]
    versions: list[VersionView]  # newest first


def timestamp(ms: Optional[int]) -> Optional[datetime]:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


def require_store() -> None:
    """A local SQLite store that does not exist is a mistake (wrong directory), not an empty
    registry; MLflow would silently create an empty one, so check first."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    if path.is_file():
        return
    hint = ("set MLFLOW_TRACKING_URI, or run from the directory where `vae run` ran"
            if not os.environ.get("MLFLOW_TRACKING_URI") else "check MLFLOW_TRACKING_URI")
    raise ModelNotFound(f"no MLflow tracking store at {path} ({hint})")


def _name_filter(name: str) -> str:
    quote = '"' if "'" in name else "'"
    return f"name = {quote}{name}{quote}"


def _all_registered_models() -> list:
    mlflow = client()
    models, token = [], None
    while True:
        page = mlflow.search_registered_models(max_results=PAGE, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def _versions(name: str) -> list:
    mlflow = client()
    versions, token = [], None
    while True:
        page = mlflow.search_model_versions(_name_filter(name), max_results=PAGE, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _unknown_model(name: str) -> ModelNotFound:
    names = sorted(m.name for m in _all_registered_models())
    return ModelNotFound(f"no registered model '{name}'; models: {', '.join(names) or 'none yet'}")


def _registered_model(name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client().get_registered_model(name)
    except MlflowException:
        raise _unknown_model(name) from None


def list_models() -> list[ModelSummary]:
    """Every registered model, by name."""
    require_store()
    summaries = []
    for model in sorted(_all_registered_models(), key=lambda m: m.name):
        numbers = [int(v.version) for v in _versions(model.name)]
        summaries.append(ModelSummary(
            name=model.name,
            latest_version=max(numbers) if numbers else None,
            aliases={alias: int(version) for alias, version in model.aliases.items()},
            last_updated=timestamp(model.last_updated_timestamp),
            version_count=len(numbers),
        ))
    return summaries


def show_model(name: str) -> ModelView:
    """One model's versions (newest first), their aliases, and their source runs' key metrics."""
    from mlflow.exceptions import MlflowException

    require_store()
    model = _registered_model(name)
    aliases = {alias: int(version) for alias, version in model.aliases.items()}
    mlflow = client()
    runs: dict[str, object] = {}
    views = []
    for version in sorted(_versions(name), key=lambda v: int(v.version), reverse=True):
        number = int(version.version)
        view = VersionView(
            version=number,
            aliases=sorted(a for a, v in aliases.items() if v == number),
            created=timestamp(version.creation_timestamp),
            status=str(version.status),
            run_id=version.run_id or None,
        )
        if view.run_id:
            if view.run_id not in runs:
                try:
                    runs[view.run_id] = mlflow.get_run(view.run_id)
                except MlflowException:
                    runs[view.run_id] = None
            run = runs[view.run_id]
            if run is None:
                view.run_status = "missing"
            else:
                view.run_status = run.info.status if run.info.lifecycle_stage != "deleted" else "deleted"
                view.metrics = {key: run.data.metrics.get(key) for key in KEY_METRICS}
        views.append(view)
    return ModelView(
        name=model.name,
        description=model.description or "",
        aliases=aliases,
        last_updated=timestamp(model.last_updated_timestamp),
        versions=views,
    )


def promote(name: str, version: int, alias: str) -> Optional[int]:
    """Points `alias` of `name` at `version`; returns the version it pointed at before (if any)."""
    from mlflow.exceptions import MlflowException

    require_store()
    model = _registered_model(name)
    previous = model.aliases.get(alias)
    try:
        _promote(name, version, alias)
    except MlflowException as exc:  # e.g. a reserved or malformed alias name
        raise ModelNotFound(f"cannot set alias @{alias}: {exc.message.splitlines()[0]}") from None
    return int(previous) if previous is not None else None


def _check_uri(model_uri: str) -> None:
    """A registry or run URI needs an existing store (MLflow would quietly create an empty one);
    model_store reports unknown names, versions and aliases."""
    if Path(model_uri).expanduser().is_dir():
        return
    if model_uri.startswith(("models:", "runs:")):
        require_store()


@contextlib.contextmanager
def open_model(model_uri: str) -> Iterator[VAE]:
    """The VAE behind any model URI (see model_store), loaded on the CPU in eval mode.

    Registry and run URIs are downloaded into a temporary directory removed on exit; a local
    directory is read in place.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _check_uri(model_uri)
    with tempfile.TemporaryDirectory(prefix="vae-model-") as tmp:
        directory = model_directory(model_uri, into=Path(tmp))
        try:
            vae = load_model(directory)
        except Exception as exc:  # a damaged or foreign directory: safetensors, JSON, shapes
            raise ModelNotFound(f"{model_uri}: cannot load the model: {_one_line(exc)}") from None
        yield vae


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
