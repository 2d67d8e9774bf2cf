"""Models in MLflow: log (pickle-free), register with an alias, and load back by URI.

A model URI is `models:/name@alias`, `models:/name/3`, `runs:/<run id>/model`, or a local
directory holding model.safetensors + config.json. Registry stages are deprecated in MLflow 3:
only aliases are used.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from vae_service.core.checkpoint import CONFIG_FILE, MODEL_FILE, load_model
from vae_service.core.model import VAE
from vae_service.tracking.mlflow_run import client, tracking_uri

PYFUNC_SOURCE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"


class ModelNotFound(Exception):
    """The URI names no model; the message lists what exists."""


def log_model(run_id: str, model_dir: Path, vae: VAE) -> str:
    """Logs the pyfunc model (source file + safetensors + JSON) to the run; returns its URI."""
    mlflow.set_tracking_uri(tracking_uri())
    pixels = int(np.prod(vae.config.image_shape))
    example = np.zeros((2, pixels), dtype=np.float32)
    output = {f"mu_{j}": [0.0, 0.0] for j in range(1, vae.config.latent_dim + 1)}
    output.update({f"logvar_{j}": [0.0, 0.0] for j in range(1, vae.config.latent_dim + 1)})
    import pandas as pd

    signature = infer_signature(example, pd.DataFrame(output))
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_SOURCE),
            artifacts={"vae": str(model_dir)},
            signature=signature,
            # Explicit requirements: inferring them would load the model in a subprocess.
            pip_requirements=["torch", "safetensors", "numpy", "pandas", "mlflow"],
        )
        mlflow.set_tag("vae.model_uri", info.model_uri)
    return info.model_uri


def register(model_uri: str, name: str, alias: str) -> int:
    """Registers a logged model as a new version of `name` and points `alias` at it."""
    mlflow.set_registry_uri(tracking_uri())
    version = mlflow.register_model(model_uri, name)
    client().set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def promote(name: str, version: int, alias: str) -> None:
    """Moves `alias` to `version` (e.g. candidate → champion)."""
    mlflow_client = client()
    _require_version(name, version)
    mlflow_client.set_registered_model_alias(name, alias, str(version))


def _require_version(name: str, version: int) -> None:
    mlflow_client = client()
    try:
        mlflow_client.get_model_version(name, str(version))
    except MlflowException:
        raise ModelNotFound(_missing_message(name, f"version {version}")) from None


def _missing_message(name: str, what: str) -> str:
    mlflow_client = client()
    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in mlflow_client.search_registered_models())
        return f"no registered model '{name}'; models: {', '.join(names) or 'none yet'}"
    versions = sorted(int(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'"))
    aliases = ", ".join(f"@{a}→{v}" for a, v in sorted(model.aliases.items())) or "none"
    return f"'{name}' has no {what}; versions: {', '.join(map(str, versions)) or 'none'}; aliases: {aliases}"


def model_directory(model_uri: str, into: Optional[Path] = None) -> Path:
    """A local directory with model.safetensors + config.json for any supported URI."""
    local = Path(model_uri).expanduser()
    if local.is_dir():
        if not (local / MODEL_FILE).is_file() or not (local / CONFIG_FILE).is_file():
            raise ModelNotFound(f"{model_uri}: expected {MODEL_FILE} and {CONFIG_FILE} in the directory")
        return local
    if not model_uri.startswith(("models:/", "runs:/", "models:")):
        raise ModelNotFound(f"{model_uri}: not a model URI (models:/name@alias, models:/name/N, runs:/ID/model) or a directory")
    _check_registry_uri(model_uri)
    mlflow.set_tracking_uri(tracking_uri())
    target = into or Path(tempfile.mkdtemp(prefix="vae-model-"))
    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(target)))
    except MlflowException as exc:
        raise ModelNotFound(f"{model_uri}: {exc.message.splitlines()[0]}") from None
    found = next(root.rglob(MODEL_FILE), None)
    if found is None:
        raise ModelNotFound(f"{model_uri}: no {MODEL_FILE} in the model's artifacts")
    return found.parent


def _check_registry_uri(model_uri: str) -> None:
    """Turns an unknown name, alias or version into a message listing what exists."""
    if not model_uri.startswith("models:/"):
        return
    rest = model_uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        try:
            client().get_model_version_by_alias(name, alias)
        except MlflowException:
            raise ModelNotFound(_missing_message(name, f"alias @{alias}")) from None
    elif "/" in rest:
        name, version = rest.split("/", 1)
        if not version.isdigit():
            raise ModelNotFound(f"{model_uri}: the version must be a number")
        _require_version(name, int(version))
    elif rest and not rest.startswith("m-"):  # a bare name; MLflow would look for a logged-model id
        hint = f"version or alias in {model_uri} (use models:/{rest}/N or models:/{rest}@ALIAS)"
        raise ModelNotFound(_missing_message(rest, hint))


def load_vae(model_uri: str) -> VAE:
    return load_model(model_directory(model_uri))
