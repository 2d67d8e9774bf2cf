"""A validated spec turned into the objects that train: data, model config, objective.

The one place that reads a TrainSpec for runtime objects, so the Ray Train worker, the driver's
figures and the plain-PyTorch benchmark build exactly the same things (and none of them needs
Ray to do it).
"""

from __future__ import annotations

from typing import Optional

import torch

from vae_service.core.data import Dataset, binarize_static, load_mnist
from vae_service.core.model import ModelConfig
from vae_service.core.objective import Objective
from vae_service.core.spec import TrainSpec


def images(spec: TrainSpec) -> Dataset:
    """The spec's data as stored (uint8 grey levels), split into train / validation / test."""
    d = spec.data
    return load_mnist(d.root, download=d.download, val_fraction=d.val_fraction, limit=d.limit)


def training_data(spec: TrainSpec, device: Optional[torch.device] = None) -> Dataset:
    """What the model trains and is evaluated on: `images`, binarised once when the spec says
    `binarize: static` (dynamic binarisation happens per batch, in core.loop)."""
    data = images(spec)
    if spec.data.binarize == "static":
        data = Dataset(*(type(s)(binarize_static(s.images, seed=i), s.labels) for i, s in enumerate((data.train, data.val, data.test))))
    return data.to(device) if device is not None else data


def model_config(spec: TrainSpec, image_shape: tuple[int, int, int]) -> ModelConfig:
    m = spec.model
    return ModelConfig(
        image_shape=tuple(image_shape),
        latent_dim=m.latent_dim,
        arch=m.arch,
        hidden=tuple(m.hidden),
        channels=tuple(m.channels),
        likelihood=m.likelihood,
    )


def objective(spec: TrainSpec) -> Objective:
    o, capacity = spec.objective, spec.objective.capacity
    if capacity is None:
        return Objective(kind=o.kind, beta=o.beta, warmup_epochs=o.warmup_epochs)
    return Objective(kind=o.kind, beta=o.beta, warmup_epochs=o.warmup_epochs, capacity_max_nats=capacity.max_nats,
                     capacity_anneal_epochs=capacity.anneal_epochs, capacity_gamma=capacity.gamma)
