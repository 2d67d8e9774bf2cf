"""The Ray job's entrypoint: `python -m vae_service.queue.entry`.

Writes the spec from VAE_JOB_SPEC to a private temporary file, moves to VAE_JOB_CWD (the
server's working directory, so relative paths in the spec mean what they mean to `vae run`
there), and runs `vae run <spec> --quiet --json`. The exit code is vae run's: 0 done, 1 the
job failed, 2 bad input, 130 interrupted. The last stdout line is vae run's JSON outcome.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    spec = os.environ.get("VAE_JOB_SPEC")
    if not spec:
        print("error: VAE_JOB_SPEC is not set: this command runs as a queued job", file=sys.stderr)
        return 2
    workdir = os.environ.get("VAE_JOB_CWD")
    if workdir and Path(workdir).is_dir():
        os.chdir(workdir)
    elif workdir:
        print(f"note: {workdir} does not exist on this node; relative paths resolve under {os.getcwd()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vae-job-") as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(spec)
        from vae_service.cli import app

        try:
            app(args=["run", str(path), "--quiet", "--json"], prog_name="vae")
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
