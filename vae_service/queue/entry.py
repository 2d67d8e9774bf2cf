"""The Ray job's entrypoint: `python -m vae_service.queue.entry`.

Reads the spec from VAE_JOB_SPEC, moves to VAE_JOB_CWD (the server's working directory, so
relative paths in the spec mean what they mean to `vae run` there) and runs it with
`vae_service.jobs.execute` as the job VAE_JOB_ID, in the run directory VAE_JOB_RUN_DIR (decided
when the queue stored the job), where the Outcome lands as outcome.json for the dispatcher to read. The
exit code is the Outcome's: 0 done, 1 the job failed, 2 bad input, 130 interrupted (stopped).

With VAE_JOB_RESUME=1 (an attempt after a preemption) the job continues that run directory —
its latest checkpoint, its MLflow run — as `vae run --resume` would; a directory the earlier
attempt did not get to create is started afresh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    spec_text, job_id = os.environ.get("VAE_JOB_SPEC"), os.environ.get("VAE_JOB_ID")
    if not spec_text or not job_id:
        print("error: VAE_JOB_SPEC and VAE_JOB_ID must be set: this command runs as a queued job", file=sys.stderr)
        return 2
    workdir = os.environ.get("VAE_JOB_CWD")
    if workdir and Path(workdir).is_dir():
        os.chdir(workdir)
    elif workdir:
        print(f"note: {workdir} does not exist on this node; relative paths resolve under {os.getcwd()}", file=sys.stderr)

    from vae_service.core.spec_loading import SpecError, load_spec_text
    from vae_service.environment import apply_process_defaults, quiet_libraries

    apply_process_defaults()
    quiet_libraries()
    try:
        spec = load_spec_text(spec_text, "VAE_JOB_SPEC")
    except SpecError as exc:  # the server validated it; a different version on the cluster may not
        print(f"bad input: {exc}", file=sys.stderr)
        return 2
    from vae_service.jobs.warm import warm_a_worker

    warm_a_worker(spec)  # before the imports below (seconds): the worker imports beside them
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    run_dir = _run_dir(spec, job_id)
    resume = os.environ.get("VAE_JOB_RESUME") == "1" and _started(run_dir)
    outcome = execute(spec, reporter=Reporter(progress="lines"), job_id=job_id, run_dir=run_dir,
                      resume=run_dir if resume else None)
    facts = [f"MLflow run {outcome.mlflow_run_id}" if outcome.mlflow_run_id else "", outcome.model_uri or "", outcome.run_dir or ""]
    print(f"outcome: {outcome.state}; {'; '.join(f for f in facts if f)}" + (f"\n{outcome.error}" if outcome.error else ""), file=sys.stderr)
    return outcome.exit_code


def _run_dir(spec, job_id: str) -> str:
    """The run directory the queue decided when it stored the job (VAE_JOB_RUN_DIR); for a job
    stored before it did, where its spec puts it."""
    given = os.environ.get("VAE_JOB_RUN_DIR")
    if given:
        return given
    from vae_service.jobs.locations import queued_run_dir

    return queued_run_dir(spec, job_id).uri


def _started(run_dir: str) -> bool:
    """Whether an earlier attempt of this job (VAE_JOB_RESUME=1) got to start its run there; a
    directory it did not get to create is started afresh."""
    from vae_service import storage
    from vae_service.jobs.lifecycle import SPEC_FILE

    try:
        return storage.exists(storage.resolve(run_dir).join(SPEC_FILE))
    except (storage.StorageError, OSError) as exc:
        print(f"note: cannot look for the earlier attempt's run ({exc}); starting afresh", file=sys.stderr)
        return False


if __name__ == "__main__":
    sys.exit(main())
