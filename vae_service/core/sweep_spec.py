"""`kind: sweep`: a base training spec, a search space over its fields, and how to search.

    kind: sweep
    name: beta-sweep
    train: {...}                      # any `kind: train` spec (kind may be left out)
    sweep:
      space:                          # field path of the train spec → domain
        objective.beta: {loguniform: [0.25, 8]}
        model.latent_dim: {choice: [2, 8, 16]}
      num_samples: 8
      max_concurrent: 2
      objectives: [distortion, rate]  # or one, e.g. val_neg_elbo
      scheduler: {kind: asha, grace_period: 1, reduction_factor: 2}

Domains: `{loguniform: [lo, hi]}`, `{uniform: [lo, hi]}`, `{int: [lo, hi]}` (inclusive),
`{choice: [...]}` (sampled), `{grid: [...]}` (every value: a space made only of grids is run
exhaustively, `num_samples` times). Rate is the mean KL(q(z|x) ‖ p(z)) and distortion the mean
reconstruction NLL, both in nats on validation data.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Annotated, Any, Iterator, Literal, Optional, Union

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vae_service.core.metrics import END_OF_TRIAL_OBJECTIVES, FACTOR_EVALS, OBJECTIVE_MODES
from vae_service.core.spec import DATA_LOCATIONS, FACTOR_DATASETS, PositiveInt, ResourcesSpec, StrictModel, TrainSpec

# Every objective is a validation metric; rate and distortion are its two halves of −ELBO.
# Fields a sweep must not vary: they name or place the run rather than shape the model.
UNSWEEPABLE = {"kind", "name", "storage", "tracking", "resources"}
DEFAULT_NUM_SAMPLES = 8
# The most trials an all-grid space may make (grid points × num_samples); a server can lower it
# (VAE_MAX_GRID_POINTS), passed in the validation context under GRID_LIMIT.
MAX_GRID_POINTS = 10_000
GRID_LIMIT = "max_grid_points"
# Optuna seeds NumPy (below 2**32) with sweep.seed + the attempt number: leave room for attempts.
MAX_SWEEP_SEED = 2**31 - 1
NSGA2_MIN_TRIALS = 16  # two generations of 8: fewer, and multi-objective TPE samples better
SKIP_SPACE_CHECK = "skip_space_check"


class _Range(StrictModel):
    """Shared check of [lo, hi] bounds."""

    @staticmethod
    def _ordered(bounds: tuple, strict: bool) -> tuple:
        lo, hi = bounds
        if (lo >= hi) if strict else (lo > hi):
            raise ValueError(f"empty range: lo ({lo}) must be {'<' if strict else '<='} hi ({hi})")
        return bounds


class LogUniform(_Range):
    loguniform: tuple[float, float] = Field(description="[lo, hi], 0 < lo < hi: sampled uniformly in log space.")

    @field_validator("loguniform")
    @classmethod
    def _check(cls, bounds: tuple) -> tuple:
        if bounds[0] <= 0:
            raise ValueError(f"loguniform needs lo > 0 (got {bounds[0]})")
        return cls._ordered(bounds, strict=True)


class Uniform(_Range):
    uniform: tuple[float, float] = Field(description="[lo, hi], lo < hi.")

    @field_validator("uniform")
    @classmethod
    def _check(cls, bounds: tuple) -> tuple:
        return cls._ordered(bounds, strict=True)


class IntRange(_Range):
    int_: tuple[int, int] = Field(alias="int", description="[lo, hi], both included.")

    @field_validator("int_")
    @classmethod
    def _check(cls, bounds: tuple) -> tuple:
        return cls._ordered(bounds, strict=False)


class Choice(StrictModel):
    choice: list[Any] = Field(min_length=1, description="Values the sampler picks from.")


class Grid(StrictModel):
    grid: list[Any] = Field(min_length=1, description="Every value is tried.")


def _domain_tag(value: Any) -> Optional[str]:
    """The domain's kind: its one key in a spec, or its class once validated (serialising)."""
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return DOMAIN_TAGS.get(type(value))


DOMAIN_TAGS = {LogUniform: "loguniform", Uniform: "uniform", IntRange: "int", Choice: "choice", Grid: "grid"}

Domain = Annotated[
    Union[
        Annotated[LogUniform, Tag("loguniform")],
        Annotated[Uniform, Tag("uniform")],
        Annotated[IntRange, Tag("int")],
        Annotated[Choice, Tag("choice")],
        Annotated[Grid, Tag("grid")],
    ],
    Discriminator(
        _domain_tag,
        custom_error_type="domain",
        custom_error_message="a domain is one of {loguniform: [lo, hi]}, {uniform: [lo, hi]}, "
        "{int: [lo, hi]}, {choice: [...]}, {grid: [...]}",
    ),
]


def domain_values_to_check(domain: Any) -> list[Any]:
    """The values that must each make a valid train spec: the bounds, or every listed value."""
    if isinstance(domain, LogUniform):
        return list(domain.loguniform)
    if isinstance(domain, Uniform):
        return list(domain.uniform)
    if isinstance(domain, IntRange):
        return list(domain.int_)
    return list(domain.choice if isinstance(domain, Choice) else domain.grid)


class SchedulerSpec(StrictModel):
    kind: Literal["asha", "none"] = Field("none", description="asha: stop poor trials early (one objective only).")
    grace_period: PositiveInt = Field(1, description="ASHA: epochs every trial runs before it may be stopped.")
    reduction_factor: float = Field(2.0, gt=1.0, description="ASHA: keep 1/reduction_factor of trials per rung.")


class SweepSection(StrictModel):
    space: dict[str, Domain] = Field(min_length=1, description="Train-spec field path (e.g. objective.beta) → domain.")
    num_samples: Optional[PositiveInt] = Field(
        None, le=10_000,
        description=f"Trials to sample (default {DEFAULT_NUM_SAMPLES}); for an all-grid space: repeats of the grid (default 1).",
    )
    max_concurrent: PositiveInt = Field(2, description="Trials running at once (fewer if the cluster has no room).")
    objectives: list[Literal["val_neg_elbo", "distortion", "rate", "active_units", "nll", "mig", "factorvae", "dci"]] = Field(
        default_factory=lambda: ["val_neg_elbo"], min_length=1,
        description="One metric (single objective) or several (Pareto front). active_units, mig, factorvae and dci are "
        "maximised, the rest minimised. nll, mig, factorvae and dci are computed once, at a trial's end "
        "(the train spec's evaluation section); mig, factorvae and dci need dSprites.",
    )
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    sampler: Literal["auto", "tpe", "nsga2", "random"] = Field(
        "auto", description="Optuna sampler; auto: TPE, or NSGA-II for several objectives with at least "
        f"{NSGA2_MIN_TRIALS} trials (below that NSGA-II's second generation re-proposes its parents).",
    )
    seed: int = Field(0, ge=0, le=MAX_SWEEP_SEED,
                      description="Seed of the sampler (trial seeds come from train.optim.seed).")

    @field_validator("objectives", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError("objectives are listed twice")
        return value

    @property
    def is_grid(self) -> bool:
        return all(isinstance(d, Grid) for d in self.space.values())

    @property
    def modes(self) -> list[str]:
        return [OBJECTIVE_MODES[name] for name in self.objectives]

    @property
    def resolved_sampler(self) -> str:
        if self.sampler == "auto":
            several = len(self.objectives) > 1
            return "nsga2" if several and self.trial_count() >= NSGA2_MIN_TRIALS else "tpe"
        return self.sampler

    def trial_count(self) -> int:
        if self.is_grid:
            return math.prod(len(d.grid) for d in self.space.values()) * (self.num_samples or 1)
        return self.num_samples or DEFAULT_NUM_SAMPLES


class SweepSpec(StrictModel):
    """A search over a train spec: `kind: sweep`."""

    kind: Literal["sweep"] = "sweep"
    name: str = Field("sweep", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    train: TrainSpec = Field(default_factory=TrainSpec, description="The base training spec every trial starts from.")
    sweep: SweepSection

    @model_validator(mode="after")
    def _combinations(self, info: ValidationInfo) -> "SweepSpec":
        sweep = self.sweep
        if sweep.scheduler.kind == "asha":
            if len(sweep.objectives) > 1:
                raise ValueError("sweep.scheduler: asha stops trials on one metric; it cannot be used with several objectives")
            if sweep.scheduler.grace_period > self.train.optim.epochs:
                raise ValueError(f"sweep.scheduler.grace_period ({sweep.scheduler.grace_period}) exceeds "
                                 f"train.optim.epochs ({self.train.optim.epochs})")
        at_end = [name for name in sweep.objectives if name in END_OF_TRIAL_OBJECTIVES]
        if at_end and sweep.scheduler.kind == "asha":
            raise ValueError(f"sweep.scheduler: asha compares trials every epoch; {at_end[0]} is computed only at a trial's end")
        needs_factors = [name for name in sweep.objectives if name in FACTOR_EVALS]
        if needs_factors and self.train.data.dataset not in FACTOR_DATASETS:
            raise ValueError(f"sweep.objectives: {needs_factors[0]} needs data with known generative factors "
                             f"(train.data.dataset: {' or '.join(FACTOR_DATASETS)}), not {self.train.data.dataset}")
        grids = [isinstance(d, Grid) for d in sweep.space.values()]
        if any(grids) and not all(grids):
            raise ValueError("sweep.space: grid values cannot be mixed with sampled domains "
                             "(use choice for a sampled list, or make every domain a grid)")
        limit = min((info.context or {}).get(GRID_LIMIT, MAX_GRID_POINTS), MAX_GRID_POINTS)
        if sweep.is_grid and sweep.trial_count() > limit:  # counted, never listed
            points = math.prod(len(d.grid) for d in sweep.space.values())
            repeats = f" × num_samples {sweep.num_samples} = {sweep.trial_count():,}" if (sweep.num_samples or 1) > 1 else ""
            raise ValueError(f"sweep.space: the grid has {points:,} points{repeats}, over the limit of {limit:,} trials")
        for path, domain in sweep.space.items():
            if isinstance(domain, Choice) and any(isinstance(v, (list, dict)) for v in domain.choice):
                raise ValueError(f"sweep.space.{path}: choice values must be numbers, strings or booleans "
                                 "(Optuna samples them); use grid for lists")
        if not (info.context or {}).get(SKIP_SPACE_CHECK):
            problems = space_problems(self)
            if problems:
                raise ValueError("; ".join(f"{path}: {_text(reason)}" for path, reason in problems))
        return self

    # ---- the job interface (core/job.py): the base train spec's, its fields under `train.` ----

    @property
    def storage_uri(self) -> str:
        return self.train.storage.uri

    def train_specs(self) -> list[TrainSpec]:
        return [self.train]

    def trained_by_driver(self) -> None:
        return None

    def worker_resources(self) -> ResourcesSpec:
        return self.train.resources

    def peak_workers(self) -> int:
        """Every worker of up to max_concurrent trials at once (fewer when there are fewer trials)."""
        return min(self.sweep.max_concurrent, self.sweep.trial_count()) * self.train.resources.num_workers

    def with_absolute_paths(self) -> "SweepSpec":
        return self.model_copy(update={"train": self.train.with_absolute_paths()})

    def with_queue_defaults(self, storage_uri: Optional[str], max_failures: int) -> "SweepSpec":
        return self.model_copy(update={"train": self.train.with_queue_defaults(storage_uri, max_failures)})

    def read_locations(self) -> list[tuple[str, str]]:
        """The base spec's data, and every data place the search may choose."""
        sampled = [(f"sweep.space.{path}", str(value)) for path, domain in self.sweep.space.items()
                   if path in {f"data.{name}" for name in DATA_LOCATIONS}
                   for value in getattr(domain, "choice", None) or getattr(domain, "grid", None) or []]
        return [(f"train.{path}", value) for path, value in self.train.read_locations()] + sampled

    def write_locations(self) -> list[tuple[str, str]]:
        return [(f"train.{path}", value) for path, value in self.train.write_locations()]

    def registered_names(self) -> list[tuple[str, str]]:
        return [(f"train.{path}", value) for path, value in self.train.registered_names()]

    def trial_spec(self, config: dict[str, Any], trial_name: str) -> TrainSpec:
        """The base spec with one trial's values (keyed by field path) filled in."""
        data = self.train.model_dump(mode="json")
        for path, value in config.items():
            _assign(data, path, value)
        data["name"] = trial_name
        data["tracking"]["register_as"] = None  # only the sweep's best model is registered
        evaluated = data["evaluation"]["metrics"]  # end-of-trial objectives are computed by the trial
        evaluated += [name for name in self.sweep.objectives if name in END_OF_TRIAL_OBJECTIVES and name not in evaluated]
        return TrainSpec.model_validate(data)

    def grid_configs(self) -> Iterator[dict[str, Any]]:
        """Every combination of an all-grid space (in the order of the spec), one at a time."""
        paths = list(self.sweep.space)
        values = [self.sweep.space[p].grid for p in paths]
        return (dict(zip(paths, combo)) for combo in itertools.product(*values))


def _assign(data: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    section = data
    for key in keys[:-1]:
        section = section[key]
    section[keys[-1]] = value


def _field_exists(path: str) -> Optional[str]:
    """None if `path` names a leaf field of a train spec, else the reason it does not."""
    model: Any = TrainSpec
    keys = path.split(".")
    if keys[0] in UNSWEEPABLE:
        return f"{keys[0]} cannot be searched (it names or places the run)"
    for depth, key in enumerate(keys):
        fields = getattr(model, "model_fields", None)
        if fields is None or key not in fields:
            where = ".".join(keys[:depth]) or "a train spec"
            return f"unknown field path: {where} has no field {key!r}"
        annotation = fields[key].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, StrictModel) else None
    if model is not None:
        return "names a section, not a field"
    return None


def _text(reason: Any) -> str:
    return reason if isinstance(reason, str) else f"value {reason['input']!r} is refused: {reason['msg']}"


def space_problems(spec: SweepSpec) -> list[tuple[str, Any]]:
    """(field path, reason) for every search-space entry that cannot make a valid train spec:
    an unknown path (reason: a string), or a bound/value the field refuses, e.g. a negative β
    (reason: pydantic's error dict, with "input" set to the value)."""
    problems = []
    base = spec.train.model_dump(mode="json")
    for path, domain in spec.sweep.space.items():
        where = f"sweep.space.{path}"
        missing = _field_exists(path)
        if missing:
            problems.append((where, missing))
            continue
        for value in domain_values_to_check(domain):
            data = copy.deepcopy(base)
            _assign(data, path, value)
            try:
                TrainSpec.model_validate(data)
            except ValidationError as exc:
                problems.append((where, {**exc.errors()[0], "input": value}))
                break
    return problems

