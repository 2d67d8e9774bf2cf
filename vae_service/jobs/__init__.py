"""The job lifecycle: `execute(spec) -> Outcome` (jobs.execute) for every kind of job — train,
sweep, compare — run by `vae run`, `vae compare` and the queue's job entrypoint alike.

The run directory, the MLflow run (open, reopen on resume, finish FINISHED/FAILED/KILLED),
Ctrl-C and the mapping of failures to exit codes live here once. `training/` (Ray Train) and
`sweeps/` (Ray Tune) are adapters this layer calls; neither calls up. This package imports
nothing itself, so the queue can read outcomes (jobs.outcome, jobs.locations) without Ray.
"""
