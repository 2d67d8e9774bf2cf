"""The VAE of the article: an encoder giving (μ, log σ²) per latent dimension, a decoder giving
the likelihood's parameters, and z = μ + σ·ε in between. Plain PyTorch; no service imports."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

from vae_service.core import continuous_bernoulli

GAUSSIAN_VARIANCES = ("learned_shared", "learned_per_dim", "fixed")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (saved beside the weights as JSON)."""

    image_shape: tuple[int, ...] = (1, 28, 28)  # (C, H, W), or (features,) for vectors (mlp only)
    latent_dim: int = 20
    arch: str = "mlp"  # mlp | conv
    hidden: tuple[int, ...] = (400,)
    channels: tuple[int, ...] = (32, 64)
    likelihood: str = "bernoulli"  # bernoulli | continuous_bernoulli | gaussian
    kernel_size: int = 3  # of the encoder's convolutions; 3 for configs saved before it existed
    # gaussian only: learned_shared | learned_per_dim | fixed (σ = 1); the default is what
    # configs saved before it existed trained with.
    gaussian_variance: str = "learned_shared"

    @property
    def takes_vectors(self) -> bool:
        """The model takes feature vectors, not images: it draws no pictures."""
        return len(tuple(self.image_shape)) == 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        n_pixels = math.prod(config.image_shape)
        self.body = nn.Sequential(nn.Flatten(), _mlp([n_pixels, *config.hidden]), nn.ReLU())
        self.head = nn.Linear(config.hidden[-1], 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class MLPDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.image_shape = config.image_shape
        n_pixels = math.prod(config.image_shape)
        self.net = _mlp([config.latent_dim, *reversed(config.hidden), n_pixels])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)


def _conv_feature_size(config: ModelConfig) -> tuple[int, int]:
    """Spatial size after the stride-2 encoder convolutions with padding 1: ⌈side/2⌉ each with
    3×3 kernels, ⌊side/2⌋ with 4×4."""
    side = config.image_shape[1]
    for _ in config.channels:
        side = (side + 2 - config.kernel_size) // 2 + 1
    if side * 2 ** len(config.channels) < config.image_shape[1]:  # the decoder doubles it back
        raise ValueError(f"{config.kernel_size}×{config.kernel_size} convolutions shrink side {config.image_shape[1]} "
                         f"to {side} in {len(config.channels)} layers: too small for the decoder to rebuild")
    return side, config.channels[-1]


class ConvEncoder(nn.Module):
    """Stride-2 convolutions, 3×3 (28×28 → 7×7 with two) or 4×4 as in Higgins et al. (2017) and
    disentanglement_lib (64×64 → 4×4 with four), then linear."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = config.image_shape[0]
        for out_ch in config.channels:
            layers += [nn.Conv2d(in_ch, out_ch, config.kernel_size, stride=2, padding=1), nn.ReLU()]
            in_ch = out_ch
        side, ch = _conv_feature_size(config)
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * side * side, 256), nn.ReLU())
        self.head = nn.Linear(256, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class ConvDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.image_shape = config.image_shape
        side, ch = _conv_feature_size(config)
        self.side, self.ch = side, ch
        self.fc = nn.Sequential(nn.Linear(config.latent_dim, 256), nn.ReLU(), nn.Linear(256, ch * side * side), nn.ReLU())
        layers: list[nn.Module] = []
        chans = list(reversed(config.channels)) + [config.image_shape[0]]
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(chans) - 2:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.ch, self.side, self.side)
        out = self.deconv(h)
        # 28 is not a power of two: 7 → 14 → 28 works, but crop in case of odd sizes.
        return out[..., : self.image_shape[1], : self.image_shape[2]]


class VAE(nn.Module):
    """q(z|x) = N(μ(x), diag σ²(x)); p(z) = N(0, I); p(x|z) Bernoulli or continuous Bernoulli
    (logits), or Gaussian (mean)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        encoder, decoder = (MLPEncoder, MLPDecoder) if config.arch == "mlp" else (ConvEncoder, ConvDecoder)
        self.encoder = encoder(config)
        self.decoder = decoder(config)
        self.log_scale = _gaussian_log_scale(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: (continuous) Bernoulli logits, or the Gaussian mean."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = μ + σ·ε with ε ~ N(0, I): the sample stays differentiable in μ and log σ²."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] in [0, 1] for pictures."""
        out = self.decode(z)
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.config.likelihood == "continuous_bernoulli":
            return continuous_bernoulli.mean(out)  # not σ(l): the density's λ is not its mean
        return out.clamp(0, 1)

    def forward(self, x: torch.Tensor, code: str = "sample"):
        """Returns (decoder output, μ, log σ²). `code` picks z: "sample" (reparameterised),
        "mean" (z = μ, the deterministic autoencoder) or "detached" (a sample that passes no
        gradient back to the encoder). Training goes through forward so that DDP sees it."""
        mu, logvar = self.encode(x)
        if code == "mean":
            z = mu
        else:
            z = self.reparameterize(mu, logvar)
            if code == "detached":
                z = z.detach()
        return self.decode(z), mu, logvar


def _gaussian_log_scale(config: ModelConfig) -> Optional[nn.Parameter]:
    """The Gaussian's log σ: one learned scalar for all pixels (state_dict key `log_scale`, as
    ever), one learned per pixel, or None for σ = 1. None for the other likelihoods."""
    if config.gaussian_variance not in GAUSSIAN_VARIANCES:
        raise ValueError(f"gaussian_variance must be one of {', '.join(GAUSSIAN_VARIANCES)}, got {config.gaussian_variance!r}")
    if config.likelihood != "gaussian" or config.gaussian_variance == "fixed":
        return None
    shape = () if config.gaussian_variance == "learned_shared" else tuple(config.image_shape)
    return nn.Parameter(torch.zeros(shape))


def unwrap(model: nn.Module) -> VAE:
    """The VAE itself, also when DistributedDataParallel wraps it in .module."""
    return getattr(model, "module", model)


def build_model(config: ModelConfig) -> VAE:
    return VAE(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ModelConfig", "VAE", "build_model", "count_parameters", "unwrap"]
