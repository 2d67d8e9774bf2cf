"""`vae models …`, `vae sample`, `vae interpolate`, `vae encode`: the registry and what a model draws."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vae_service.cli.common import app, err, fail, read_test_split
from vae_service.core import metrics as M
from vae_service.core.errors import one_line
from vae_service.core.spec import CHAMPION

#
# MLflow (through tracking/), torch and matplotlib are imported inside the commands: validate/schema need none.

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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Unknown models, aliases, versions, missing data or an unreachable store: one line, exit 2."""
    from vae_service.core.data import DataError
    from vae_service.tracking.mlflow_run import tracking_errors
    from vae_service.tracking.registry import ModelNotFound

    refused = tracking_errors()
    try:
        yield
    except ModelNotFound as exc:
        fail(str(exc), 2)
    except DataError as exc:
        fail("data: " + " ".join(str(exc).split("\n")), 2)
    except refused as exc:
        fail(f"mlflow: {one_line(exc, first_line=True)}", 2)


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "—"


def _aliases(aliases: dict) -> str:
    return ", ".join(f"@{alias}→{version}" for alias, version in sorted(aliases.items())) or "—"


def _metric(value) -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.2f}"


SORT_HELP = ("Sort by a metric or numeric tag, best first: e.g. test_neg_elbo, active_units, nll, mig "
             "(short for eval_nll, eval_mig), beta.")
# Columns of `vae models show`, when some version has the number: (key, header).
SHOWN = ((M.VAL_NEG_ELBO, "val\n−ELBO"), (M.TEST_NEG_ELBO, "test\n−ELBO"), (M.ACTIVE_UNITS, "active\nunits"),
         (M.eval_metric(M.NLL), "IS-NLL"), (M.eval_metric(M.MIG), "MIG"), (M.eval_metric(M.FACTORVAE), "Factor\nVAE"),
         (M.eval_metric(M.DCI), "DCI"))


def _sorted(items: list, numbers, sort_by: Optional[str], what: str) -> list:
    """`items` best first by the metric `sort_by` (`numbers(item)` gives each one's); those
    without it last. The name may leave out eval_ (mig → eval_mig)."""
    if sort_by is None:
        return items
    names = {key for item in items for key in numbers(item)}
    key = sort_by if sort_by in names else M.eval_metric(sort_by)
    if key not in names:
        fail(f"--sort-by {sort_by}: no {what} has it; known: {', '.join(sorted(names)) or 'none'}", 2)
    sign = -1 if M.higher_is_better(key) else 1
    return sorted(items, key=lambda item: (key not in numbers(item), sign * numbers(item).get(key, 0.0)))


@models_app.command("list")
def models_list(sort_by: Optional[str] = typer.Option(None, "--sort-by", metavar="METRIC", help=SORT_HELP + " Compares latest versions.")) -> None:
    """Registered models: latest version (what it is, its metrics), aliases, last update."""
    from vae_service.tracking.mlflow_run import tracking_uri
    from vae_service.tracking.registry import list_models

    with user_errors():
        models = list_models()
    if not models:
        err.print(f"no registered models in {tracking_uri()}", markup=False, highlight=False, soft_wrap=True)
        return
    models = _sorted(models, lambda model: model.metrics, sort_by, "latest version")
    table = Table(title="registered models")
    table.add_column("name", overflow="fold")
    table.add_column("latest", justify="right")
    table.add_column("versions", justify="right")
    table.add_column("aliases", overflow="fold")
    table.add_column("last updated (UTC)")
    if sort_by:
        table.add_column(sort_by, justify="right", no_wrap=True)
    for model in models:
        latest = str(model.latest_version) if model.latest_version is not None else "—"
        row = [escape(model.name), latest, str(model.version_count), escape(_aliases(model.aliases)), _when(model.last_updated)]
        if sort_by:
            row.append(_metric(model.metrics.get(sort_by, model.metrics.get(M.eval_metric(sort_by)))))
        table.add_row(*row)
    out = Console(highlight=False)
    out.print(table)
    for model in models:  # what each latest version is, below the table: whole lines in any terminal
        if model.description:
            out.print(f"{model.name} v{model.latest_version}: {model.description}", markup=False, soft_wrap=True)


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="Registered model name."),
    sort_by: Optional[str] = typer.Option(None, "--sort-by", metavar="METRIC", help=SORT_HELP + " Default: newest first."),
) -> None:
    """A model's versions: what each is, its aliases, key and eval_* metrics, its source run."""
    from vae_service.tracking.registry import show_model

    with user_errors():
        model = show_model(name)
    versions = _sorted(model.versions, lambda version: version.metrics, sort_by, "version")
    columns = [(key, header) for key, header in SHOWN if any(key in v.metrics for v in versions)]
    table = Table(title=escape(f"{model.name}  (aliases: {_aliases(model.aliases)})"), box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ver", justify="right", no_wrap=True)
    table.add_column("aliases", overflow="fold")
    for _, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for version in versions:
        table.add_row(str(version.version), escape(" ".join(f"@{alias}" for alias in version.aliases) or "—"),
                      *(_metric(version.metrics.get(key)) for key, _ in columns))
    out = Console(highlight=False)
    out.print(table)
    # One line per version below the table: the run id stays whole (copyable) in any terminal.
    for version in versions:
        status = f" ({version.run_status.lower()})" if version.run_status and version.run_status != "FINISHED" else ""
        out.print(f"v{version.version}  run {version.run_id or '—'}{status}", markup=False, soft_wrap=True)
        if version.description:
            out.print(f"    {version.description}", markup=False, soft_wrap=True)
    if model.description:
        out.print(model.description, markup=False)


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="The version the alias should point at (e.g. 3)."),
    alias: str = typer.Option(CHAMPION, "--alias", "-a", help="The alias to move."),
) -> None:
    """Point an alias (default @champion) at a version; the alias moves from wherever it was."""
    number = version[1:] if version[:1] in ("v", "V") else version
    if not number.isdigit() or int(number) < 1:
        fail(f"VERSION must be a positive number, got {version!r}", 2)
    from vae_service.tracking.registry import promote

    with user_errors():
        previous = promote(name, int(number), alias)
    if previous is None:
        message = f"@{alias} → {name} version {int(number)} (new alias)"
    elif previous == int(number):
        message = f"@{alias} already points at {name} version {previous}"
    else:
        message = f"@{alias}: {name} version {previous} → {int(number)}"
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def _check_output(path: Path, npy: bool = False) -> Path:
    """Fails before any work when the PNG (or, with `npy`, the .npy array) cannot be written there."""
    if path.suffix.lower() not in ((".png", ".npy") if npy else (".png",)):
        also = " (or, from a model of feature vectors, a .npy array)" if npy else ""
        fail(f"--output {path}: the output is a PNG{also}; give a file name ending in .png", 2)
    if path.is_dir():
        fail(f"--output {path}: is a directory", 2)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        fail(f"--output {path}: {ancestor} is not a directory", 2)
    if not os.access(ancestor, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"--output {path}: not writable", 2)
    return path


def _save(fig, path: Path) -> None:
    from vae_service.viz.canvas import save_png

    try:
        save_png(fig, path)
    except OSError as exc:
        fail(f"--output {path}: cannot write: {exc.strerror or exc}", 2)


def _save_array(array, path: Path) -> None:
    import numpy as np

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array, allow_pickle=False)
    except OSError as exc:
        fail(f"--output {path}: cannot write: {exc.strerror or exc}", 2)


@dataclass(frozen=True)
class _TestData:
    """The test split of the data a model was trained on, and what messages call it."""

    split: Any  # core.data.ImageSplit: uint8 images, or standardised float vectors
    item: str  # one of them: "MNIST test image", "test item"
    items: str  # all of them: "MNIST test images", "test items"
    whole: str  # the split: "the MNIST test set", "the test split of data/x.npy"
    unit: str = "images"  # what it counts: images or items

    def __len__(self) -> int:
        return len(self.split)

    def label(self, index: int) -> str:
        """What its label says, as a suffix such as " (digit 7)"; empty for an item without one."""
        code = int(self.split.labels[index])
        if code < 0:
            return ""
        names = self.split.label_names
        return f" ({self.split.label_kind} {names[code] if code < len(names) else code})"


def _mnist_test() -> _TestData:
    """The MNIST test set (found via data.root defaults / $VAE_DATA_DIR; never downloaded here):
    for models whose config.json holds no training spec (saved before it was recorded)."""
    from vae_service.core.data import load_mnist

    split = load_mnist(None, download=False, val_fraction=0.0).test
    return _TestData(split, "MNIST test image", "MNIST test images", "the MNIST test set")


def _test_data(config: dict) -> _TestData:
    """The test split of the data the model was trained on (its config.json's spec): a named
    data set's test set, or the test share of your own data (read through Ray Data)."""
    from vae_service.core import from_spec
    from vae_service.core.data import DataError

    if "spec" not in config:
        return _mnist_test()
    try:
        spec = from_spec.trained_with(config)
    except DataError:  # a spec this version cannot read: the MNIST test set, as before specs were recorded
        return _mnist_test()
    split = read_test_split(spec)  # a named data set's test set; at most FIGURE_ITEMS of your own data
    if not spec.data.own:
        from vae_service.core.data import IDX_DATASETS

        title = IDX_DATASETS[spec.data.dataset].title if spec.data.dataset in IDX_DATASETS else "dSprites"
        return _TestData(split, f"{title} test image", f"{title} test images", f"the {title} test set")
    return _TestData(split, "test item", "test items", f"the test split of {spec.data.source}", "items")


def _check_index(test: _TestData, index: int, flag: str) -> None:
    if len(test) == 0:
        fail(f"{flag} {index}: {test.whole} is empty", 2)
    if not 0 <= index < len(test):
        fail(f"{flag} {index}: {test.whole} has {len(test):,} {test.unit} (indices 0–{len(test) - 1})", 2)


def _check_fits(vae, test: _TestData, model_uri: str) -> None:
    shape = tuple(test.split.images.shape[1:])
    if tuple(vae.config.image_shape) != shape:
        kind = "vectors" if vae.config.takes_vectors else "images"
        fail(f"{model_uri}: the model takes {kind} of shape {tuple(vae.config.image_shape)}, "
             f"{test.items} are {shape}", 2)


@app.command()
def sample(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    n: int = typer.Option(64, "-n", "--count", help=f"How many samples (1–{MAX_SAMPLES})."),
    output: Path = typer.Option(Path("samples.png"), "--output", "-o",
                                help="The PNG to write; for a model of feature vectors, a .npy array (n, features)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the codes z ~ N(0, I)."),
) -> None:
    """A grid of decoder means for codes z drawn from the prior N(0, I) (in colour for RGB
    models); for a model of feature vectors, the decoded vectors in the data's own units, as .npy."""
    if not 1 <= n <= MAX_SAMPLES:
        fail(f"-n {n}: the number of samples must be between 1 and {MAX_SAMPLES}", 2)
    if not 0 <= seed < 2**63:
        fail(f"--seed {seed}: must be between 0 and 2**63 - 1", 2)
    _check_output(output, npy=True)
    from vae_service.tracking.registry import open_model_and_config

    with user_errors(), open_model_and_config(model_uri) as (vae, config):
        wants_array = output.suffix.lower() == ".npy"
        if vae.config.takes_vectors:
            if not wants_array:
                fail(f"{model_uri} was trained on feature vectors: prior samples are vectors, not images; "
                     f"write them as an array with --output NAME.npy", 2)
            array, note = _vector_samples(vae, config, n, seed)
            _save_array(array, output)
            err.print(f"wrote {output}: {n} samples from the prior of {model_uri} (seed {seed}), an array of shape "
                      f"{array.shape}{note}", markup=False, highlight=False, soft_wrap=True)
            return
        if wants_array:
            fail(f"--output {output}: {model_uri} draws images; give a file name ending in .png", 2)
        from vae_service.viz.figures import prior_samples

        fig = prior_samples(vae, n=n, seed=seed)
    _save(fig, output)
    err.print(f"wrote {output}: {n} samples from the prior of {model_uri} (seed {seed})",
              markup=False, highlight=False, soft_wrap=True)


def _vector_samples(vae, config: dict, n: int, seed: int):
    """Decoder means for n codes z ~ N(0, I), de-standardised with the training split's mean and
    std (as the model's config.json records them); returns (float32 array (n, D), a note)."""
    import numpy as np

    from vae_service.core.preprocessing import Preprocessing
    from vae_service.viz.latents import decoder_means, prior_codes

    x = decoder_means(vae, prior_codes(n, vae.config.latent_dim, seed)).numpy().astype(np.float64)
    prep = Preprocessing.of_model_config(config)
    features = x.shape[1]
    if len(prep.mean) != features or len(prep.std) != features:
        return x.astype(np.float32), " (standardised units: the model records no mean and std)"
    return (x * np.asarray(prep.std) + np.asarray(prep.mean)).astype(np.float32), ""


@app.command()
def interpolate(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    from_index: int = typer.Option(..., "--from-index", help="Index of image A in the model's test data (MNIST's test set for MNIST models)."),
    to_index: int = typer.Option(..., "--to-index", help="Index of image B in the model's test data."),
    steps: int = typer.Option(10, "--steps", help=f"Decoded codes from μ_A to μ_B inclusive (2–{MAX_STEPS})."),
    method: str = typer.Option("linear", "--method", help="linear or slerp (spherical)."),
    output: Path = typer.Option(Path("interpolation.png"), "--output", "-o", help="The PNG to write."),
) -> None:
    """A strip of decoded codes on the path between two test images' posterior means (the test
    split of the data the model was trained on)."""
    if not 2 <= steps <= MAX_STEPS:
        fail(f"--steps {steps}: must be between 2 and {MAX_STEPS}", 2)
    if method not in METHODS:
        fail(f"--method {method}: must be one of {', '.join(METHODS)}", 2)
    _check_output(output)
    from vae_service.tracking.registry import open_model_and_config
    from vae_service.viz.figures import interpolation

    with user_errors(), open_model_and_config(model_uri) as (vae, config):
        if vae.config.takes_vectors:
            fail(f"{model_uri} was trained on feature vectors: an interpolation decodes to vectors, not images; "
                 f"use `vae encode` for an item's posterior", 2)
        test = _test_data(config)
        _check_index(test, from_index, "--from-index")
        _check_index(test, to_index, "--to-index")
        _check_fits(vae, test, model_uri)
        fig = interpolation(vae, test.split.images[from_index], test.split.images[to_index], steps=steps, method=method)
    _save(fig, output)
    err.print(f"wrote {output}: {method} interpolation, {test.item} {from_index}{test.label(from_index)} → "
              f"{to_index}{test.label(to_index)}, {steps} steps, {model_uri}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def encode(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    index: int = typer.Option(..., "--index", help="Index of the item in the model's test data (MNIST's test set for MNIST models)."),
    json_output: bool = typer.Option(False, "--json", help='Print {"index","label","mu","sigma"} as JSON on stdout (label −1: none).'),
) -> None:
    """The posterior q(z|x) of one test item (of the data the model was trained on): μ and σ per
    latent dimension."""
    import torch

    from vae_service.core.objective import kl_per_dim
    from vae_service.tracking.registry import open_model_and_config
    from vae_service.viz.latents import encode_means

    with user_errors(), open_model_and_config(model_uri) as (vae, config):
        test = _test_data(config)
        _check_index(test, index, "--index")
        _check_fits(vae, test, model_uri)
        mu, logvar = encode_means(vae, test.split.images[index : index + 1])
    mu, sigma = mu[0], torch.exp(0.5 * logvar[0])
    label = int(test.split.labels[index])
    if json_output:
        payload = {"index": index, "label": label, "mu": mu.tolist(), "sigma": sigma.tolist()}
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    kl = kl_per_dim(mu, logvar[0])
    table = Table(title=escape(f"q(z|x) of {test.item} {index}{test.label(index)}, {model_uri}"))
    table.add_column("dim", justify="right")
    table.add_column("μ", justify="right")
    table.add_column("σ", justify="right")
    table.add_column("KL to N(0,1) [nats]", justify="right")
    for j in range(len(mu)):
        table.add_row(f"z{j + 1}", f"{float(mu[j]):+.4f}", f"{float(sigma[j]):.4f}", f"{float(kl[j]):.4f}")
    Console(highlight=False).print(table)
