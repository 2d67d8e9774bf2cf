"""The likelihoods p(x|z) (core/objective.reconstruction_nll, core/continuous_bernoulli.py): each
per-example log-likelihood against torch.distributions, the continuous Bernoulli where torch's
own formula runs out, the models each one builds, and a short continuous-Bernoulli training
whose −ELBO is a bound the importance-sampled NLL respects."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal

from vae_service.core import continuous_bernoulli as CB
from vae_service.core import from_spec
from vae_service.core import metrics as M
from vae_service.core.checkpoint import load_model, save_model
from vae_service.core.data import epoch_shard, load_mnist
from vae_service.core.likelihood import evaluate_likelihood
from vae_service.core.loop import train_epoch
from vae_service.core.model import VAE, ModelConfig, count_parameters
from vae_service.core.objective import Objective, reconstruction_nll
from vae_service.core.spec import ModelSpec, TrainSpec

SHAPE = (1, 28, 28)


def per_example(log_prob: torch.Tensor) -> torch.Tensor:
    return log_prob.flatten(1).sum(dim=1)


def grey_levels(n: int = 6, dtype=torch.float32) -> torch.Tensor:
    """Grey levels in [0, 1], with exact 0s and 1s among them."""
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=dtype)
    x[:, :, :3] = 0.0
    x[:, :, -3:] = 1.0
    return x


def test_bernoulli_matches_torch():
    logits = 4 * torch.randn(6, *SHAPE, dtype=torch.float64)
    x = (grey_levels(dtype=torch.float64) > 0.5).double()
    expected = per_example(Bernoulli(logits=logits).log_prob(x))
    torch.testing.assert_close(-reconstruction_nll(logits, x, "bernoulli"), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variance, shape", [("learned_shared", ()), ("learned_per_dim", SHAPE), ("fixed", None)])
def test_gaussian_matches_torch_for_each_variance(variance, shape):
    vae = VAE(ModelConfig(hidden=(16,), latent_dim=2, likelihood="gaussian", gaussian_variance=variance)).double()
    if shape is None:  # σ = 1, nothing learned
        assert vae.log_scale is None and "log_scale" not in vae.state_dict()
        scale = torch.ones((), dtype=torch.float64)
    else:
        assert vae.log_scale.shape == shape and vae.log_scale.requires_grad
        with torch.no_grad():
            vae.log_scale.copy_(0.5 * torch.randn(shape, dtype=torch.float64) - 1.0)
        scale = vae.log_scale.detach().exp()
    # float64: these are sums of 784 terms, and the question is the formula, not float32's rounding
    mean, x = torch.rand(6, *SHAPE, dtype=torch.float64), grey_levels(dtype=torch.float64)
    expected = per_example(Normal(mean, scale).log_prob(x))
    torch.testing.assert_close(-reconstruction_nll(mean, x, "gaussian", vae.log_scale).detach(), expected, rtol=0, atol=1e-4)


def cb_logits(dtype=torch.float64) -> torch.Tensor:
    """Logits of every regime, 784 per image: ordinary, at and around λ = ½ (0, tiny, either
    side of the Taylor cut) and large (to ±20: beyond, torch's own log C goes wrong, below)."""
    g = torch.Generator().manual_seed(2)
    ordinary = 3 * torch.randn(6, 784 - 264, generator=g, dtype=dtype)
    near_half = torch.randn(6, 200, generator=g, dtype=dtype) * torch.logspace(-8, -1, 200, dtype=dtype)
    cut = CB.TAYLOR_BELOW + torch.tensor([-1e-6, 0.0, 1e-6], dtype=dtype)
    special = torch.cat([torch.zeros(1, dtype=dtype), cut, -cut, torch.linspace(-20, 20, 57, dtype=dtype)])
    return torch.cat([ordinary, near_half, special.expand(6, -1)], dim=1).reshape(6, *SHAPE)


def test_continuous_bernoulli_matches_torch_in_every_regime():
    logits, x = cb_logits(), grey_levels(dtype=torch.float64)
    expected = per_example(ContinuousBernoulli(logits=logits).log_prob(x))
    torch.testing.assert_close(-reconstruction_nll(logits, x, "continuous_bernoulli"), expected, rtol=0, atol=1e-4)
    # float32, the training dtype, against the float64 numbers, pixel by pixel
    torch.testing.assert_close(CB.log_normalizer(logits.float()).double(), CB.log_normalizer(logits), rtol=0, atol=1e-6)


def test_continuous_bernoulli_is_exact_where_torch_clamps_lambda():
    # log C(l) = log(l / tanh(l/2)) → log|l|; torch clamps λ = σ(l) first, so from |l| ≈ 16 in
    # float32 (36 in float64) its log C stops growing.
    logits = torch.tensor([-1e4, -1e3, -50.0, 50.0, 1e3, 1e4], requires_grad=True)
    torch.testing.assert_close(CB.log_normalizer(logits), logits.detach().abs().log())
    mean = CB.mean(logits)
    assert ((mean > 0) & (mean < 1)).all()
    torch.testing.assert_close(torch.minimum(mean, 1 - mean), 1 / logits.detach().abs())  # E[x] → 1 − 1/l
    x = torch.tensor([0.0, 0.3, 1.0, 0.0, 0.7, 1.0])
    nll = reconstruction_nll(logits.view(1, -1), x.view(1, -1), "continuous_bernoulli")
    nll.sum().backward()
    assert torch.isfinite(nll).all() and torch.isfinite(logits.grad).all()


def test_continuous_bernoulli_gradients_are_finite_and_smooth_at_one_half():
    logits = torch.tensor([0.0, 1e-7, -1e-4, CB.TAYLOR_BELOW - 1e-4, CB.TAYLOR_BELOW + 1e-4], dtype=torch.float64, requires_grad=True)
    (CB.log_normalizer(logits).sum() + CB.mean(logits).sum()).backward()
    l = logits.detach()
    # d log C / dl = l/6 − 7l³/360 + 31l⁵/15120 − …, dE[x]/dl = 1/12 − l²/240 + l⁴/6048 − …:
    # the same on both sides of the cut
    series = l / 6 - 7 * l**3 / 360 + 31 * l**5 / 15120 + 1 / 12 - l**2 / 240 + l**4 / 6048
    torch.testing.assert_close(logits.grad, series, rtol=0, atol=1e-10)


def test_continuous_bernoulli_mean_image_is_the_distributions_mean():
    torch.manual_seed(0)
    vae = VAE(ModelConfig(hidden=(16,), latent_dim=2, likelihood="continuous_bernoulli")).double()
    with torch.no_grad():
        vae.decoder.net[-1].weight.mul_(5)  # logits to about ±8 as well as near 0 (beyond ±20, torch is off)
        z = 3 * torch.randn(8, 2, dtype=torch.float64)
        logits = vae.decode(z)
        torch.testing.assert_close(vae.mean_image(z), ContinuousBernoulli(logits=logits).mean, rtol=0, atol=1e-6)
        assert not torch.allclose(vae.mean_image(z), torch.sigmoid(logits), atol=1e-3)
    logits = cb_logits()
    torch.testing.assert_close(CB.mean(logits), ContinuousBernoulli(logits=logits).mean, rtol=0, atol=1e-6)


def test_an_unknown_likelihood_is_an_error_not_a_gaussian():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        reconstruction_nll(torch.zeros(1, *SHAPE), torch.zeros(1, *SHAPE), "poisson")
    with pytest.raises(ValueError, match="gaussian_variance"):
        VAE(ModelConfig(likelihood="gaussian", gaussian_variance="learned"))


@pytest.mark.parametrize("model, log_scale_shape", [
    ({"likelihood": "bernoulli"}, None),
    ({"likelihood": "continuous_bernoulli"}, None),
    ({"likelihood": "gaussian"}, ()),
    ({"likelihood": "gaussian", "gaussian_variance": "learned_per_dim"}, SHAPE),
    ({"likelihood": "gaussian", "gaussian_variance": "fixed"}, None),
    ({"arch": "conv", "likelihood": "gaussian", "gaussian_variance": "learned_per_dim"}, SHAPE),
])
def test_each_kind_builds_from_its_spec_with_the_counted_parameters(model, log_scale_shape, tmp_path):
    spec = TrainSpec.model_validate({"model": {"hidden": [32], "latent_dim": 3, **model}})
    vae = VAE(from_spec.model_config(spec, SHAPE))
    assert count_parameters(vae) == spec.model.parameter_count(SHAPE)
    state = vae.state_dict()
    assert (state["log_scale"].shape if "log_scale" in state else None) == log_scale_shape
    save_model(tmp_path, vae)
    assert load_model(tmp_path).config == vae.config


def test_a_config_saved_before_the_variance_choice_loads_as_the_shared_variant(tmp_path):
    vae = VAE(ModelConfig(hidden=(16,), latent_dim=2, likelihood="gaussian"))
    save_model(tmp_path, vae)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["model_config"]["gaussian_variance"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path)  # the old state_dict, key `log_scale`, loads strictly
    assert loaded.config.gaussian_variance == "learned_shared" and loaded.log_scale.shape == ()
    assert TrainSpec.model_validate({"model": {"likelihood": "gaussian"}}).model.gaussian_variance == "learned_shared"


def test_the_variance_choice_needs_a_gaussian():
    with pytest.raises(ValueError, match="gaussian_variance: learned_per_dim applies to likelihood: gaussian only"):
        ModelSpec(likelihood="continuous_bernoulli", gaussian_variance="learned_per_dim")


def test_continuous_bernoulli_trains_on_grey_levels_and_its_elbo_bounds_the_likelihood():
    data = load_mnist(None, download=False, limit=1000)
    torch.manual_seed(0)
    vae = VAE(ModelConfig(hidden=(64,), latent_dim=4, likelihood="continuous_bernoulli"))
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    neg_elbos = []
    for epoch in range(2):
        indices = epoch_shard(len(data.train), epoch, 0, 1, seed=0)
        stats = train_epoch(vae, optimizer, data.train.images, indices, 32, Objective(), epoch, "none")
        neg_elbos.append(stats.as_metrics()[M.TRAIN_NEG_ELBO])
    assert all(math.isfinite(v) for v in neg_elbos) and neg_elbos[1] < neg_elbos[0], neg_elbos
    report = evaluate_likelihood(vae, data.test.images[:100], binarize="none", k=50)
    assert math.isfinite(report.nll) and math.isfinite(report.neg_elbo)
    assert report.nll <= report.neg_elbo + 0.5, (report.nll, report.neg_elbo)
    assert not report.binary_data  # a density on [0, 1], not the NLL of binary data
