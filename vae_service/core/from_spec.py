"""A validated spec turned into the objects that train: data, model config, objective.

The one place that reads a TrainSpec for runtime objects, so the Ray Train worker, the driver's
figures and the plain-PyTorch benchmark build exactly the same things (and none of them needs
Ray to do it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from pydantic import ValidationError

from vae_service.core.data import DataError, Dataset, binarize_static, idx_dataset, load_idx, locate_idx
from vae_service.core.dsprites import SHAPES, DSprites, find_dsprites, load_dsprites
from vae_service.core.model import ModelConfig
from vae_service.core.objective import Objective
from vae_service.core.preprocessing import Preprocessing
from vae_service.core.spec import IMAGE_SHAPES, TrainSpec


def trained_with(config: dict) -> TrainSpec:
    """The spec a saved model was trained with (its config.json holds it), to evaluate it on the
    same data, binarised the same way (its test split: `sources.holdout.model_test_split`)."""
    try:
        return TrainSpec.model_validate(config["spec"])
    except (KeyError, TypeError, ValidationError):
        raise DataError("the model's config.json holds no valid training spec: cannot tell which data "
                        "it was trained on, or how it was binarised") from None


def images(spec: TrainSpec) -> Dataset:
    """The spec's data as stored (uint8 grey levels), split into train / validation / test."""
    d = spec.data
    if d.dataset == "dsprites":
        return load_dsprites(d.root, val_fraction=d.val_fraction, limit=d.limit)
    # mnist, fashion-mnist: the named IDX data sets
    return load_idx(d.dataset, d.root, download=d.download, val_fraction=d.val_fraction, limit=d.limit)


def named_preprocessing(spec: TrainSpec) -> Preprocessing:
    """A named data set's input shape and label names, without loading it."""
    d = spec.data
    if d.dataset == "dsprites":
        return Preprocessing(input_shape=IMAGE_SHAPES[d.dataset], label_kind="shape", label_names=SHAPES)
    idx = idx_dataset(d.dataset)
    return Preprocessing(input_shape=IMAGE_SHAPES[d.dataset], label_kind=idx.label_kind, label_names=idx.label_names)


def check_data(spec: TrainSpec) -> None:
    """Raises DataError, before any training, when the spec's data cannot be found or fetched
    (dSprites can always be rendered; only a data.root without the original is an error)."""
    d = spec.data
    if d.dataset == "dsprites":
        find_dsprites(d.root)
    else:
        locate_idx(d.dataset, d.root, d.download)


def factor_data(spec: TrainSpec) -> Optional[DSprites]:
    """The spec's data by generative factors, for the disentanglement metrics; None for data
    without known factors (MNIST)."""
    return DSprites.open(spec.data.root) if spec.data.dataset == "dsprites" else None


def training_data(spec: TrainSpec, device: Optional[torch.device] = None) -> Dataset:
    """What the model trains and is evaluated on: `images`, binarised once when the spec says
    `binarize: static` (dynamic binarisation happens per batch, in core.loop)."""
    data = images(spec)
    if spec.data.binarize == "static":
        data = Dataset(*(replace(s, images=binarize_static(s.images, seed=i)) for i, s in enumerate((data.train, data.val, data.test))))
    return data.to(device) if device is not None else data


def model_config(spec: TrainSpec, image_shape: tuple[int, int, int]) -> ModelConfig:
    m = spec.model
    return ModelConfig(
        image_shape=tuple(image_shape),
        latent_dim=m.latent_dim,
        arch=m.arch,
        hidden=tuple(m.hidden),
        channels=tuple(m.channels),
        kernel_size=m.kernel_size,
        likelihood=m.likelihood,
        gaussian_variance=m.gaussian_variance,
    )


def objective(spec: TrainSpec) -> Objective:
    o, capacity = spec.objective, spec.objective.capacity
    if capacity is None:
        return Objective(kind=o.kind, beta=o.beta, warmup_epochs=o.warmup_epochs)
    return Objective(kind=o.kind, beta=o.beta, warmup_epochs=o.warmup_epochs, capacity_max_nats=capacity.max_nats,
                     capacity_anneal_epochs=capacity.anneal_epochs, capacity_gamma=capacity.gamma)
