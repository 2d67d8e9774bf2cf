"""The sweep spec in Optuna's and Ray Tune's terms: the search space, the searcher, the
scheduler, what is left of a grid. The only module that knows Optuna."""

from __future__ import annotations

from typing import Optional

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from vae_service.core.metrics import OBJECTIVE_METRICS
from vae_service.core.sweep_spec import (
    IntRange,
    LogUniform,
    SweepSpec,
    Uniform,
)


STUDY = "sweep"


def metrics(spec: SweepSpec) -> list[str]:
    """The reported metric names of the objectives (rate → val_kl, distortion → val_recon…)."""
    return [OBJECTIVE_METRICS[name] for name in spec.sweep.objectives]


def optuna_space(spec: SweepSpec) -> dict:
    """Field path → Optuna distribution (a sampled space; grids never reach Optuna)."""
    import optuna.distributions as dist

    space = {}
    for path, domain in spec.sweep.space.items():
        if isinstance(domain, LogUniform):
            space[path] = dist.FloatDistribution(*domain.loguniform, log=True)
        elif isinstance(domain, Uniform):
            space[path] = dist.FloatDistribution(*domain.uniform)
        elif isinstance(domain, IntRange):
            space[path] = dist.IntDistribution(*domain.int_)
        else:
            space[path] = dist.CategoricalDistribution(domain.choice)
    return space


def searcher(spec: SweepSpec, known: list[tuple[dict, list[float]]] = (), attempt: int = 0) -> OptunaSearch:
    """Optuna (TPE, NSGA-II or random), seeded, over the spec's space.

    `known` are finished trials of an earlier attempt of the same sweep, as (config, objective
    values): the study starts with them, so a continued sweep samples as if it had not stopped.
    Each attempt seeds its sampler differently (seed + attempt): not to repeat earlier draws."""
    import optuna

    seed = spec.sweep.seed + attempt
    kind = spec.sweep.resolved_sampler
    if kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, spec.sweep.trial_count()))
    elif kind == "nsga2":
        population = max(2, min(8, spec.sweep.trial_count() // 2))
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    space = optuna_space(spec)
    directions = ["maximize" if mode == "max" else "minimize" for mode in spec.sweep.modes]
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=STUDY, directions=directions)
    for config, values in known:
        study.add_trial(optuna.trial.create_trial(params=config, distributions=space, values=values))
    names, modes = metrics(spec), spec.sweep.modes
    single = len(names) == 1
    return OptunaSearch(space=space, metric=names[0] if single else names, mode=modes[0] if single else modes,
                        sampler=sampler, storage=storage, study_name=STUDY)


def grid_remaining(spec: SweepSpec, done: list[dict]) -> list[dict]:
    """The grid's combinations (num_samples times each) not yet started by an earlier attempt."""
    left = [config for config in spec.grid_configs() for _ in range(spec.sweep.num_samples or 1)]
    for config in done:
        if config in left:
            left.remove(config)
    return left


def scheduler(spec: SweepSpec) -> Optional[ASHAScheduler]:
    """ASHA over epochs (one report per epoch = one training iteration), or none.

    max_t is one past the last epoch: at max_t ASHA stops every trial, and Tune would then end
    a trial between its last report and the logging of its model."""
    settings = spec.sweep.scheduler
    if settings.kind != "asha":
        return None
    return ASHAScheduler(
        metric=metrics(spec)[0],
        mode=spec.sweep.modes[0],
        time_attr="training_iteration",
        max_t=spec.train.optim.epochs + 1,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )
