"""The job spec: one pydantic model tree, validated strictly (unknown keys are errors).

A spec is what a user writes in YAML. Everything downstream (training, tracking, the queue)
receives a validated `TrainSpec`, never a raw dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class StrictModel(BaseModel):
    """Base for every spec section: unknown keys are errors, values are checked on assignment,
    and no float may be infinite or NaN (`.inf`, `1e400`, "Infinity" are refused)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataSpec(StrictModel):
    dataset: Literal["mnist"] = Field("mnist", description="Data set name.")
    root: Optional[str] = Field(
        None,
        description="Folder holding the IDX files (gz or raw). Default: $VAE_DATA_DIR/<dataset>, "
        "then the download cache.",
    )
    download: bool = Field(
        True, description="Download missing files into the cache (checksums are always verified)."
    )
    binarize: Literal["none", "static", "dynamic"] = Field(
        "none",
        description="none: grey levels in [0,1]; static: one fixed Bernoulli draw; "
        "dynamic: a fresh Bernoulli draw every epoch.",
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the training images held out for validation."
    )
    limit: Optional[PositiveInt] = Field(
        None, description="Use only the first N training (and N test) images: for quick runs."
    )


class ModelSpec(StrictModel):
    arch: Literal["mlp", "conv"] = "mlp"
    latent_dim: PositiveInt = Field(20, le=4096)
    hidden: list[PositiveInt] = Field(
        default_factory=lambda: [400], description="MLP hidden layer widths (encoder; mirrored)."
    )
    channels: list[PositiveInt] = Field(
        default_factory=lambda: [32, 64],
        description="Conv channels per stride-2 layer (encoder; mirrored).",
    )
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"


class CapacitySpec(StrictModel):
    """Burgess et al. (2018): minimise gamma·|KL − C| with C rising linearly to max_nats."""

    max_nats: PositiveFloat = 25.0
    anneal_epochs: PositiveInt = 10
    gamma: PositiveFloat = 1000.0


class ObjectiveSpec(StrictModel):
    kind: Literal["vae", "ae", "kl_only"] = Field(
        "vae",
        description="vae: reconstruction + beta·KL; ae: deterministic code, reconstruction only; "
        "kl_only: the encoder sees only the KL term (the decoder still learns from the codes).",
    )
    beta: float = Field(1.0, ge=0.0, le=1e4, description="Weight of the KL term (beta > 1: beta-VAE).")
    warmup_epochs: float = Field(
        0.0, ge=0.0, description="Linear warm-up of beta from 0 over this many epochs."
    )
    capacity: Optional[CapacitySpec] = None

    @model_validator(mode="after")
    def _capacity_only_for_vae(self) -> "ObjectiveSpec":
        if self.capacity is not None and self.kind != "vae":
            raise ValueError("capacity annealing applies to kind: vae only")
        return self


class OptimSpec(StrictModel):
    epochs: PositiveInt = Field(10, le=100_000)
    batch_size: PositiveInt = Field(
        128, description="Global batch size, split evenly across workers."
    )
    lr: PositiveFloat = 1e-3
    seed: Optional[int] = Field(0, ge=0, description="Seed for reproducible runs; null for random.")


class ResourcesSpec(StrictModel):
    num_workers: PositiveInt = Field(1, le=1024)
    use_gpu: bool = False
    # Bounded so that what a job asks for (workers × per worker) is always a finite number.
    cpus_per_worker: PositiveFloat = Field(1.0, le=1024)
    gpus_per_worker: Optional[float] = Field(
        None, ge=0.0, le=64, description="Default: 1 when use_gpu, else 0."
    )
    placement: Literal["pack", "spread"] = Field(
        "pack",
        description="pack: workers fill one node first (fast collectives); spread: one worker per "
        "node where possible (a multi-node run; it falls back to fewer nodes when some are gone).",
    )

    @property
    def gpus(self) -> float:
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if self.use_gpu else 0.0

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


class StorageSpec(StrictModel):
    uri: str = Field("runs", description="Where runs and checkpoints go: a path or s3://bucket/prefix.")
    keep_checkpoints: PositiveInt = Field(2, description="Checkpoints kept per run (newest).")
    max_failures: int = Field(
        0, ge=-1, description="Worker failures to recover from (from the latest checkpoint)."
    )


class TrackingSpec(StrictModel):
    experiment: str = Field("vae-service", min_length=1)
    register_as: Optional[str] = Field(None, description="Register the model under this name.")
    alias: str = Field("candidate", min_length=1)


class TrainSpec(StrictModel):
    """A training job: `kind: train`."""

    kind: Literal["train"] = "train"
    name: str = Field("vae", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> "TrainSpec":
        if self.optim.batch_size < self.resources.num_workers:
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must be at least "
                f"resources.num_workers ({self.resources.num_workers})"
            )
        if self.resources.use_gpu is False and self.resources.gpus > 0:
            raise ValueError("resources.gpus_per_worker > 0 needs resources.use_gpu: true")
        return self

    def with_absolute_data_root(self) -> "TrainSpec":
        """A relative data.root means relative to where the job was started, not to a worker."""
        root = self.data.root
        if not root or "://" in root:
            return self
        return self.model_copy(update={"data": self.data.model_copy(update={"root": str(Path(root).expanduser().resolve())})})
