"""The job spec: one pydantic model tree, validated strictly (unknown keys are errors).

A spec is what a user writes in YAML. Everything downstream (training, tracking, the queue)
receives a validated `TrainSpec`, never a raw dict.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vae_service.core.metrics import FACTOR_EVALS

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

# Limits that make a valid spec a job that can run, not one that fails late (issue #12).
MAX_EPOCHS = 100_000
MAX_WORKERS = 1024
MAX_BATCH = 2**20  # items a step: 3 GiB of float32 MNIST inputs already
# The worker seeds torch with (seed * 1_000_003 + epoch) * 1024 + rank (training/worker.py):
# with seed < 2**32, epoch < MAX_EPOCHS and rank < MAX_WORKERS that stays below 2**63.
MAX_SEED = 2**32 - 1
MAX_WIDTH = 16_384  # an MLP hidden layer
MAX_CHANNELS = 4_096  # a conv layer
MAX_LAYERS = 16
MAX_PARAMETERS = 100_000_000  # 400 MB of float32 weights (1.6 GB with Adam's state)
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "dsprites": (1, 64, 64)}
FACTOR_DATASETS = ("dsprites",)  # data sets labelled by ground-truth factors: disentanglement metrics need one
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
Channels = Annotated[int, Field(gt=0, le=MAX_CHANNELS)]

# MLflow's registry rules (mlflow.utils.validation; pinned by tests/abuse/test_regressions.py), a little
# stricter: names also appear in models:/NAME@ALIAS URIs and on the command line.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
ALIAS_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
RESERVED_ALIAS = re.compile(r"latest|v[0-9]+", re.IGNORECASE)  # MLflow: @latest and @v3 mean versions
# The alias of the model in service: a person moves it (`vae models promote`), never a spec, so
# training cannot change what is served as a side effect.
CHAMPION = "champion"
PROTECTED_ALIASES = (CHAMPION,)


def model_name_problem(name: str) -> Optional[str]:
    """Why the registry would refuse `name` as a registered model's name, or None."""
    if not MODEL_NAME.fullmatch(name):
        return (f"invalid model name {name!r}: use 1-255 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
    return None


def alias_problem(alias: str) -> Optional[str]:
    """Why the registry would refuse `alias` as a model alias, or None."""
    if not ALIAS_NAME.fullmatch(alias):
        return f"invalid alias {alias!r}: use 1-255 letters, digits, '_' or '-'"
    if RESERVED_ALIAS.fullmatch(alias):
        return f"alias {alias!r} is reserved by MLflow (latest and v<N> name versions)"
    return None


class StrictModel(BaseModel):
    """Base for every spec section: unknown keys are errors, values are checked on assignment,
    and no float may be infinite or NaN (`.inf`, `1e400`, "Infinity" are refused)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataSpec(StrictModel):
    dataset: Literal["mnist", "fashion-mnist", "dsprites"] = Field(
        "mnist",
        description="A named data set (without data.source): mnist: the handwritten digits, 28x28; fashion-mnist: "
        "Zalando's 28x28 clothing images in MNIST's file format; dsprites: the 737,280 64x64 binary sprites "
        "of the disentanglement benchmark (a random 10% held out as test).",
    )
    source: Optional[str] = Field(
        None, max_length=4096,
        description="Your own data: a file, a folder, a glob or an s3:// prefix (read with the storage settings "
        "of checkpoints); data.format says how to read it. format idx: the folder of a named data set's IDX files.",
    )
    format: Optional[Literal["idx", "images", "numpy", "parquet"]] = Field(
        None,
        description="idx: MNIST's file format (the named data sets); images: PNG/JPEG files (a folder, searched "
        "recursively); numpy: .npy or .npz files, one row per item; parquet: a table, one row per item. "
        "Default: idx without data.source; required with it.",
    )
    image_size: Optional[Annotated[int, Field(ge=4, le=1024)]] = Field(
        None, description="format images: resize every image to this square side in pixels (required when the "
        "images have different sizes).",
    )
    channels: Optional[Literal[1, 3]] = Field(
        None, description="format images: 1 (grey) or 3 (RGB); images are converted. Default 1.",
    )
    key: Optional[str] = Field(
        None, min_length=1, max_length=256,
        description="format numpy: the array holding the items in an .npz (required when it holds several).",
    )
    columns: Optional[list[Annotated[str, Field(min_length=1, max_length=256)]]] = Field(
        None, min_length=1, max_length=MAX_WIDTH,
        description="format parquet: the numeric feature columns (default: every numeric column but data.label).",
    )
    label: Optional[str] = Field(
        None, min_length=1, max_length=256,
        description="Optional labels to colour the figures: format images: `folder` (each image's parent folder's "
        "name); numpy: an array of the .npz; parquet: a column.",
    )
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="data.source only: share of the items held out for testing (chosen by a hash of each item's "
        "content, so the split is the same however the data is read).",
    )
    loading: Literal["auto", "memory", "streaming"] = Field(
        "auto",
        description="memory: the whole data set as tensors on every worker; streaming: Ray Data streams each "
        "worker its own shard, with bounded memory; auto: memory when the decoded data fits in 1 GiB.",
    )
    root: Optional[str] = Field(
        None,
        description="mnist, fashion-mnist: folder holding the IDX files (gz or raw); dsprites: folder holding the original "
        "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz (without one, dSprites is re-rendered). "
        "Default: $VAE_DATA_DIR/<dataset>, then the cache.",
    )
    download: bool = Field(
        True, description="mnist, fashion-mnist only: download missing files into the cache (checksums are always verified)."
    )
    binarize: Literal["none", "static", "dynamic"] = Field(
        "none",
        description="Images only: none: grey levels in [0,1]; static: one fixed Bernoulli draw; "
        "dynamic: a fresh Bernoulli draw every epoch. No effect on dsprites, which is binary.",
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the training items held out for validation."
    )
    limit: Optional[PositiveInt] = Field(
        None, description="Use only N training (and N test) items, for quick runs: the first N of mnist, "
        "a seeded random N of dsprites, the first N read of data.source."
    )

    @property
    def own(self) -> bool:
        """The user's own data (images, numpy, parquet), read through Ray Data."""
        return self.source is not None and self.format != "idx"

    @property
    def title(self) -> str:
        """The data in a message or a table: the named data set, or the source."""
        return self.source if self.own else self.dataset

    @property
    def vectors(self) -> bool:
        """Items are feature vectors (standardised), not images."""
        return self.own and self.format in ("numpy", "parquet")

    def with_absolute_paths(self) -> "DataSpec":
        """A relative data.root or data.source means relative to where the job was started, not to a worker."""
        local = {name: getattr(self, name) for name in DATA_LOCATIONS}
        absolute = {name: absolute_path(value) for name, value in local.items() if value and "://" not in value}
        return self.model_copy(update=absolute) if absolute else self

    @model_validator(mode="after")
    def _fields_fit_the_format(self) -> "DataSpec":
        fmt = self.format or "idx"
        if self.source is None and fmt != "idx":
            raise ValueError(f"data.format: {fmt} reads your own data: set data.source too")
        if self.source is not None and self.format is None:
            raise ValueError("data.format: required with data.source (images, numpy, parquet, or idx)")
        if self.own and self.dataset != "mnist":  # (the default, so a dumped spec validates again)
            raise ValueError("data.dataset names a built-in data set; with data.source (your own data) leave it out")
        if self.source is not None and fmt == "idx" and self.dataset == "dsprites":
            raise ValueError("data.format: idx holds mnist or fashion-mnist, not dsprites")
        if self.source is not None and self.root is not None:
            raise ValueError("data.root and data.source: give one (data.source is the folder of the files)")
        only = {"image_size": "images", "channels": "images", "key": "numpy", "columns": "parquet"}
        for name, wanted in only.items():
            if getattr(self, name) is not None and fmt != wanted:
                raise ValueError(f"data.{name} applies to data.format: {wanted}, not {fmt}")
        if self.label is not None and not self.own:
            raise ValueError(f"data.label applies to your own data (data.source), not to {self.dataset}")
        if self.label is not None and fmt == "images" and self.label != "folder":
            raise ValueError(f"data.label: {self.label!r}: image folders take their labels from `folder` (the parent folder's name)")
        if self.columns and self.label in self.columns:
            raise ValueError(f"data.label: {self.label!r} is also in data.columns; a label is not a feature")
        if self.vectors and self.binarize != "none":
            raise ValueError(f"data.binarize: {self.binarize} applies to images, not to data.format: {fmt}")
        if self.own and self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + data.test_fraction ({self.val_fraction} + {self.test_fraction}) "
                             "leave nothing to train on")
        return self

    @property
    def input_shape(self) -> Optional[tuple[int, ...]]:
        """What the model takes, when the spec alone says: (channels, side, side) for images, (features,)
        for parquet columns; None until the data is read."""
        if not self.own:
            return IMAGE_SHAPES[self.dataset]
        if self.format == "images" and self.image_size is not None:
            return (self.channels or 1, self.image_size, self.image_size)
        if self.format == "parquet" and self.columns:
            return (len(self.columns),)
        return None


class ModelSpec(StrictModel):
    arch: Literal["mlp", "conv"] = "mlp"
    latent_dim: PositiveInt = Field(20, le=4096)
    hidden: list[Width] = Field(
        default_factory=lambda: [400], min_length=1, max_length=MAX_LAYERS,
        description=f"MLP hidden layer widths (encoder; mirrored), each at most {MAX_WIDTH}.",
    )
    channels: list[Channels] = Field(
        default_factory=lambda: [32, 64], min_length=1, max_length=MAX_LAYERS,
        description=f"Conv channels per stride-2 layer (encoder; mirrored), each at most {MAX_CHANNELS}.",
    )
    kernel_size: Literal[3, 4] = Field(
        3, description="Conv kernel of the encoder's stride-2 layers: 3, or 4 as in Higgins et al. / "
        "disentanglement_lib (the image side must then halve exactly at every layer, e.g. 64 -> 4 with four)."
    )
    likelihood: Literal["bernoulli", "continuous_bernoulli", "gaussian"] = Field(
        "bernoulli",
        description="p(x|z): bernoulli (logits; on grey levels its −ELBO is no bound, the cross-entropy "
        "not being a density); continuous_bernoulli (logits, Loaiza-Ganem & Cunningham 2019: a density "
        "on [0,1], for grey levels); gaussian (the mean; its variance: gaussian_variance).",
    )
    gaussian_variance: Literal["learned_shared", "learned_per_dim", "fixed"] = Field(
        "learned_shared",
        description="likelihood gaussian only: learned_shared: one learned σ for all pixels; learned_per_dim: "
        "a learned σ per pixel; fixed: σ = 1.",
    )

    @model_validator(mode="after")
    def _variance_only_for_gaussian(self) -> "ModelSpec":
        if self.gaussian_variance != "learned_shared" and self.likelihood != "gaussian":
            raise ValueError(f"gaussian_variance: {self.gaussian_variance} applies to likelihood: gaussian only, "
                             f"not {self.likelihood}")
        return self

    def conv_sides(self, side: int) -> list[int]:
        """The image side after each stride-2 encoder convolution (padding 1): ⌈side/2⌉ with
        3×3 kernels, ⌊side/2⌋ with 4×4; core/model.py computes the same."""
        sides = [side]
        for _ in self.channels:
            sides.append((sides[-1] + 2 - self.kernel_size) // 2 + 1)
        return sides[1:]

    def parameter_count(self, image_shape: tuple[int, int, int]) -> int:
        """The VAE's parameter count, by arithmetic (no torch here): the layers of core/model.py,
        pinned to count_parameters(VAE(...)) by tests/abuse/test_regressions.py."""
        def linear(n_in: int, n_out: int) -> int:
            return n_in * n_out + n_out

        latent = self.latent_dim
        log_scales = {"learned_shared": 1, "learned_per_dim": math.prod(image_shape), "fixed": 0}
        extra = log_scales[self.gaussian_variance] if self.likelihood == "gaussian" else 0  # learned log σ
        if self.arch == "mlp":
            sizes = [math.prod(image_shape), *self.hidden]
            body = sum(linear(a, b) for a, b in zip(sizes, sizes[1:]))
            decoder = [latent, *reversed(self.hidden), sizes[0]]
            return (body + linear(self.hidden[-1], 2 * latent)
                    + sum(linear(a, b) for a, b in zip(decoder, decoder[1:])) + extra)
        colours, side, _ = image_shape
        chans = [colours, *self.channels]
        side = self.conv_sides(side)[-1]
        flat = self.channels[-1] * side * side
        convs = sum(a * b * self.kernel_size**2 + b for a, b in zip(chans, chans[1:]))
        deconvs = sum(a * b * 16 + b for a, b in zip(chans[::-1], chans[::-1][1:]))
        return (convs + linear(flat, 256) + linear(256, 2 * latent)
                + linear(latent, 256) + linear(256, flat) + deconvs + extra)


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
    epochs: PositiveInt = Field(10, le=MAX_EPOCHS)
    batch_size: PositiveInt = Field(
        128, le=MAX_BATCH, description="Global batch size, split evenly across workers."
    )
    lr: PositiveFloat = Field(1e-3, description="Adam's learning rate at lr_reference_batch (see lr_scaling).")
    lr_scaling: Literal["none", "sqrt", "linear"] = Field(
        "none",
        description="How lr follows the global batch: sqrt (Adam's rule: lr·√(batch_size/lr_reference_batch)), "
        "linear (SGD's rule, with warm-up), none (lr as given, whatever the batch).",
    )
    lr_reference_batch: PositiveInt = Field(128, le=MAX_BATCH, description="The global batch that lr was tuned for.")
    lr_warmup_epochs: float = Field(
        0.0, ge=0.0, le=MAX_EPOCHS, description="Linear warm-up of the learning rate from 0 over this many epochs."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the forward pass in bfloat16 (autocast); the loss and its sums stay fp32."
    )
    compile: bool = Field(False, description="torch.compile the loss and the model's forward (the first steps pay for it).")
    seed: Optional[int] = Field(
        0, ge=0, le=MAX_SEED, description="Seed for reproducible runs (0 to 2**32-1); null for random."
    )

    def lr_at(self, progress: float) -> float:
        """The learning rate after `progress` epochs (fractional): lr scaled to the global batch
        by lr_scaling, ramped up linearly from 0 over lr_warmup_epochs."""
        ratio = self.batch_size / self.lr_reference_batch
        scale = {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[self.lr_scaling]
        warm = min(1.0, progress / self.lr_warmup_epochs) if self.lr_warmup_epochs > 0 else 1.0
        return self.lr * scale * warm


class ResourcesSpec(StrictModel):
    num_workers: PositiveInt = Field(1, le=MAX_WORKERS)
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
    # Default true: every job checkpoints each epoch and resumes from there, so a preempted job
    # loses at most the epoch in progress, and priority means something for long jobs.
    preemptible: bool = Field(
        True,
        description="Queued jobs: a higher-priority job may stop this one (it keeps its checkpoints and "
        "resumes later from the latest). false: it runs to the end once admitted.",
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
    experiment: str = Field("vae-service", min_length=1, max_length=500)  # MLflow's longest
    register_as: Optional[str] = Field(None, description="Register the model under this name.")
    alias: str = Field("candidate", description="Alias of the registered version (not latest, v<N> or champion).")
    figures: bool = Field(True, description="Draw the article's figures on the run (about 3 s a run on 2 CPUs); "
                                            "false for quick checks and for sweeps of many short trials.")

    # Checked here: MLflow would refuse them only after training, leaving a FAILED run.
    @field_validator("register_as")
    @classmethod
    def _registrable(cls, name: Optional[str]) -> Optional[str]:
        problem = model_name_problem(name) if name is not None else None
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("alias")
    @classmethod
    def _settable(cls, alias: str) -> str:
        problem = alias_problem(alias)
        if problem:
            raise ValueError(problem)
        if alias.casefold() in PROTECTED_ALIASES:
            raise ValueError(f"{alias!r} is protected: only `vae models promote` moves it (use another alias, e.g. candidate)")
        return alias


class EvaluationSpec(StrictModel):
    """What to evaluate after the last epoch (as `vae eval` does), logged as eval_* metrics."""

    metrics: list[Literal["nll", "elbo", "au", "mig", "factorvae", "dci"]] = Field(
        default_factory=list,
        description="nll: importance-sampled −log p(x) on the test split; elbo, au: −ELBO and active units there; "
        "mig, factorvae, dci: disentanglement (dsprites only). A sweep adds its end-of-trial objectives here.",
    )
    nll_samples: PositiveInt = Field(100, le=100_000, description="Importance samples K per test image for nll.")
    points: int = Field(10_000, ge=100, le=1_000_000,
                        description="Sample size of mig, factorvae and dci (disentanglement_lib: 10,000).")

    @field_validator("metrics")
    @classmethod
    def _distinct(cls, value: list) -> list:
        return list(dict.fromkeys(value))


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
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @model_validator(mode="after")
    def _evaluation_fits_the_data(self) -> "TrainSpec":
        needs_factors = [m for m in self.evaluation.metrics if m in FACTOR_EVALS]
        if needs_factors and self.data.dataset not in FACTOR_DATASETS:
            raise ValueError(f"evaluation.metrics: {needs_factors[0]} needs data with known generative factors "
                             f"(data.dataset: {' or '.join(FACTOR_DATASETS)}), not {self.data.dataset}")
        return self

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> "TrainSpec":
        if self.optim.batch_size < self.resources.num_workers:
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must be at least "
                f"resources.num_workers ({self.resources.num_workers})"
            )
        if self.resources.use_gpu is False and self.resources.gpus > 0:
            raise ValueError("resources.gpus_per_worker > 0 needs resources.use_gpu: true")
        if self.data.vectors and self.model.arch != "mlp":
            raise ValueError(f"model.arch: {self.model.arch} needs images; data.format {self.data.format} holds vectors (use mlp)")
        if self.data.vectors and self.model.likelihood != "gaussian":
            raise ValueError(f"model.likelihood: {self.model.likelihood} models values in [0, 1]; data.format "
                             f"{self.data.format} is standardised per feature: use gaussian")
        shape = self.data.input_shape
        if shape is not None:
            problem = self.model_problem(shape)
            if problem:
                raise ValueError(problem)
        return self

    def model_problem(self, shape: tuple[int, ...]) -> Optional[str]:
        """Why the spec's model cannot be built for inputs of `shape` (known from the spec, or only
        once the data is read), or None."""
        what = self.data.title
        if self.model.arch == "conv" and self.model.kernel_size == 4:
            sides = self.model.conv_sides(shape[1])
            if sides[-1] * 2 ** len(sides) != shape[1]:
                return (f"model.kernel_size 4: the {what} images' side {shape[1]} does not halve exactly at each "
                        f"of the {len(sides)} stride-2 layers of model.channels ({shape[1]} -> {' -> '.join(map(str, sides))}), "
                        "so the decoder could not rebuild it; use fewer channels or kernel_size 3")
        count = self.model.parameter_count(shape)
        if count > MAX_PARAMETERS:
            field = "hidden" if self.model.arch == "mlp" else "channels"
            return (f"model.{field}: the model would have {count:,} parameters, over the limit of "
                    f"{MAX_PARAMETERS:,} (inputs of shape {tuple(shape)}); use fewer or narrower layers")
        return None

    # ---- the job interface (core/job.py) -----------------------------------------------------

    @property
    def storage_uri(self) -> str:
        return self.storage.uri

    def train_specs(self) -> list["TrainSpec"]:
        return [self]

    def trained_by_driver(self) -> "TrainSpec":
        return self

    def worker_resources(self) -> ResourcesSpec:
        return self.resources

    def peak_workers(self) -> int:
        return self.resources.num_workers

    def with_absolute_paths(self) -> "TrainSpec":
        return self.model_copy(update={"data": self.data.with_absolute_paths()})

    def with_queue_defaults(self, storage_uri: Optional[str], max_failures: int) -> "TrainSpec":
        """`storage.uri` (a queue on a cluster keeps runs where every node reaches them, e.g. a
        bucket) and `storage.max_failures` (a cluster can lose a node mid-run: the run goes on
        from its latest checkpoint instead of failing), where the spec leaves them unset."""
        chosen = self.storage.model_fields_set
        defaults: dict[str, Any] = {"uri": storage_uri} if storage_uri and "uri" not in chosen else {}
        if "max_failures" not in chosen:
            defaults["max_failures"] = max_failures
        return self.model_copy(update={"storage": self.storage.model_copy(update=defaults)})

    def read_locations(self) -> list[tuple[str, str]]:
        return [(f"data.{name}", getattr(self.data, name)) for name in DATA_LOCATIONS if getattr(self.data, name) is not None]

    def write_locations(self) -> list[tuple[str, str]]:
        return [("storage.uri", self.storage.uri)]

    def registered_names(self) -> list[tuple[str, str]]:
        name = self.tracking.register_as
        return [("tracking.register_as", name)] if name is not None else []


DATA_LOCATIONS = ("root", "source")  # the data fields that name a place to read from


def absolute_path(path: str) -> str:
    return str(Path(path).expanduser().resolve())
