"""`vae validate`, `vae schema`, `vae run` and `vae compare`: specs and training."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from vae_service.cli.common import SET_HELP, app, err, fail, load_or_exit, say
from vae_service.core import metrics as M


@app.command()
def validate(
    specs: List[Path] = typer.Argument(..., help="Spec files to check."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check job specs: exit 0, or 2 with one 'path.to.field: reason' line per problem."""
    from vae_service.core.spec_loading import SpecError, load_spec

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
    from pydantic import TypeAdapter

    from vae_service.core.spec_loading import JobSpec

    schema = TypeAdapter(JobSpec).json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vae-service job spec"
    return schema


@app.command()
def run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the outcome on stdout."),
    # A str, not a Path: Path("s3://b/run") would collapse to "s3:/b/run".
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue a run or sweep directory (a path or s3://bucket/prefix/run) from its latest checkpoints."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train a spec on Ray Train, or run a sweep (Ray Tune + Optuna) of such runs.

    Uses a local Ray unless RAY_ADDRESS is set. A `kind: sweep` spec runs a search whose trials
    are Ray Train runs; --set reaches its base training fields through train.* (e.g. --set
    train.optim.epochs=1) and the search through sweep.* (e.g. --set sweep.num_samples=6)."""
    spec = load_or_exit(spec_path, set_)
    headline, print_summary = PRESENTATION[spec.kind]
    say(headline(spec))
    # Imported here: Ray and torch take seconds to import, and validate/schema need neither.
    from vae_service.jobs.warm import warm_a_worker

    warm_a_worker(spec)  # first: its imports run beside the driver's (joining a running cluster)
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    outcome = execute(spec, resume=str(resume) if resume else None, reporter=Reporter(err, progress="off" if quiet else "bar"))
    if outcome.error is not None and outcome.error.resume_dir:
        fail(f"interrupted: checkpoints are kept; continue with `vae run {spec_path} --resume {outcome.error.resume_dir}`", 130)
    if outcome.error is not None:
        fail(str(outcome.error), outcome.exit_code)
    print_summary(spec, outcome.result)
    if json_output:
        sys.stdout.write(json.dumps(outcome.result.to_json(), default=str) + "\n")
        sys.stdout.flush()  # before Ray's exit handlers run


def _sweep_headline(spec) -> str:
    sweep = spec.sweep
    search = "grid" if sweep.is_grid else f"Optuna {sweep.resolved_sampler}"
    return (f"vae run sweep {spec.name}: {sweep.trial_count()} trials ({search}"
            f"{', ASHA' if sweep.scheduler.kind == 'asha' else ''}) over {', '.join(sweep.space)}; "
            f"objectives {', '.join(sweep.objectives)}; {spec.train.optim.epochs} epochs each")


def _train_headline(spec) -> str:
    return (f"vae run {spec.name}: {spec.model.arch} latent {spec.model.latent_dim}, "
            f"{spec.objective.kind} β={spec.objective.beta}, {spec.optim.epochs} epochs, "
            f"{spec.resources.num_workers} worker(s)")


def _print_sweep_summary(spec, result) -> None:
    from vae_service.sweeps.progress import cell

    table = Table(title=f"sweep {spec.name}: parent MLflow run {result.mlflow_run_id}", caption="★ registered (best)   • on the Pareto front")
    table.add_column("", width=1)
    table.add_column("trial")
    table.add_column("state")
    for path in spec.sweep.space:
        table.add_column(path.rsplit(".", 1)[-1], justify="right")
    for column in ("ep", "−ELBO", "rate", "dist.", "AU"):
        table.add_column(column, justify="right")
    front = set(result.front)
    for trial in result.trials:
        mark = "★" if trial.trial_id == result.best else "•" if trial.trial_id in front else ""
        values = [cell(trial.params.get(path)) for path in spec.sweep.space]
        metrics = [cell(trial.metrics.get(k)) for k in (M.VAL_NEG_ELBO, M.VAL_KL, M.VAL_RECON, M.ACTIVE_UNITS)]
        table.add_row(mark, trial.trial_id, trial.state, *values, str(trial.epochs), *metrics)
    err.print(table)
    for trial in result.trials:
        if trial.error:
            say(f"trial {trial.trial_id} failed: {trial.error}")
    say(f"sweep dir: {result.sweep_dir}")
    say(f"best model: {result.model_uri or '— (no trial finished)'}")


def _print_summary(spec, result) -> None:
    table = Table(title="run summary", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.summary.items():
        if value is None:
            continue
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    table.add_row("epochs", str(result.epochs_completed))
    table.add_row("run dir", result.run_dir)
    table.add_row("model", result.model_dir)
    err.print(table)


def _encode_headline(spec) -> str:
    return f"vae run encode-dataset {spec.name}: {spec.data.source} through {spec.model} → {spec.output}"


def _print_encode_summary(spec, result) -> None:
    say(result.summary)


# What `vae run` says of a job before and after it runs, by kind.
PRESENTATION = {"train": (_train_headline, _print_summary), "sweep": (_sweep_headline, _print_sweep_summary),
                "encode-dataset": (_encode_headline, _print_encode_summary)}


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
    """Train the article's autoencoder, KL-only model and VAE; compare their latent spaces.

    The three runs nest under a parent MLflow run that holds their latent scatters side by
    side, reconstructions and a metrics table."""
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter
    from vae_service.core.spec_loading import SpecError
    from vae_service.jobs.compare import comparability_warnings, default_spec_paths, load_comparison
    from vae_service.viz.comparison import LABELS, METRIC_COLUMNS

    paths = list(spec_paths) if spec_paths else default_spec_paths()
    try:
        job = load_comparison(paths, set_)
    except SpecError as exc:
        fail(str(exc), 2)
    for note in comparability_warnings(job.specs):
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    outcome = execute(job, reporter=Reporter(err, progress="off" if quiet else "bar"))
    if outcome.error is not None and outcome.error.resume_dir:
        resume_dir = outcome.error.resume_dir
        fail(f"interrupted: {resume_dir} keeps its checkpoints (`vae run SPEC --resume {resume_dir}`); run `vae compare` again to compare", 130)
    if outcome.error is not None:
        fail(str(outcome.error), outcome.exit_code)
    result = outcome.result
    table = Table(title=f"{result.run_name} (MLflow run {result.mlflow_run_id})")
    table.add_column("model")
    for column in METRIC_COLUMNS[1:]:
        table.add_column(column, justify="right")
    for kind, row in result.metrics.items():
        table.add_row(LABELS[kind], *(f"{row[c]:,.3f}" if isinstance(row[c], float) else str(row[c]) for c in METRIC_COLUMNS[1:]))
    err.print(table)
    err.print(f"figure: {result.figure}", markup=False, highlight=False, soft_wrap=True)
    err.print(f"files:  {result.out_dir}", markup=False, highlight=False, soft_wrap=True)
    if json_output:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")
