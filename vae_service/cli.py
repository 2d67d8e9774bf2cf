"""The `vae` command line.

Exit codes: 0 success, 1 the job failed (e.g. a non-finite loss), 2 bad input (spec, flags,
missing data), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vae_service.core.spec import TrainSpec
from vae_service.core.spec_loading import SpecError, load_spec

app = typer.Typer(
    name="vae",
    help="Train variational autoencoders on Ray from YAML job specs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

SET_HELP = "Override a spec field, e.g. --set optim.epochs=2 (value read as YAML). Repeatable."


def _fail(message: str, code: int) -> None:
    err.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True)
    raise typer.Exit(code)


def _load_or_exit(path: Path, overrides: List[str]) -> TrainSpec:
    try:
        return load_spec(path, overrides)
    except SpecError as exc:
        _fail(str(exc), 2)
        raise  # unreachable; keeps type checkers happy


@app.command()
def validate(
    specs: List[Path] = typer.Argument(..., help="Spec files to check."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check job specs: exit 0, or 2 with one 'path.to.field: reason' line per problem."""
    problems = 0
    for path in specs:
        try:
            load_spec(path, set_)
            err.print(f"{path}: ok", markup=False, highlight=False, emoji=False, soft_wrap=True)
        except SpecError as exc:
            problems += 1
            err.print(str(exc), markup=False, highlight=False, emoji=False, soft_wrap=True)
    raise typer.Exit(2 if problems else 0)


@app.command()
def schema() -> None:
    """Print the JSON Schema of job specs (for editors: yaml-language-server)."""
    print(json.dumps(spec_json_schema(), indent=2))


def spec_json_schema() -> dict:
    schema = TrainSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vae-service job spec"
    return schema


@app.command()
def run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the outcome on stdout."),
    # A str, not a Path: Path("s3://b/run") would collapse to "s3:/b/run".
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue a run directory (a path or s3://bucket/prefix/run) from its latest checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train the spec on Ray Train (a local Ray unless RAY_ADDRESS is set)."""
    spec = _load_or_exit(spec_path, set_)
    # Imported here: Ray and torch take seconds to import, and validate/schema need neither.
    from vae_service.core.data import DataError, locate_mnist
    from vae_service.training.runner import TrainingError, TrainingInterrupted, run_training

    try:
        locate_mnist(spec.data.root, spec.data.download)  # fail fast, before Ray starts
    except DataError as exc:
        _fail(f"data: {exc}", 2)
    err.print(f"[bold]vae run[/] {spec.name}: {spec.model.arch} latent {spec.model.latent_dim}, "
              f"{spec.objective.kind} β={spec.objective.beta}, {spec.optim.epochs} epochs, "
              f"{spec.resources.num_workers} worker(s)")
    try:
        result = run_training(spec, resume_dir=str(resume) if resume else None, console=err, show_progress=not quiet)
    except TrainingError as exc:
        _fail(f"error: {exc}", 1)
    except TrainingInterrupted as exc:
        _fail(f"interrupted: checkpoints are kept; continue with `vae run {spec_path} --resume {exc}`", 130)
    _print_summary(result)
    if json_output:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")


def _print_summary(result) -> None:
    table = Table(title="run summary", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.to_json()["metrics"].items():
        if value is None:
            continue
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    table.add_row("epochs", str(result.epochs_completed))
    table.add_row("run dir", result.run_dir)
    table.add_row("model", result.model_dir)
    err.print(table)

# ---------------------------------------------------------------------------------------------
# models: the registry, and what a model draws (sample, interpolate, encode)
#
# mlflow, torch and matplotlib are imported inside the commands: validate/schema need none.

MODEL_URI_HELP = ("models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a directory "
                  "with model.safetensors + config.json.")
MAX_SAMPLES = 1024
MAX_STEPS = 100
METHODS = ("linear", "slerp")

models_app = typer.Typer(
    name="models",
    help="The model registry (MLflow; aliases such as @champion, no stages): list, show, promote.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Unknown models, aliases, versions, missing data or an unreachable store: one line, exit 2."""
    from mlflow.exceptions import MlflowException

    from vae_service.core.data import DataError
    from vae_service.tracking.model_store import ModelNotFound

    try:
        yield
    except ModelNotFound as exc:
        _fail(str(exc), 2)
    except DataError as exc:
        _fail("data: " + " ".join(str(exc).split("\n")), 2)
    except MlflowException as exc:
        _fail(f"mlflow: {_first_line(exc.message) or type(exc).__name__}", 2)


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "—"


def _aliases(aliases: dict) -> str:
    return ", ".join(f"@{alias}→{version}" for alias, version in sorted(aliases.items())) or "—"


def _metric(value) -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:,.2f}"


@models_app.command("list")
def models_list() -> None:
    """Registered models: latest version, aliases, last update."""
    from vae_service.tracking.mlflow_run import tracking_uri
    from vae_service.tracking.registry_view import list_models

    with _user_errors():
        models = list_models()
    if not models:
        err.print(f"no registered models in {tracking_uri()}", markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title="registered models")
    table.add_column("name", overflow="fold")
    table.add_column("latest version", justify="right")
    table.add_column("versions", justify="right")
    table.add_column("aliases", overflow="fold")
    table.add_column("last updated (UTC)")
    for model in models:
        latest = str(model.latest_version) if model.latest_version is not None else "—"
        table.add_row(escape(model.name), latest, str(model.version_count), escape(_aliases(model.aliases)), _when(model.last_updated))
    Console(highlight=False).print(table)


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """A model's versions with their aliases, the key metrics of each source run, the run id."""
    from vae_service.tracking.registry_view import show_model

    with _user_errors():
        model = show_model(name)
    # Narrow headers and an unwrapped run id: it stays whole (copyable) in an 80-column terminal.
    table = Table(title=escape(f"{model.name}  (aliases: {_aliases(model.aliases)})"), box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ver", justify="right")
    table.add_column("aliases", overflow="fold")
    table.add_column("val\n−ELBO", justify="right")
    table.add_column("test\n−ELBO", justify="right")
    table.add_column("active\nunits", justify="right")
    table.add_column("source run", no_wrap=True, min_width=32)
    for version in model.versions:
        run = version.run_id or "—"
        if version.run_status and version.run_status != "FINISHED":
            run = f"{run}\n({version.run_status.lower()})"
        table.add_row(
            str(version.version),
            escape(" ".join(f"@{alias}" for alias in version.aliases) or "—"),
            _metric(version.metrics.get("val_neg_elbo")),
            _metric(version.metrics.get("test_neg_elbo")),
            _metric(version.metrics.get("active_units")),
            run,
        )
    out = Console(highlight=False)
    out.print(table)
    if model.description:
        out.print(model.description, markup=False)


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="The version the alias should point at (e.g. 3)."),
    alias: str = typer.Option("champion", "--alias", "-a", help="The alias to move."),
) -> None:
    """Point an alias (default @champion) at a version; the alias moves from wherever it was."""
    number = version[1:] if version[:1] in ("v", "V") else version
    if not number.isdigit() or int(number) < 1:
        _fail(f"VERSION must be a positive number, got {version!r}", 2)
    from vae_service.tracking.registry_view import promote

    with _user_errors():
        previous = promote(name, int(number), alias)
    if previous is None:
        message = f"@{alias} → {name} version {int(number)} (new alias)"
    elif previous == int(number):
        message = f"@{alias} already points at {name} version {previous}"
    else:
        message = f"@{alias}: {name} version {previous} → {int(number)}"
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def _check_output(path: Path) -> Path:
    """Fails before any work when the PNG cannot be written there."""
    if path.suffix.lower() != ".png":
        _fail(f"--output {path}: the output is a PNG; give a file name ending in .png", 2)
    if path.is_dir():
        _fail(f"--output {path}: is a directory", 2)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        _fail(f"--output {path}: {ancestor} is not a directory", 2)
    if not os.access(ancestor, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        _fail(f"--output {path}: not writable", 2)
    return path


def _save(fig, path: Path) -> None:
    from vae_service.tracking.figures import save_png

    try:
        save_png(fig, path)
    except OSError as exc:
        _fail(f"--output {path}: cannot write: {exc.strerror or exc}", 2)


def _test_split():
    """The MNIST test set (found via data.root defaults / $VAE_DATA_DIR; never downloaded here)."""
    from vae_service.core.data import load_mnist

    return load_mnist(None, download=False, val_fraction=0.0).test


def _check_index(test, index: int, flag: str) -> None:
    if not 0 <= index < len(test):
        _fail(f"{flag} {index}: the MNIST test set has {len(test):,} images (indices 0–{len(test) - 1})", 2)


def _check_fits(vae, test, model_uri: str) -> None:
    shape = tuple(test.images.shape[1:])
    if tuple(vae.config.image_shape) != shape:
        _fail(f"{model_uri}: the model takes images of shape {tuple(vae.config.image_shape)}, "
              f"MNIST test images are {shape}", 2)


@app.command()
def sample(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    n: int = typer.Option(64, "-n", "--count", help=f"How many samples (1–{MAX_SAMPLES})."),
    output: Path = typer.Option(Path("samples.png"), "--output", "-o", help="The PNG to write."),
    seed: int = typer.Option(0, "--seed", help="Seed of the codes z ~ N(0, I)."),
) -> None:
    """A grid of decoder means for codes z drawn from the prior N(0, I)."""
    if not 1 <= n <= MAX_SAMPLES:
        _fail(f"-n {n}: the number of samples must be between 1 and {MAX_SAMPLES}", 2)
    if not 0 <= seed < 2**63:
        _fail(f"--seed {seed}: must be between 0 and 2**63 - 1", 2)
    _check_output(output)
    from vae_service.tracking.figures import prior_samples
    from vae_service.tracking.registry_view import open_model

    with _user_errors(), open_model(model_uri) as vae:
        fig = prior_samples(vae, n=n, seed=seed)
    _save(fig, output)
    err.print(f"wrote {output}: {n} samples from the prior of {model_uri} (seed {seed})",
              markup=False, highlight=False, soft_wrap=True)


@app.command()
def interpolate(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    from_index: int = typer.Option(..., "--from-index", help="Index of image A in the MNIST test set."),
    to_index: int = typer.Option(..., "--to-index", help="Index of image B in the MNIST test set."),
    steps: int = typer.Option(10, "--steps", help=f"Decoded codes from μ_A to μ_B inclusive (2–{MAX_STEPS})."),
    method: str = typer.Option("linear", "--method", help="linear or slerp (spherical)."),
    output: Path = typer.Option(Path("interpolation.png"), "--output", "-o", help="The PNG to write."),
) -> None:
    """A strip of decoded codes on the path between two test images' posterior means."""
    if not 2 <= steps <= MAX_STEPS:
        _fail(f"--steps {steps}: must be between 2 and {MAX_STEPS}", 2)
    if method not in METHODS:
        _fail(f"--method {method}: must be one of {', '.join(METHODS)}", 2)
    _check_output(output)
    from vae_service.tracking.figures import interpolation
    from vae_service.tracking.registry_view import open_model

    with _user_errors():
        test = _test_split()
    _check_index(test, from_index, "--from-index")
    _check_index(test, to_index, "--to-index")
    with _user_errors(), open_model(model_uri) as vae:
        _check_fits(vae, test, model_uri)
        fig = interpolation(vae, test.images[from_index], test.images[to_index], steps=steps, method=method)
    _save(fig, output)
    labels = int(test.labels[from_index]), int(test.labels[to_index])
    err.print(f"wrote {output}: {method} interpolation, test image {from_index} (a {labels[0]}) → "
              f"{to_index} (a {labels[1]}), {steps} steps, {model_uri}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def encode(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    index: int = typer.Option(..., "--index", help="Index of the image in the MNIST test set."),
    json_output: bool = typer.Option(False, "--json", help='Print {"index","label","mu","sigma"} as JSON on stdout.'),
) -> None:
    """The posterior q(z|x) of one test image: μ and σ per latent dimension."""
    import torch

    from vae_service.tracking.figures import encode_means
    from vae_service.tracking.registry_view import open_model

    with _user_errors():
        test = _test_split()
    _check_index(test, index, "--index")
    with _user_errors(), open_model(model_uri) as vae:
        _check_fits(vae, test, model_uri)
        mu, logvar = encode_means(vae, test.images[index : index + 1])
    mu, sigma = mu[0], torch.exp(0.5 * logvar[0])
    label = int(test.labels[index])
    if json_output:
        payload = {"index": index, "label": label, "mu": mu.tolist(), "sigma": sigma.tolist()}
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - logvar[0])
    table = Table(title=escape(f"q(z|x) of MNIST test image {index} (a {label}), {model_uri}"))
    table.add_column("dim", justify="right")
    table.add_column("μ", justify="right")
    table.add_column("σ", justify="right")
    table.add_column("KL to N(0,1) [nats]", justify="right")
    for j in range(len(mu)):
        table.add_row(f"z{j + 1}", f"{float(mu[j]):+.4f}", f"{float(sigma[j]):.4f}", f"{float(kl[j]):.4f}")
    Console(highlight=False).print(table)


# ---------------------------------------------------------------------------------------------
# compare: the article's autoencoder | KL only | VAE, trained and drawn side by side


@app.command()
def compare(
    spec_paths: Optional[List[Path]] = typer.Argument(
        None, metavar="SPEC",
        help="Three specs, one each with objective.kind ae, kl_only, vae (any order). Default: "
        "jobs/mnist-ae-2d.yaml jobs/mnist-klonly-2d.yaml jobs/mnist-2d.yaml.",
    ),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP + " Applies to all three specs."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the outcome on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train the plain autoencoder, the KL-only model and the VAE, then log their latent spaces
    side by side on a parent MLflow run (the three runs nest under it)."""
    from vae_service.tracking import comparison

    paths = list(spec_paths) if spec_paths else comparison.default_spec_paths()
    try:
        specs = comparison.load_comparison_specs(paths, set_)
    except SpecError as exc:
        _fail(str(exc), 2)
    from vae_service.core.data import DataError, locate_mnist
    from vae_service.training.runner import TrainingError, TrainingInterrupted

    try:
        for spec in specs.values():
            locate_mnist(spec.data.root, spec.data.download)  # fail fast, before Ray starts
    except DataError as exc:
        _fail(f"data: {exc}", 2)
    for note in comparison.comparability_warnings(specs):
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    try:
        result = comparison.run_comparison(specs, console=err, show_progress=not quiet)
    except TrainingError as exc:
        _fail(f"error: {exc}", 1)
    except TrainingInterrupted as exc:
        _fail(f"interrupted: {exc} keeps its checkpoints (`vae run SPEC --resume {exc}`); run `vae compare` again to compare", 130)
    table = Table(title=f"{result.run_name} (MLflow run {result.mlflow_run_id})")
    table.add_column("model")
    for column in comparison.METRIC_COLUMNS[1:]:
        table.add_column(column, justify="right")
    for kind, row in result.metrics.items():
        table.add_row(comparison.LABELS[kind], *(f"{row[c]:,.3f}" if isinstance(row[c], float) else str(row[c]) for c in comparison.METRIC_COLUMNS[1:]))
    err.print(table)
    err.print(f"figure: {result.figure}", markup=False, highlight=False, soft_wrap=True)
    err.print(f"files:  {result.out_dir}", markup=False, highlight=False, soft_wrap=True)
    if json_output:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
