"""The `vae` command line (typer). One module per group of commands; this one wires them up."""

from vae_service.cli import train  # noqa: F401, I001  (registers the commands on `app`, in help order)
from vae_service.cli import models  # noqa: F401
from vae_service.cli import evaluate  # noqa: F401
from vae_service.cli import encode_dataset  # noqa: F401
from vae_service.cli import queue, server  # noqa: F401
from vae_service.cli.common import app
from vae_service.cli.train import spec_json_schema

__all__ = ["app", "main", "spec_json_schema"]


def main() -> None:
    from vae_service.environment import apply_process_defaults, quiet_libraries

    apply_process_defaults()  # the `vae` process is an entry point: set MLflow's defaults once
    quiet_libraries()
    app()
