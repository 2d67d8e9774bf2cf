"""core.likelihood: the importance-sampled log p(x) against a closed form (probabilistic PCA),
its chunking and numerical range, and its bounds on a small VAE trained on MNIST."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vae_service.core import likelihood as L
from vae_service.core.data import binarize_static, epoch_shard, load_mnist
from vae_service.core.loop import train_epoch
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.objective import Objective

SHAPE, LATENT, SIGMA = (1, 4, 4), 3, 0.5
DIM = math.prod(SHAPE)


class PPCA(nn.Module):
    """x = W z + b + σ ε with z ~ N(0, I), behind the VAE's interface (Gaussian likelihood).

    W's columns are orthogonal, so the posterior N(M⁻¹Wᵀ(x − b), σ² M⁻¹) with M = WᵀW + σ²I is
    diagonal, which is exactly what the encoder gives. `shift` (in posterior standard
    deviations) and `widen` (variance factor) make the encoder a deliberately wrong proposal.
    """

    def __init__(self, seed: int = 0, shift: float = 0.0, widen: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(DIM, LATENT, generator=g, dtype=torch.float64))
        scales = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
        self.W = nn.Parameter(q * scales, requires_grad=False)  # (D, L), orthogonal columns
        self.b = nn.Parameter(torch.randn(DIM, generator=g, dtype=torch.float64), requires_grad=False)
        self.log_scale = torch.tensor(math.log(SIGMA), dtype=torch.float64)
        self.config = SimpleNamespace(likelihood="gaussian")
        self.shift, self.widen = shift, widen

    def encode(self, x):
        m = (self.W * self.W).sum(dim=0) + SIGMA**2  # diagonal of M
        mu = ((x.flatten(1) - self.b) @ self.W) / m
        logvar = torch.log(SIGMA**2 / m).expand_as(mu)
        return mu + self.shift * torch.exp(0.5 * logvar), logvar + math.log(self.widen)

    def decode(self, z):
        return (z @ self.W.T + self.b).view(-1, *SHAPE)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(DIM, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x.flatten(1))

    def sample(self, n: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
        return self.decode(z) + SIGMA * torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)


def test_exact_posterior_gives_the_exact_likelihood_for_any_k():
    model = PPCA()
    x = model.sample(64)
    exact = model.exact_log_px(x)
    torch.manual_seed(0)
    for k in (1, 10):
        log_w = L.log_importance_weights(model, x, k)
        assert log_w.shape == (64, k)
        # every weight is p(x) itself: a zero-variance estimator
        assert torch.allclose(log_w, exact.unsqueeze(1).expand_as(log_w), atol=1e-8)
        estimate = L.importance_sampled_log_px(model, x, k)
        assert estimate.shape == (64,)
        assert (estimate - exact).abs().max() < 0.01


def test_importance_sampling_corrects_a_poor_proposal():
    model = PPCA(shift=0.75, widen=2.0)
    x = model.sample(32)
    exact = model.exact_log_px(x)
    torch.manual_seed(0)
    large = L.importance_sampled_log_px(model, x, 20000)  # ≈ 0.01 nats standard error per image
    assert (large - exact).abs().max() < 0.05
    assert abs(float((large - exact).mean())) < 0.01
    # K = 1 estimates the ELBO, below log p(x) by KL(q ‖ posterior) = 1.3 nats with this proposal
    elbo = L.log_importance_weights(model, x, 2000).mean(dim=1)  # E_q[log w], to ±0.03
    assert ((exact - elbo) > 1.0).all()
    assert float((exact - L.importance_sampled_log_px(model, x, 1)).mean()) > 0.3


def test_chunks_combine_to_the_logsumexp_of_all_weights(monkeypatch):
    """The chunks' logsumexps combine exactly; fed fixed weights, the answer is known."""
    batch, k = 5, 23
    weights = torch.randn(batch, k, dtype=torch.float64) * 50 - 3000  # a wide range, far below 0
    seen = []

    def fixed_weights(vae, x, n):
        start = sum(seen)
        seen.append(n)
        return weights[:, start : start + n]

    monkeypatch.setattr(L, "log_importance_weights", fixed_weights)
    x = torch.zeros(batch, *SHAPE)
    chunked = L.importance_sampled_log_px(None, x, k, max_points=4 * batch)
    assert seen == [4, 4, 4, 4, 4, 3]
    expected = torch.logsumexp(weights, dim=1) - math.log(k)
    assert torch.allclose(chunked, expected, rtol=0, atol=1e-9)


def test_chunked_and_unchunked_estimates_agree():
    model = PPCA(shift=0.75, widen=2.0)
    x = model.sample(16)
    torch.manual_seed(0)
    whole = L.importance_sampled_log_px(model, x, 20000)
    chunked = L.importance_sampled_log_px(model, x, 20000, max_points=16 * 3000)  # 7 chunks
    assert torch.isfinite(chunked).all()
    assert (whole - chunked).abs().max() < 0.1
    # fewer points than images: still one sample per image per chunk
    assert torch.isfinite(L.importance_sampled_log_px(model, x, 3, max_points=4)).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_far_out_data_stays_finite(dtype):
    """Log weights near −10⁴: exp underflows to 0, logsumexp does not."""
    model = PPCA(shift=0.75, widen=2.0)
    x = model.sample(8) + 18.0
    exact = model.exact_log_px(x)
    model, x = model.to(dtype), x.to(dtype)
    model.log_scale = model.log_scale.to(dtype)
    assert float(exact.max()) < -5000
    torch.manual_seed(0)
    assert float(L.log_importance_weights(model, x, 100).exp().sum()) == 0.0  # the naive mean is log 0
    estimate = L.importance_sampled_log_px(model, x, 5000)
    assert torch.isfinite(estimate).all()
    # sampling error ≈ 0.02 nats; float32 (7 digits) adds a few hundredths at 10⁴ nats
    assert (estimate.double() - exact).abs().max() < (0.1 if dtype == torch.float64 else 0.2)


# ---------------------------------------------------------------------------------------------
# a small VAE trained on MNIST


@pytest.fixture(scope="module")
def mnist_vae():
    data = load_mnist(None, download=False, limit=2000)
    torch.manual_seed(0)
    vae = VAE(ModelConfig(hidden=(64,), latent_dim=4))
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(5):  # 5 × 57 steps of 32
        indices = epoch_shard(len(data.train), epoch, 0, 1, seed=0)
        train_epoch(vae, optimizer, data.train.images, indices, 32, Objective(), epoch, "dynamic", generator)
    return vae, data.test.images[:200]


def test_trained_vae_bounds_and_monotone_in_k(mnist_vae):
    vae, images = mnist_vae
    progress = []
    reports = {
        k: L.evaluate_likelihood(vae, images, binarize="dynamic", k=k, on_batch=lambda d, t: progress.append((d, t)))
        for k in (1, 10, 100, 1000)
    }
    assert progress[:2] == [(100, 200), (200, 200)]
    for k, report in reports.items():
        assert report.k == k and report.n_images == 200 and report.binary_data
        assert 1 <= report.active_units <= 4
        assert math.isfinite(report.nll) and report.seconds > 0
    # neg_elbo is the same number for every K (same seed, same images)
    assert len({r.neg_elbo for r in reports.values()}) == 1
    # K = 1 is itself a one-sample −ELBO estimate; from there on the bound must be below
    assert abs(reports[1].nll - reports[1].neg_elbo) < 1.5
    for k in (10, 100, 1000):
        assert reports[k].nll <= reports[k].neg_elbo + 0.01
    nlls = [reports[k].nll for k in (1, 10, 100, 1000)]
    assert all(b <= a + 0.1 for a, b in zip(nlls, nlls[1:])), nlls
    assert nlls[-1] < nlls[0] - 0.5, nlls  # a real, not a rounding, gain


def test_reports_say_when_the_data_are_not_binary(mnist_vae):
    vae, images = mnist_vae
    grey = L.evaluate_likelihood(vae, images[:50], binarize="none", k=5)
    assert not grey.binary_data
    static = L.evaluate_likelihood(vae, binarize_static(images[:50]), binarize="static", k=5)
    assert static.binary_data
    gaussian = VAE(ModelConfig(hidden=(16,), latent_dim=2, likelihood="gaussian"))
    assert not L.evaluate_likelihood(gaussian, images[:50], binarize="dynamic", k=5).binary_data
    with pytest.raises(ValueError):
        L.evaluate_likelihood(vae, images[:50], binarize="sometimes", k=5)


def test_reruns_agree_and_leave_the_callers_random_state_alone(mnist_vae):
    vae, images = mnist_vae
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = L.evaluate_likelihood(vae, images[:50], binarize="dynamic", k=20, batch_size=20, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    second = L.evaluate_likelihood(vae, images[:50], binarize="dynamic", k=20, batch_size=20, seed=7)
    assert (first.nll, first.neg_elbo, first.active_units) == (second.nll, second.neg_elbo, second.active_units)
    assert set(first.to_dict()) == {"nll", "neg_elbo", "active_units", "k", "n_images", "binary_data", "seconds"}
