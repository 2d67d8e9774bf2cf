"""The job lifecycle: `execute(spec) -> Outcome` for every kind of job (train, sweep, compare).

The run directory, the MLflow run (open, reopen on resume, finish FINISHED/FAILED/KILLED),
Ctrl-C and the mapping of failures to exit codes live here once. `training/` (Ray Train) and
`sweeps/` (Ray Tune) are adapters this layer calls; neither calls up.
"""

from vae_service.jobs.execute import execute
from vae_service.jobs.outcome import Outcome
from vae_service.jobs.reporter import Reporter

__all__ = ["Outcome", "Reporter", "execute"]
