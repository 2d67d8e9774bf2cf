"""The VAE core in plain PyTorch: no Ray, no MLflow, no data files."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vae_service.core.checkpoint import (PART_EPOCH, load_checkpoint, load_model, reached, restore_rng_state, rng_state,
                                         save_checkpoint, save_model)
from vae_service.core.loop import EpochStats, NonFiniteLoss, evaluate, train_batches, train_epoch
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.objective import Objective, compute_loss, kl_per_dim, reconstruction_nll


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.rand(16, 1, 28, 28)


def test_closed_form_kl_matches_torch_distributions_and_monte_carlo():
    torch.manual_seed(1)
    mu, logvar = torch.randn(64, 5), torch.randn(64, 5)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    closed = kl_per_dim(mu, logvar)
    torch.testing.assert_close(closed, kl_divergence(q, p), rtol=1e-5, atol=1e-5)
    z = q.sample((20_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(closed, monte_carlo, rtol=0.1, atol=0.05)


def test_kl_is_zero_exactly_at_the_prior():
    assert kl_per_dim(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0


def test_bernoulli_nll_equals_torch_distribution_in_nats(batch):
    logits = torch.randn_like(batch)
    binary = (batch > 0.5).float()
    expected = -torch.distributions.Bernoulli(logits=logits).log_prob(binary).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(logits, binary, "bernoulli"), expected)


def test_gaussian_nll_equals_torch_distribution(batch):
    mean, log_scale = torch.rand_like(batch), torch.tensor(-1.3)
    expected = -Normal(mean, log_scale.exp()).log_prob(batch).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(mean, batch, "gaussian", log_scale), expected)


def test_gradients_reach_mu_and_logvar_through_the_reparameterisation():
    mu = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    z = VAE.reparameterize(mu, logvar)
    (z.pow(2).sum()).backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_vae_loss_gives_encoder_gradients_for_mu_and_logvar(batch):
    model = VAE(ModelConfig(latent_dim=3, hidden=(32,)))
    compute_loss(model, batch, Objective()).loss.backward()
    head = model.encoder.head.weight.grad
    assert head[:3].abs().sum() > 0  # μ rows
    assert head[3:].abs().sum() > 0  # log σ² rows


def test_ae_is_deterministic_and_ignores_the_variance_head(batch):
    model = VAE(ModelConfig(latent_dim=3, hidden=(32,)))
    a = compute_loss(model, batch, Objective(kind="ae"))
    b = compute_loss(model, batch, Objective(kind="ae"))
    assert torch.equal(a.loss, b.loss)
    torch.testing.assert_close(a.loss, a.recon.mean())
    a.loss.backward()
    assert model.encoder.head.weight.grad[3:].abs().sum() == 0


def test_kl_only_trains_the_encoder_by_kl_alone(batch):
    torch.manual_seed(3)
    model = VAE(ModelConfig(latent_dim=3, hidden=(32,)))
    terms = compute_loss(model, batch, Objective(kind="kl_only"))
    terms.loss.backward()
    encoder_grad = [p.grad.clone() for p in model.encoder.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())

    model.zero_grad()
    mu, logvar = model.encode(batch)
    kl_per_dim(mu, logvar).sum(1).mean().backward()
    for expected, got in zip((p.grad for p in model.encoder.parameters()), encoder_grad):
        torch.testing.assert_close(got, expected)


def test_beta_warmup_and_capacity_schedules():
    objective = Objective(beta=4.0, warmup_epochs=2)
    assert objective.beta_at(0) == 0
    assert objective.beta_at(1) == pytest.approx(2.0)
    assert objective.beta_at(5) == 4.0
    capacity = Objective(capacity_max_nats=20.0, capacity_anneal_epochs=4)
    assert capacity.capacity_at(2) == pytest.approx(10.0)
    assert capacity.capacity_at(9) == 20.0


@pytest.mark.parametrize("shape,channels", [((1, 28, 28), (32, 64)), ((1, 64, 64), (32, 32, 64, 64))])
def test_conv_vae_round_trips_image_shapes(shape, channels):
    model = VAE(ModelConfig(image_shape=shape, arch="conv", channels=channels, latent_dim=6))
    x = torch.rand(2, *shape)
    out, mu, logvar = model(x)
    assert out.shape == x.shape
    assert mu.shape == logvar.shape == (2, 6)


def test_training_lowers_the_loss_and_evaluation_reports_per_image_terms(batch):
    torch.manual_seed(0)
    images = (torch.rand(256, 1, 28, 28) * 255).to(torch.uint8)
    model = VAE(ModelConfig(latent_dim=4, hidden=(64,)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = evaluate(model, images)
    for epoch in range(3):
        stats = train_epoch(model, optimizer, images, torch.randperm(256), 32, Objective(), epoch)
    after = evaluate(model, images)
    assert stats.images == 256
    assert after["neg_elbo"] < before["neg_elbo"]
    assert after["neg_elbo"] == pytest.approx(after["recon"] + after["kl"])
    assert sum(after["kl_per_dim"]) == pytest.approx(after["kl"], rel=1e-4)
    assert 0 <= after["active_units"] <= 4


def test_non_finite_loss_names_epoch_and_step():
    images = (torch.rand(64, 1, 28, 28) * 255).to(torch.uint8)
    model = VAE(ModelConfig(latent_dim=2, hidden=(16,)))
    with torch.no_grad():
        model.decoder.net[-1].bias[3] = float("nan")
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(NonFiniteLoss, match="non-finite loss at epoch 4 step 0"):
        train_epoch(model, optimizer, images, torch.arange(64), 16, Objective(), epoch=4)


def test_checkpoint_round_trip_restores_weights_and_adam_state(tmp_path, batch):
    model = VAE(ModelConfig(latent_dim=3, hidden=(32,)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    compute_loss(model, batch, Objective()).loss.backward()
    optimizer.step()
    save_checkpoint(tmp_path, model, optimizer, {"epoch": 5})

    fresh = VAE(ModelConfig(latent_dim=3, hidden=(32,)))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1.0)
    state = load_checkpoint(tmp_path, fresh, fresh_opt)
    assert state["epoch"] == 5
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.param_groups[0]["lr"] == 3e-4
    for pa, pb in zip(model.parameters(), fresh.parameters()):
        sa, sb = optimizer.state[pa], fresh_opt.state[pb]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert not list(tmp_path.glob("*.pkl"))


def test_an_epoch_stopped_at_a_step_and_continued_from_its_checkpoint_equals_the_uninterrupted_epoch(tmp_path):
    """What a stopped run does (training/worker.py): stop after step k, checkpoint the weights,
    Adam, the sums and the random state; a fresh process restores them and trains steps k+1…
    of the same order. Weights, sums and image counts equal the uninterrupted epoch's, bit for bit."""
    images = (torch.rand(320, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    order = torch.randperm(320, generator=torch.Generator().manual_seed(2))
    batches = lambda first=0: (images[order[i : i + 32]] for i in range(first * 32, 320, 32))  # noqa: E731
    objective = Objective(beta=2.0)

    def fresh() -> tuple[VAE, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = VAE(ModelConfig(latent_dim=4, hidden=(32,)))
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    model, optimizer = fresh()
    torch.manual_seed(7)
    whole = train_batches(model, optimizer, batches(), 10, objective, epoch=1, binarize="dynamic")

    stopped_model, stopped_optimizer = fresh()
    torch.manual_seed(7)
    asked = iter([False, False, True])
    part = train_batches(stopped_model, stopped_optimizer, batches(), 10, objective, epoch=1, binarize="dynamic",
                         should_stop=lambda: next(asked), sync_s=0)  # a sync point (where a stop is taken) every step
    assert (part.stopped, part.steps, part.images) == (True, 3, 96)
    save_checkpoint(tmp_path, stopped_model, stopped_optimizer, {"epoch": 0, PART_EPOCH: {
        "steps": part.steps, "sums": [part.loss_sum, part.recon_sum, part.kl_sum], "images": part.images,
        "rng": rng_state(torch.device("cpu"))}})
    torch.manual_seed(123)  # whatever the new process's state was

    model_again, optimizer_again = fresh()
    state = load_checkpoint(tmp_path, model_again, optimizer_again)
    assert reached(state) == (0, 3)
    saved = state[PART_EPOCH]
    restore_rng_state(saved["rng"], torch.device("cpu"))
    done = EpochStats(images=saved["images"], steps=saved["steps"], loss_sum=saved["sums"][0], recon_sum=saved["sums"][1],
                      kl_sum=saved["sums"][2])
    rest = train_batches(model_again, optimizer_again, batches(first=3), 10, objective, epoch=1, binarize="dynamic", done=done)
    assert (rest.stopped, rest.steps, rest.images) == (False, 10, 320)
    assert (rest.loss_sum, rest.recon_sum, rest.kl_sum) == (whole.loss_sum, whole.recon_sum, whole.kl_sum)
    for a, b in zip(model.parameters(), model_again.parameters()):
        assert torch.equal(a, b)


def test_saved_model_rebuilds_from_json_config(tmp_path):
    model = VAE(ModelConfig(latent_dim=5, arch="conv", likelihood="gaussian")).eval()
    save_model(tmp_path, model)
    loaded = load_model(tmp_path)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded.encode(x)[0], model.encode(x)[0])
    assert loaded.config == model.config


def test_objective_defaults_are_the_specs_defaults():
    from vae_service.core import from_spec
    from vae_service.core.spec import CapacitySpec, ObjectiveSpec, TrainSpec

    capacity, objective = CapacitySpec(), ObjectiveSpec()
    assert (Objective().capacity_anneal_epochs, Objective().capacity_gamma) == (capacity.anneal_epochs, capacity.gamma)
    assert (Objective().kind, Objective().beta, Objective().warmup_epochs) == (objective.kind, objective.beta, objective.warmup_epochs)
    built = from_spec.objective(TrainSpec.model_validate({"objective": {"capacity": {"max_nats": 5}}}))
    assert (built.capacity_max_nats, built.capacity_anneal_epochs, built.capacity_gamma) == (5.0, capacity.anneal_epochs, capacity.gamma)


def test_epoch_record_names_every_metric_once():
    from vae_service.core import metrics as M

    val = {"neg_elbo": 3.0, "recon": 2.0, "kl": 1.0, "kl_per_dim": [0.5, 0.5], "active_units": 2}
    record = M.epoch_record(4, {M.TRAIN_LOSS: 3.5}, {M.SHARD_OVERLAP: 0}, val, {"neg_elbo": 3.1, "recon": 2.1, "kl": 1.0})
    assert record[M.EPOCH] == 4 and record[M.VAL_NEG_ELBO] == 3.0 and record[M.ACTIVE_UNITS] == 2
    assert record[M.TEST_NEG_ELBO] == 3.1 and record[M.VAL_KL_PER_DIM] == [0.5, 0.5]
    assert M.epoch_record(4, {}, {}) == {M.EPOCH: 4}
    assert set(M.summary(record)) == set(M.SUMMARY) | {M.TEST_NEG_ELBO, M.TEST_RECON, M.TEST_KL}
    assert M.kl_dim_names(3) == ["val_kl_dim_01", "val_kl_dim_02", "val_kl_dim_03"]
    assert M.kl_dim_names(120)[-1] == "val_kl_dim_120"
