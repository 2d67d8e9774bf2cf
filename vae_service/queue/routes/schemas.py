"""The JSON bodies of the job routes, for the OpenAPI document (the routes return
models.Job.to_dict(); schemathesis checks the two agree, tests/abuse/test_openapi.py), and the
document's links from a submitted job to the routes that take its id."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from pydantic import BaseModel, Field

from vae_service.queue.states import State


class Job(BaseModel):
    id: str
    name: str
    kind: str
    priority: int
    state: State
    attempts: int
    submitted_by: str
    resources: dict[str, float]
    run_dir: Optional[str] = Field(description="Where the job runs and leaves outcome.json: decided when it was stored "
                                               "(none for a job stored before run directories were).")
    idempotency_key: Optional[str]
    ray_submission_id: Optional[str]
    mlflow_run_id: Optional[str]
    error: Optional[str]
    dispatch_latency_s: Optional[float]
    nodes: list[str]
    waiting_reason: Optional[str]
    preemptible: bool
    preemptions: int
    created_at: datetime
    updated_at: datetime
    submitted_at: Optional[datetime]
    started_at: Optional[datetime]
    running_since: Optional[datetime]
    finished_at: Optional[datetime]


class JobLinks(BaseModel):
    mlflow: Optional[str]
    ray: Optional[str]


class JobDetail(Job):
    spec: str
    spec_submitted: str
    overrides: list[str]
    position: Optional[int]
    links: JobLinks


class JobPage(BaseModel):
    jobs: list[Job]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: str
    db: Optional[str] = None  # the error's class, when the store does not answer


# OpenAPI links from a submitted job (its id in the body) to every route that takes it.
JOB_ID = {"job_id": "$response.body#/id"}
JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": JOB_ID},
    "GetJobLogs": {"operationId": "getJobLogs", "parameters": JOB_ID},
    "CancelJob": {"operationId": "cancelJob", "parameters": JOB_ID},
    "SetJobPriority": {"operationId": "setJobPriority", "parameters": JOB_ID},
}
LOCATION = {"Location": {"description": "The job's address, /jobs/{id}.", "schema": {"type": "string"}}}


class UserShare(BaseModel):
    user: str
    weight: float
    current_share: float = Field(description="The dominant share the user's admitted jobs hold (of the cluster's CPUs or GPUs).")
    historic_share: float = Field(description="Their decayed past usage, as a share (usage / (half-life / ln 2)).")
    effective_share: float = Field(description="(current + historic) / weight: among equal priorities, smallest goes first.")


class FairShares(BaseModel):
    half_life_s: float
    users: list[UserShare] = Field(description="Smallest effective share first: the next in line first.")
