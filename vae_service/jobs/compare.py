"""The compare job: the article's three objectives trained and drawn side by side.

Jeremy Jordan's "Variational autoencoders" contrasts what the encoder does to the latent space
under three objectives:
  ae        reconstruction only: separated class clusters with gaps, on a large scale
  kl_only   the KL term only: one blob at the origin, the decoder can only learn the mean image
  vae       both: a dense, smooth space of roughly N(0, I) scale with the classes in regions

A comparison is a job of its own: a parent MLflow run (and a `compare-<time>/` directory under
the VAE spec's storage) that the three train jobs nest under, one after another on one Ray; on
it the three-panel scatter of test-set μ, the reconstructions and a metrics table
(`vae_service.viz.comparison` draws them, without Ray or MLflow).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from vae_service import storage
from vae_service.core.checkpoint import load_model
from vae_service.core.interrupt import Interrupt
from vae_service.core.spec import ResourcesSpec, TrainSpec
from vae_service.core.spec_loading import SpecError, SpecProblem, dump_spec, load_spec
from vae_service.jobs.lifecycle import new_run_dir, storage_errors, tracked_run, write_spec
from vae_service.jobs.locations import run_name
from vae_service.jobs.outcome import Outcome
from vae_service.jobs.reporter import Reporter
from vae_service.jobs.train import RunResult, train
from vae_service.sources.holdout import model_test_split
from vae_service.tracking import compare_run
from vae_service.viz.comparison import KINDS, LABELS, METRICS_FILE, RECON_FILE, SCATTER_FILE, render_comparison

DEFAULT_SPECS = {"ae": "jobs/mnist-ae-2d.yaml", "kl_only": "jobs/mnist-klonly-2d.yaml", "vae": "jobs/mnist-2d.yaml"}
# What must agree across the three specs for the comparison to mean something.
COMPARABLE_SECTIONS = ("data", "model", "optim")


class CompareJob(BaseModel):
    """Three train specs keyed by objective kind, in panel order (ae, kl_only, vae)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["compare"] = "compare"
    name: str = "compare"
    specs: dict[str, TrainSpec]

    # ---- the job interface (core/job.py): the three runs one after another -----------------

    @property
    def storage_uri(self) -> str:
        return self.specs["vae"].storage.uri  # the comparison's own files go beside the VAE's run

    def train_specs(self) -> list[TrainSpec]:
        return list(self.specs.values())

    def trained_by_driver(self) -> None:
        return None

    def worker_resources(self) -> ResourcesSpec:
        return max((spec.resources for spec in self.specs.values()), key=lambda r: (r.num_workers, r.cpus_per_worker, r.gpus))

    def peak_workers(self) -> int:
        return max(spec.resources.num_workers for spec in self.specs.values())

    def with_absolute_paths(self) -> "CompareJob":
        return self._each(lambda spec: spec.with_absolute_paths())

    def with_queue_defaults(self, storage_uri: Optional[str], max_failures: int) -> "CompareJob":
        return self._each(lambda spec: spec.with_queue_defaults(storage_uri, max_failures))

    def read_locations(self) -> list[tuple[str, str]]:
        return self._fields(TrainSpec.read_locations)

    def write_locations(self) -> list[tuple[str, str]]:
        return self._fields(TrainSpec.write_locations)

    def registered_names(self) -> list[tuple[str, str]]:
        return self._fields(TrainSpec.registered_names)

    def _each(self, change: Callable[[TrainSpec], TrainSpec]) -> "CompareJob":
        return self.model_copy(update={"specs": {kind: change(spec) for kind, spec in self.specs.items()}})

    def _fields(self, of: Callable[[TrainSpec], list[tuple[str, str]]]) -> list[tuple[str, str]]:
        return [(f"specs.{kind}.{path}", value) for kind, spec in self.specs.items() for path, value in of(spec)]


@dataclass
class ComparisonResult:
    mlflow_run_id: str
    run_name: str
    out_dir: str  # <storage.uri>/<run name>: a local path, or s3://… for S3 storage
    metrics: dict[str, dict]
    runs: dict[str, RunResult] = field(default_factory=dict)

    def file(self, name: str) -> str:
        return posixpath.join(self.out_dir, name)

    @property
    def figure(self) -> str:
        return self.file(SCATTER_FILE)

    def to_json(self) -> dict:
        return {
            "mlflow_run_id": self.mlflow_run_id,
            "run_name": self.run_name,
            "runs": {kind: {**result.to_json(), "comparison": self.metrics[kind]} for kind, result in self.runs.items()},
            "figure": self.figure,
            "reconstructions": self.file(RECON_FILE),
            "metrics_csv": self.file(METRICS_FILE),
            "dir": self.out_dir,
        }


# ---------------------------------------------------------------------------------------------
# specs


def default_spec_paths(root: Optional[Path] = None) -> list[Path]:
    """The three default specs under `root`; without one, from ./jobs when it has them, else
    from the checkout this package runs from (so `vae compare` works from any directory)."""
    if root is None:
        checkout = Path(__file__).resolve().parents[2]
        root = Path.cwd() if all((Path.cwd() / DEFAULT_SPECS[k]).is_file() for k in KINDS) else checkout
    return [Path(root) / DEFAULT_SPECS[kind] for kind in KINDS]


def load_comparison(paths: Sequence[str | Path], overrides: Iterable[str] = ()) -> CompareJob:
    """Three spec files (any order), one per objective kind ae / kl_only / vae, with the same
    `--set` overrides applied to each. Raises SpecError when the kinds do not fit."""
    overrides = list(overrides)
    if len(paths) != len(KINDS):
        raise SpecError("compare", [SpecProblem("", f"needs exactly {len(KINDS)} specs (objective kinds ae, kl_only, vae), got {len(paths)}")])
    by_kind: dict[str, TrainSpec] = {}
    for path in paths:
        spec = load_spec(path, overrides)
        kind = spec.objective.kind
        if kind in by_kind:
            raise SpecError(str(path), [SpecProblem("objective.kind", f"{kind!r} is already given by another spec; need one each of ae, kl_only, vae")])
        by_kind[kind] = spec
    return CompareJob(specs={kind: by_kind[kind] for kind in KINDS})


def comparability_warnings(specs: Mapping[str, TrainSpec]) -> list[str]:
    """Sections that differ between the specs (the comparison still runs, but say so)."""
    reference = specs["vae"].model_dump(mode="json")
    notes = []
    for kind, spec in specs.items():
        data = spec.model_dump(mode="json")
        for section in COMPARABLE_SECTIONS:
            if data[section] != reference[section]:
                notes.append(f"{kind}: '{section}' differs from the VAE spec's")
        if spec.model.latent_dim != 2:
            notes.append(f"{kind}: latent_dim is {spec.model.latent_dim}, not 2 (the scatter shows the first two principal components)")
    return notes


# ---------------------------------------------------------------------------------------------
# train, nest, draw


def compare_job(job: CompareJob, out_dir: storage.Location, *, resume: bool, reporter: Reporter, interrupt: Interrupt,
                tags: Optional[dict] = None) -> Outcome:
    """Trains the three specs under one parent MLflow run, then logs the comparison on it and
    keeps its files in `out_dir`. Raises core.errors' JobErrors."""
    missing = [kind for kind in KINDS if kind not in job.specs]
    if missing:
        raise ValueError(f"missing specs for {', '.join(missing)}")
    vae_spec = job.specs["vae"]
    write_spec(out_dir, job)
    with tracked_run(out_dir, job, vae_spec.tracking.experiment, tags) as parent:
        results: dict[str, RunResult] = {}
        for kind in KINDS:
            spec = job.specs[kind]
            reporter.console.print(f"[bold]vae compare[/] {len(results) + 1}/{len(KINDS)}: {LABELS[kind]} ({spec.name})")
            results[kind] = train(spec, new_run_dir(spec.storage.uri, run_name(spec.name)), resume=False, reporter=reporter,
                                  interrupt=interrupt, tags=compare_run.member_tags(parent.run_id, kind))
            compare_run.record_member(parent.run_id, kind, results[kind].mlflow_run_id, dump_spec(spec))
        models = {}
        with storage_errors():
            for kind in KINDS:
                with storage.local_copy(storage.resolve(results[kind].model_dir)) as model_dir:
                    models[kind] = load_model(model_dir)
        # The whole test split (data.limit shortens training, not the comparison).
        whole = vae_spec.model_copy(update={"data": vae_spec.data.model_copy(update={"limit": None})})
        test = model_test_split(whole)
        with storage_errors(), storage.writing_dir(out_dir) as local_dir:  # local: the folder itself; S3: uploaded after
            artifacts = render_comparison(models, test, local_dir, binarize=vae_spec.data.binarize)
            compare_run.log_comparison(parent.run_id, artifacts.paths, artifacts.metrics)
    result = ComparisonResult(parent.run_id, out_dir.name, out_dir.uri, artifacts.metrics, results)
    return Outcome.succeeded("compare", result, run_dir=out_dir.uri, mlflow_run_id=parent.run_id, model_uri=None,
                             metrics={f"{kind}.{key}": value for kind, row in artifacts.metrics.items() for key, value in row.items()})
