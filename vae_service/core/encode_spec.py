"""`kind: encode-dataset`: every item of your own data through a trained model's encoder, as
Parquet parts (jobs/encode_dataset.py; `vae encode-dataset` builds one from its arguments).

    kind: encode-dataset
    name: codes
    model: models:/own-vectors/1      # a registered model, an MLflow run's model, or a model directory
    data: {source: s3://bucket/vectors, format: numpy}
    output: s3://bucket/codes         # folder or s3://bucket/prefix for the parts
    resources: {num_workers: 4}       # encoder actors (each cpus_per_worker CPUs)

Restartable: a part already in `output` is skipped, so a preempted or interrupted job continues
where it stopped. Its run directory, `<output>/_runs/<name>-<time or job id>`, holds the spec and
outcome.json beside the parts they describe (Parquet readers skip names starting with `_`).
"""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, model_validator

from vae_service.core.spec import DataSpec, ResourcesSpec, StrictModel, absolute_path

MAX_ENCODE_BATCH = 65_536  # items per encoder call (a training step's bound is core.spec.MAX_BATCH)
RUNS_DIR = "_runs"  # in `output`: the job's run directories
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # models:/…, runs:/…, s3://… (else a local directory)


class EncodeDatasetSpec(StrictModel):
    """Encode every item of a data source: `kind: encode-dataset`."""

    kind: Literal["encode-dataset"] = "encode-dataset"
    name: str = Field("encode", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str = Field(..., min_length=1, max_length=2000,
                       description="The encoder: models:/name/version (or /alias), runs:/<run id>/model, or a model directory.")
    data: DataSpec = Field(..., description="Your own data (data.source and data.format images, numpy or parquet); every item is encoded.")
    output: str = Field(..., min_length=1, max_length=2000, description="Folder or s3://bucket/prefix for the Parquet parts.")
    batch_size: int = Field(1024, ge=1, le=MAX_ENCODE_BATCH, description="Items per encoder call.")
    images_per_part: int = Field(1000, ge=1, le=1_000_000, description="Image folders: at most this many images per output part.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec,
                                     description="num_workers: encoder actors; cpus_per_worker: CPUs of each.")

    @model_validator(mode="after")
    def _reads_own_data(self) -> "EncodeDatasetSpec":
        if not self.data.own:
            raise ValueError("data.source: encode-dataset reads your own data (data.source with data.format images, numpy "
                             f"or parquet), not {self.data.dataset}")
        if self.data.limit is not None:
            raise ValueError("data.limit: encode-dataset encodes every item of data.source; remove data.limit")
        if self.resources.use_gpu or self.resources.gpus:
            raise ValueError("resources.use_gpu: encoder actors run on CPUs")
        return self

    # ---- the job interface (core/job.py) -----------------------------------------------------

    @property
    def storage_uri(self) -> str:
        return f"{self.output.rstrip('/')}/{RUNS_DIR}"

    def train_specs(self) -> list:
        return []  # trains nothing

    def trained_by_driver(self) -> None:
        return None

    def worker_resources(self) -> ResourcesSpec:
        return self.resources

    def peak_workers(self) -> int:
        return self.resources.num_workers

    def with_absolute_paths(self) -> "EncodeDatasetSpec":
        output = self.output if "://" in self.output else absolute_path(self.output)
        model = self.model if URI_SCHEME.match(self.model) else absolute_path(self.model)
        return self.model_copy(update={"data": self.data.with_absolute_paths(), "output": output, "model": model})

    def with_queue_defaults(self, storage_uri: Optional[str], max_failures: int) -> "EncodeDatasetSpec":
        return self  # its run goes with its output; a rerun after a failure skips what is written

    def read_locations(self) -> list[tuple[str, str]]:
        return [("data.source", self.data.source)]

    def write_locations(self) -> list[tuple[str, str]]:
        return [("output", self.output)]

    def registered_names(self) -> list[tuple[str, str]]:
        return []

