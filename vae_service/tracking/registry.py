"""The model registry: where a trained VAE is published, and found again by URI.

Training logs each model pickle-free (the source of pyfunc_model.py, model.safetensors and a JSON
config) and may register it as a new version of a named model, with an alias; `vae models …`
lists, shows and promotes; `vae sample|interpolate|encode` open a model by URI. Accepted URIs:

    models:/NAME@ALIAS    models:/NAME/VERSION    runs:/RUN_ID/model    models:/m-<logged model id>
    or a local directory holding model.safetensors + config.json

Registry stages are deprecated in MLflow 3: only aliases are used. Every user mistake — no
tracking store, an unknown model, alias or version — raises `ModelNotFound` with a message that
says what exists.

Every MLflow call names the store explicitly (mlflow_run.client(), or the URI as an argument);
the one fluent call, logging the pyfunc model, runs inside mlflow_run.fluent_tracking.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from vae_service.core import metrics as M
from vae_service.core.errors import BadInput, one_line
from vae_service.core.checkpoint import CONFIG_FILE, MODEL_FILE, load_model, read_model_config
from vae_service.core.model import VAE
from vae_service.core.spec import alias_problem, model_name_problem
from vae_service.tracking import model_card
from vae_service.tracking.mlflow_run import client, fluent_tracking, tracking_uri

PYFUNC_SOURCE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"
PAGE = 100


class ModelNotFound(Exception):
    """The URI names no model; the message lists what exists."""


def all_pages(search, *args, **kwargs) -> list:
    """Every result of an MLflow `search_…(…, page_token=…)` call, following its page tokens."""
    results, token = [], None
    while True:
        page = search(*args, page_token=token, **kwargs)
        results.extend(page)
        token = page.token
        if not token:
            return results


# ---------------------------------------------------------------------------------------------
# publishing: log, register, promote


def log_model(run_id: str, model_dir: Path, vae: VAE) -> str:
    """Logs the pyfunc model (source file + safetensors + JSON) to the run, with its signature
    and an input example (two blank images); returns its URI (models:/m-<id>), also kept in the
    run's tag vae.model_uri."""
    import pandas as pd

    pixels = int(np.prod(vae.config.image_shape))
    example = np.zeros((2, pixels), dtype=np.float32)
    output = {f"mu_{j}": [0.0, 0.0] for j in range(1, vae.config.latent_dim + 1)}
    output.update({f"logvar_{j}": [0.0, 0.0] for j in range(1, vae.config.latent_dim + 1)})
    signature = infer_signature(example, pd.DataFrame(output))
    # pyfunc.log_model takes no tracking URI: it logs to the fluent API's active run.
    with fluent_tracking(tracking_uri()), mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_SOURCE),
            artifacts={"vae": str(model_dir)},
            signature=signature,
            input_example=example,
            # Explicit requirements: inferring them would load the model in a subprocess.
            pip_requirements=["torch", "safetensors", "numpy", "pandas", "mlflow"],
        )
    client().set_tag(run_id, "vae.model_uri", info.model_uri)
    return info.model_uri


def register(model_uri: str, name: str, alias: str) -> int:
    """Registers a logged model (models:/m-<id> or runs:/RUN_ID/model) as a new version of `name`
    (created if missing) and points `alias` at it; returns the version number. All or nothing:
    the name and alias are checked first (core.spec's rules, MLflow's own), and a failure after
    the version exists deletes it again, so a failed job leaves no registered version behind.

    What mlflow.register_model does, through our client: the version's source is the logged
    model's artifact location (with a local store, MLflow would resolve a models:/ source through
    the process-wide tracking URI), linked to the logged model and to the run that logged it.
    """
    problem = model_name_problem(name) or alias_problem(alias)
    if problem:
        raise BadInput(f"cannot register the model: {problem}")
    return _register_version(model_uri, name, alias)


def _register_version(model_uri: str, name: str, alias: str) -> int:
    mlflow_client = client()
    logged = _logged_model(model_uri)
    try:
        mlflow_client.create_registered_model(name)
        created = True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        created = False
    version = None
    try:
        description, tags = model_card.of_run(mlflow_client.get_run(logged.source_run_id))
        version = mlflow_client.create_model_version(
            name, source=logged.artifact_location, run_id=logged.source_run_id, model_id=logged.model_id,
            tags=tags, description=description,
        )
        mlflow_client.set_registered_model_alias(name, alias, version.version)
        # The logged model lists its registered versions (the MLflow UI shows them on its page).
        listed = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS, "[]")) + [{"name": name, "version": version.version}]
        mlflow_client.set_logged_model_tags(logged.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
    except Exception:
        with contextlib.suppress(MlflowException):  # undo; the original error is what matters
            if version is not None:
                mlflow_client.delete_model_version(name, version.version)
            if created and not _versions(name):  # (another job may have registered one meanwhile)
                mlflow_client.delete_registered_model(name)
        raise
    return int(version.version)


def _logged_model(model_uri: str):
    """The logged model behind models:/m-<id>, or behind runs:/RUN_ID/NAME (the newest model of
    that name the run logged)."""
    mlflow_client = client()
    if not model_uri.startswith("runs:/"):
        return mlflow_client.get_logged_model(model_uri.removeprefix("models:/"))
    run_id, _, name = model_uri.removeprefix("runs:/").partition("/")
    experiment = mlflow_client.get_run(run_id).info.experiment_id
    logged = [model for model in all_pages(mlflow_client.search_logged_models, [experiment], filter_string=f"name = '{name}'")
              if model.source_run_id == run_id]
    if not logged:
        raise ModelNotFound(f"{model_uri}: run {run_id} logged no model '{name}'")
    return max(logged, key=lambda model: model.creation_timestamp)


def promote(name: str, version: int, alias: str) -> Optional[int]:
    """Points `alias` of `name` at `version` (e.g. candidate → champion); returns the version it
    pointed at before (if any)."""
    require_store()
    previous = _registered_model(name).aliases.get(alias)
    _require_version(name, version)
    try:
        client().set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:  # e.g. a reserved or malformed alias name
        raise ModelNotFound(f"cannot set alias @{alias}: {one_line(exc, first_line=True)}") from None
    return int(previous) if previous is not None else None


# ---------------------------------------------------------------------------------------------
# what exists: the store, models, versions, aliases


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


def _registered_model(name: str):
    """The registered model `name`; if there is none, ModelNotFound listing the models there are."""
    mlflow_client = client()
    try:
        return mlflow_client.get_registered_model(name)
    except MlflowException:
        names = sorted(model.name for model in all_pages(mlflow_client.search_registered_models, max_results=PAGE))
        raise ModelNotFound(f"no registered model '{name}'; models: {', '.join(names) or 'none yet'}") from None


def _missing(name: str, what: str) -> ModelNotFound:
    """`name` has no `what` (a version, an alias): the error lists the versions and aliases it has."""
    aliases = ", ".join(f"@{a}→{v}" for a, v in sorted(_registered_model(name).aliases.items())) or "none"
    versions = ", ".join(map(str, sorted(int(v.version) for v in _versions(name)))) or "none"
    return ModelNotFound(f"'{name}' has no {what}; versions: {versions}; aliases: {aliases}")


def _require_version(name: str, version: int) -> None:
    try:
        client().get_model_version(name, str(version))
    except MlflowException:
        raise _missing(name, f"version {version}") from None


def _versions(name: str) -> list:
    quote = '"' if "'" in name else "'"
    return all_pages(client().search_model_versions, f"name = {quote}{name}{quote}", max_results=PAGE)


def timestamp(ms: Optional[int]) -> Optional[datetime]:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


@dataclass
class ModelSummary:
    name: str
    latest_version: Optional[int]
    aliases: dict[str, int]
    last_updated: Optional[datetime]
    version_count: int
    description: str = ""  # the latest version's card
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class VersionView:
    version: int
    aliases: list[str]
    created: Optional[datetime]
    status: str
    run_id: Optional[str]
    run_status: Optional[str] = None  # FINISHED, FAILED, … or "missing"
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    description: str = ""


def _numbers(tags: dict[str, str]) -> dict[str, float]:
    """The numeric tags of a version's card."""
    numbers = {}
    for key, value in tags.items():
        try:
            numbers[key] = float(value)
        except ValueError:
            continue
    return numbers


@dataclass
class ModelView:
    name: str
    description: str
    aliases: dict[str, int]
    last_updated: Optional[datetime]
    versions: list[VersionView]  # newest first


def list_models() -> list[ModelSummary]:
    """Every registered model, by name."""
    require_store()
    summaries = []
    for model in sorted(all_pages(client().search_registered_models, max_results=PAGE), key=lambda m: m.name):
        versions = _versions(model.name)
        latest = max(versions, key=lambda v: int(v.version), default=None)
        summaries.append(ModelSummary(
            name=model.name,
            latest_version=int(latest.version) if latest else None,
            aliases={alias: int(version) for alias, version in model.aliases.items()},
            last_updated=timestamp(model.last_updated_timestamp),
            version_count=len(versions),
            description=(latest.description or "") if latest else "",
            metrics=_numbers(latest.tags) if latest else {},
        ))
    return summaries


def show_model(name: str) -> ModelView:
    """One model's versions (newest first), their aliases, and their source runs' key metrics."""
    require_store()
    model = _registered_model(name)
    aliases = {alias: int(version) for alias, version in model.aliases.items()}
    mlflow_client = client()
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
                    runs[view.run_id] = mlflow_client.get_run(view.run_id)
                except MlflowException:
                    runs[view.run_id] = None
            run = runs[view.run_id]
            if run is None:
                view.run_status = "missing"
            else:
                view.run_status = run.info.status if run.info.lifecycle_stage != "deleted" else "deleted"
                view.metrics = {key: value for key, value in run.data.metrics.items()
                                if key in M.KEY or key.startswith(M.EVAL_PREFIX)}
        view.metrics.update(_numbers(version.tags))  # the card (survives a deleted run)
        view.description = version.description or ""
        views.append(view)
    return ModelView(
        name=model.name,
        description=model.description or "",
        aliases=aliases,
        last_updated=timestamp(model.last_updated_timestamp),
        versions=views,
    )


# ---------------------------------------------------------------------------------------------
# opening a model by URI


def model_directory(model_uri: str, into: Optional[Path] = None) -> Path:
    """A local directory with model.safetensors + config.json for any supported URI; registry
    and run URIs are downloaded `into` a directory (default: a new temporary one)."""
    local = Path(model_uri).expanduser()
    if local.is_dir():
        if not (local / MODEL_FILE).is_file() or not (local / CONFIG_FILE).is_file():
            raise ModelNotFound(f"{model_uri}: expected {MODEL_FILE} and {CONFIG_FILE} in the directory")
        return local
    if not model_uri.startswith(("models:/", "runs:/")):
        raise ModelNotFound(f"{model_uri}: not a model URI (models:/name@alias, models:/name/N, runs:/ID/model) or a directory")
    require_store()
    target = into or Path(tempfile.mkdtemp(prefix="vae-model-"))
    uri = tracking_uri()
    try:
        root = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=_artifact_location(model_uri), dst_path=str(target), tracking_uri=uri, registry_uri=uri
        ))
    except MlflowException as exc:
        raise ModelNotFound(f"{model_uri}: {one_line(exc, first_line=True)}") from None
    found = next(root.rglob(MODEL_FILE), None)
    if found is None:
        raise ModelNotFound(f"{model_uri}: no {MODEL_FILE} in the model's artifacts")
    return found.parent


def _artifact_location(model_uri: str) -> str:
    """Where a model URI's files are, looked up through our client (MLflow's own lookup of
    models:/ and runs:/ URIs goes through its process-wide URIs); an unknown name, alias or
    version raises ModelNotFound listing what exists."""
    if model_uri.startswith(("runs:/", "models:/m-")):
        return _logged_model(model_uri).artifact_location
    name, version = _registered_version(model_uri)
    return client().get_model_version_download_uri(name, str(version))


def _registered_version(model_uri: str) -> tuple[str, int]:
    """(name, version) of models:/NAME@ALIAS or models:/NAME/N."""
    rest = model_uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        try:
            return name, int(client().get_model_version_by_alias(name, alias).version)
        except MlflowException:
            raise _missing(name, f"alias @{alias}") from None
    if "/" in rest:
        name, version = rest.split("/", 1)
        if not version.isdigit():
            raise ModelNotFound(f"{model_uri}: the version must be a number")
        _require_version(name, int(version))
        return name, int(version)
    raise _missing(rest, f"version or alias in {model_uri} (use models:/{rest}/N or models:/{rest}@ALIAS)")


@dataclass
class ModelSource:
    """Where a model URI's model came from: its MLflow run and, for a registry URI, its version."""

    run_id: Optional[str] = None
    name: Optional[str] = None
    version: Optional[int] = None


def model_source(model_uri: str) -> ModelSource:
    if Path(model_uri).expanduser().is_dir():
        return ModelSource()  # a directory on disk: no run to record anything on
    require_store()
    if model_uri.startswith(("runs:/", "models:/m-")):
        return ModelSource(run_id=_logged_model(model_uri).source_run_id)
    name, version = _registered_version(model_uri)
    return ModelSource(run_id=client().get_model_version(name, str(version)).run_id or None, name=name, version=version)


def record_evaluation(model_uri: str, results: dict) -> ModelSource:
    """`vae eval`'s numbers as eval_* metrics on the model's run and, for a registry URI, in
    the version's tags and description (its card, rebuilt from the run)."""
    source = model_source(model_uri)
    if source.run_id is None:
        return source
    from mlflow.entities import Metric

    mlflow_client, now = client(), int(time.time() * 1000)
    numbers = {M.eval_metric(k): float(v) for k, v in results.items() if isinstance(v, (int, float))}
    mlflow_client.log_batch(source.run_id, metrics=[Metric(k, v, now, 0) for k, v in numbers.items()])
    if source.name is not None:
        description, tags = model_card.of_run(mlflow_client.get_run(source.run_id))
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(source.name, str(source.version), key, value)
        mlflow_client.update_model_version(source.name, str(source.version), description=description)
    return source


@contextlib.contextmanager
def open_model(model_uri: str) -> Iterator[VAE]:
    """The VAE behind any model URI, loaded on the CPU in eval mode.

    Registry and run URIs are downloaded into a temporary directory removed on exit; a local
    directory is read in place.
    """
    with open_model_and_config(model_uri) as (vae, _):
        yield vae


@contextlib.contextmanager
def open_model_and_config(model_uri: str) -> Iterator[tuple[VAE, dict]]:
    """The VAE and its config.json (the model config, and the spec and metrics of the job that
    trained it), as `open_model`."""
    with tempfile.TemporaryDirectory(prefix="vae-model-") as tmp:
        directory = model_directory(model_uri, into=Path(tmp))
        try:
            vae, config = load_model(directory), read_model_config(directory)
        except Exception as exc:  # a damaged or foreign directory: safetensors, JSON, shapes
            raise ModelNotFound(f"{model_uri}: cannot load the model: {one_line(exc, first_line=True)}") from None
        yield vae, config
