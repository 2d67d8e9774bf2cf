"""How a job ends badly, said once for every layer, and one way to put an error in one line.

Each layer raises one of these three; `vae_service.jobs` turns them into the job's Outcome (and
the CLI into its exit code), so no caller has to know which layer failed:

  BadInput     the spec, a flag or the data is wrong: fix the input (exit code 2)
  JobFailed    the job ran and failed, e.g. a non-finite loss or a store that is down (exit 1)
  Interrupted  the user stopped it (Ctrl-C); checkpoints are kept for --resume (exit 130)
"""

from __future__ import annotations

import os
import re
from typing import Optional


class JobError(Exception):
    kind = "job_failed"
    exit_code = 1


class BadInput(JobError):
    kind = "bad_input"
    exit_code = 2


class JobFailed(JobError):
    kind = "job_failed"
    exit_code = 1


class Interrupted(JobError):
    """`resume_dir`: the directory to hand to --resume."""

    kind = "interrupted"
    exit_code = 130

    def __init__(self, resume_dir: str):
        super().__init__(f"stopped by the user; checkpoints are kept in {resume_dir}")
        self.resume_dir = resume_dir


SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                    "RAY_AUTH_TOKEN", "VAE_API_TOKEN", "POSTGRES_PASSWORD", "S3_SECRET_KEY")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` without the credentials of any URL in it (scheme://user:password@host → scheme://***@host)
    or the value of a secret this process holds (SECRET_VARIABLES): what may be shown or stored."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


class ShownError(Exception):
    """An error whose message users see (a CLI line, an API answer, a log line): credentials
    are redacted when it is made, so no later path can print them."""

    def __init__(self, message: str, *args):
        super().__init__(redact(message), *args)


def one_line(error: BaseException | str, limit: Optional[int] = None, *, first_line: bool = False) -> str:
    """An error's text on one line (whitespace collapsed; with `first_line`, only its first line,
    for libraries such as MLflow that put details after it), or its class name when it has none.
    Credentials are redacted: this is the text users and the queue see."""
    text = redact(str(getattr(error, "message", error)).strip())
    if first_line:
        text = (text.splitlines() or [""])[0]
    text = " ".join(text.split()) or (error.__class__.__name__ if isinstance(error, BaseException) else "")
    return text[:limit] if limit else text
