"""Shared pieces of the `vae` command line: the app, the error console, one-line failures.

Exit codes: 0 success, 1 the job failed (e.g. a non-finite loss), 2 bad input (spec, flags,
missing data), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.console import Console

app = typer.Typer(
    name="vae",
    help="Train variational autoencoders on Ray from YAML job specs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

SET_HELP = "Override a spec field, e.g. --set optim.epochs=2 (value read as YAML). Repeatable."


def fail(message: str, code: int) -> None:
    """Print one plain line on stderr and exit with `code` (no traceback for user mistakes)."""
    err.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True)
    raise typer.Exit(code)


def say(message: str) -> None:
    """One plain line on stderr (status, not data: stdout stays for --json)."""
    err.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True)


def load_or_exit(path: Path, overrides: List[str]):
    from vae_service.core.spec_loading import SpecError, load_spec  # pydantic and YAML: not for `vae --help`

    try:
        return load_spec(path, overrides)
    except SpecError as exc:
        fail(str(exc), 2)
        raise  # unreachable; keeps type checkers happy


def read_test_split(spec, first=None, as_trained=False):
    """The test split of the data a model was trained on (`spec` from its config.json:
    `sources.holdout.model_test_split`); your own data is read again through Ray Data (a local
    Ray unless RAY_ADDRESS is set) and split the same way, by content hash."""
    from vae_service.sources.holdout import model_test_split

    if spec.data.own:
        from vae_service.cluster import ensure_ray

        ensure_ray()
    return model_test_split(spec, first=first, as_trained=as_trained)
