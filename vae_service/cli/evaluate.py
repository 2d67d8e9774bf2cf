"""`vae eval`: a trained model's numbers beside a paper's table (IS-NLL, −ELBO, active units,
MIG, FactorVAE, DCI), printed, and recorded on the model's MLflow run and registry version."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vae_service.cli.common import app, err, fail, read_test_split, say
from vae_service.cli.models import MODEL_URI_HELP, user_errors
from vae_service.core import metrics as M

DEFAULT_SAMPLES = 1000  # Burda et al. report K = 5000: pass --nll-samples 5000 for their table
MAX_SAMPLES = 100_000
DEFAULT_IMAGES = 10_000  # MNIST's whole test set
LABELS = {  # result key → (row label, format)
    M.NLL: ("NLL, importance-sampled [nats]", "{:.2f}"),
    M.NEG_ELBO: ("−ELBO [nats]", "{:.2f}"),
    M.ACTIVE_UNITS: ("active units (Cov > 0.01)", "{}"),
    M.MIG: ("MIG", "{:.3f}"),
    M.FACTORVAE: ("FactorVAE score", "{:.3f}"),
    "factorvae_active_dims": ("  dimensions kept (std ≥ 0.05)", "{}"),
    M.DCI: ("DCI disentanglement", "{:.3f}"),
    "dci_completeness": ("  completeness", "{:.3f}"),
    "dci_informativeness": ("  informativeness (test accuracy)", "{:.3f}"),
}


def _metric_list(text: Optional[str], has_factors: bool) -> list[str]:
    if text is None:  # what this model's data allows, but dci (minutes of tree fitting) only when named
        return [*M.LIKELIHOOD_EVALS, *((M.MIG, M.FACTORVAE) if has_factors else ())]
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        fail(f"--metrics {text!r}: name at least one of {', '.join(M.EVAL_KEYS)}", 2)
    return list(dict.fromkeys(names))  # checked by core.evaluation.check_request


@app.command("eval")
def evaluate_command(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    nll_samples: int = typer.Option(DEFAULT_SAMPLES, "--nll-samples", "-k",
                                    help=f"Importance samples K per image (1–{MAX_SAMPLES:,}; Burda et al. use 5000)."),
    metrics: Optional[str] = typer.Option(
        None, "--metrics", help="Comma-separated: nll, elbo, au, mig, factorvae, dci. Default: nll,elbo,au, "
        "plus mig,factorvae for data with known factors (dSprites); dci (slow: ~5 min at 10,000 points) when named."),
    images: int = typer.Option(DEFAULT_IMAGES, "--images", help="Test images for nll/elbo/au (the first N)."),
    points: int = typer.Option(10_000, "--points", help="Sample size of mig/factorvae/dci (disentanglement_lib: 10,000)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the posterior samples and the factor draws."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table."),
    record: bool = typer.Option(True, "--record/--no-record",
                                help="Log eval_* metrics to the model's MLflow run and its registry version's tags."),
) -> None:
    """Evaluate a trained model: importance-sampled NLL (Burda et al. 2015), −ELBO and active units
    on its test data, binarised the way it was trained; MIG, FactorVAE and DCI on dSprites."""
    if not 1 <= nll_samples <= MAX_SAMPLES:
        fail(f"--nll-samples {nll_samples}: must be between 1 and {MAX_SAMPLES:,}", 2)
    if images < 1:
        fail(f"--images {images}: must be at least 1", 2)
    if points < 100:
        fail(f"--points {points}: must be at least 100", 2)
    if not 0 <= seed < 2**32:
        fail(f"--seed {seed}: must be between 0 and 2**32 - 1", 2)
    from vae_service.core import from_spec
    from vae_service.core.evaluation import EvaluationError, check_request, evaluate
    from vae_service.tracking.registry import open_model_and_config, record_evaluation

    with user_errors(), open_model_and_config(model_uri) as (vae, config):
        spec = from_spec.trained_with(config)
        factors = from_spec.factor_data(spec)
        chosen = _metric_list(metrics, factors is not None)
        try:
            check_request(chosen, factors is not None, spec.data.title)
        except EvaluationError as exc:
            fail(f"{model_uri}: {exc}", 2)
        test = read_test_split(spec, first=images, as_trained=True)
        with _progress() as bar:  # the request was checked above: evaluate raises no EvaluationError here
            result = evaluate(vae, chosen, test_images=test.images, binarize=spec.data.binarize, factors=factors,
                              nll_samples=nll_samples, points=points, seed=seed, progress=bar)
    result = {"model_uri": model_uri, "dataset": spec.data.title, "binarize": spec.data.binarize, **result}
    if record:
        with user_errors():
            source = record_evaluation(model_uri, result)  # it logs the numbers
        where = (f"{source.name} version {source.version} and run {source.run_id}" if source.name
                 else f"run {source.run_id}" if source.run_id else None)
        say(f"recorded eval_* metrics on {where}" if where else "not recorded: a directory has no MLflow run")
    if json_output:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    _print_table(result)


def _print_table(result: dict) -> None:
    table = Table(title=escape(f"{result['model_uri']} on {result['dataset']}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, (label, form) in LABELS.items():
        if key in result:
            table.add_row(label, form.format(result[key]))
    Console(highlight=False).print(table)
    notes = []
    if M.NLL in result:
        notes.append(f"K = {result['k']:,} importance samples on {result['n_images']:,} test images")
        if not result.get("binary_data"):
            notes.append("the data are not binary (grey levels, or a density: continuous Bernoulli or Gaussian): the NLL is not an NLL "
                         "of binary data and does not compare with binarised-MNIST tables")
    notes.append(f"{result['seconds']:.1f} s")
    say("; ".join(notes))


class _progress:
    """A progress bar per stage on stderr (nll counts images; the disentanglement metrics are
    one step each)."""

    def __enter__(self):
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)
        self.bar.__enter__()
        self.tasks: dict[str, int] = {}
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
