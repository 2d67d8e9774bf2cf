"""The sweep spec in Ray Tune's and Optuna's terms: the parameter space, the searcher, the
scheduler. The only module that knows Optuna."""

from __future__ import annotations

from typing import Any, Optional

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from vae_service.core.sweep_spec import (
    OBJECTIVE_METRICS,
    Choice,
    Grid,
    IntRange,
    LogUniform,
    SweepSpec,
    Uniform,
)


def tune_domain(domain: Any):
    if isinstance(domain, LogUniform):
        return tune.loguniform(*domain.loguniform)
    if isinstance(domain, Uniform):
        return tune.uniform(*domain.uniform)
    if isinstance(domain, IntRange):
        lo, hi = domain.int_
        return tune.randint(lo, hi + 1)  # Tune's upper bound is exclusive; ours is inclusive
    if isinstance(domain, Choice):
        return tune.choice(domain.choice)
    if isinstance(domain, Grid):
        return tune.grid_search(domain.grid)
    raise TypeError(f"unknown domain {domain!r}")


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Field path → Tune domain; a trial's config is then {field path: value}."""
    return {path: tune_domain(domain) for path, domain in spec.sweep.space.items()}


def metrics(spec: SweepSpec) -> list[str]:
    """The reported metric names of the objectives (rate → val_kl, distortion → val_recon…)."""
    return [OBJECTIVE_METRICS[name] for name in spec.sweep.objectives]


def searcher(spec: SweepSpec) -> Optional[OptunaSearch]:
    """Optuna (TPE, NSGA-II or random), seeded; None for an all-grid space (Tune enumerates it)."""
    if spec.sweep.is_grid:
        return None
    import optuna

    seed = spec.sweep.seed
    kind = spec.sweep.resolved_sampler
    if kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, spec.sweep.trial_count()))
    elif kind == "nsga2":
        population = max(2, min(8, spec.sweep.trial_count() // 2))
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    if len(spec.sweep.objectives) == 1:  # TuneConfig's metric/mode reach the searcher
        return OptunaSearch(sampler=sampler)
    return OptunaSearch(metric=metrics(spec), mode=spec.sweep.modes, sampler=sampler)


def scheduler(spec: SweepSpec) -> Optional[ASHAScheduler]:
    """ASHA over epochs (one report per epoch = one training iteration), or none.

    max_t is one past the last epoch: at max_t ASHA stops every trial, and Tune would then end
    a trial between its last report and the logging of its model."""
    settings = spec.sweep.scheduler
    if settings.kind != "asha":
        return None
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=spec.train.optim.epochs + 1,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def tune_metric(spec: SweepSpec) -> tuple[Optional[str], Optional[str]]:
    """(metric, mode) for TuneConfig: the single objective, or (None, None) with several (the
    searcher then holds the lists)."""
    names = metrics(spec)
    if len(names) == 1:
        return names[0], spec.sweep.modes[0]
    return None, None
