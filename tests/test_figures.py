"""The article's figures, drawn from tiny untrained VAEs and random images (no data files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from vae_service.core.data import to_unit_float
from vae_service.core.model import VAE, ModelConfig
from vae_service.viz import canvas as C
from vae_service.viz import figures as F
from vae_service.viz import latents as L
from vae_service.viz.sweep_figures import active_units_map
from png_checks import picture, strip_tiles


def _model(seed: int, **config) -> VAE:
    torch.manual_seed(seed)
    return VAE(ModelConfig(**config))


@pytest.fixture(scope="module")
def mlp2() -> VAE:
    return _model(0, latent_dim=2)


@pytest.fixture(scope="module")
def mlp5() -> VAE:
    return _model(1, latent_dim=5)


@pytest.fixture(scope="module")
def conv3() -> VAE:
    return _model(2, latent_dim=3, arch="conv")


@pytest.fixture(params=["mlp2", "mlp5", "conv3"])
def any_model(request) -> VAE:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (60, 1, 28, 28), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.arange(60) % 10


def n_images(fig: Figure) -> int:
    return sum(len(ax.images) for ax in fig.axes)


def bernoulli_mean(model: VAE, z: torch.Tensor) -> np.ndarray:
    """E[x | z] written out here, not through the model's or the figures' helpers: σ(decoder(z))
    for these Bernoulli models, (N, H, W) for one channel."""
    assert model.config.likelihood == "bernoulli", model.config.likelihood
    with torch.no_grad():
        return torch.sigmoid(model.decode(z))[:, 0].numpy()


def decode_mu(model: VAE, x: torch.Tensor) -> np.ndarray:
    """E[x | z = μ(x)] as imshow gets it: (N, H, W) for one channel."""
    with torch.no_grad():
        mu, _ = model.eval().encode(x)
    return bernoulli_mean(model, mu)


def assert_valid_png(path) -> None:
    """A PNG whose pixels decode (PIL) and hold a drawing: not blank, not one colour."""
    picture(path)


# ---------------------------------------------------------------------------------------------
# reconstructions


def test_reconstructions_rows_of_inputs_and_reconstructions(any_model, images):
    fig = F.reconstructions(any_model, images, n=6)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 12 and n_images(fig) == 12
    assert "reconstruction" in fig.get_suptitle().lower()
    assert fig.axes[0].get_ylabel() == "input" and "reconstruction" in fig.axes[6].get_ylabel()
    x = to_unit_float(images[:6])
    top = np.stack([ax.images[0].get_array() for ax in fig.axes[:6]])
    bottom = np.stack([ax.images[0].get_array() for ax in fig.axes[6:]])
    np.testing.assert_allclose(top, x[:, 0].numpy())
    np.testing.assert_allclose(bottom, decode_mu(any_model, x), atol=1e-6)


def test_uint8_and_float_images_give_the_same_figure(mlp2, images):
    from_uint8 = F.reconstructions(mlp2, images, n=3)
    from_float = F.reconstructions(mlp2, to_unit_float(images), n=3)
    for a, b in zip(from_uint8.axes, from_float.axes):
        np.testing.assert_array_equal(a.images[0].get_array(), b.images[0].get_array())


def test_n_larger_than_the_batch_uses_every_image(mlp2, images):
    fig = F.reconstructions(mlp2, images[:3], n=8)
    assert n_images(fig) == 6


def test_model_mode_is_restored_and_no_gradients_flow(images):
    model = _model(3, latent_dim=4)
    model.train()
    F.reconstructions(model, images, n=2)
    F.latent_dimensions(model, images, n=2)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    F.prior_samples(model, n=4)
    assert not model.training


def test_bad_image_shape_is_a_clear_error(mlp2):
    with pytest.raises(ValueError, match="do not fit"):
        F.reconstructions(mlp2, torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------
# prior samples and the manifold


def test_prior_samples_grid_is_seeded(any_model):
    fig = F.prior_samples(any_model, n=16, seed=5)
    assert len(fig.axes) == 1 and n_images(fig) == 1
    assert "prior" in fig.get_suptitle() and "N(0, I)" in fig.get_suptitle()
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (4 * 30 - 2, 4 * 30 - 2)  # 4×4 cells of 28 px, 2 px apart
    np.testing.assert_array_equal(grid, F.prior_samples(any_model, n=16, seed=5).axes[0].images[0].get_array())
    assert not np.array_equal(grid, F.prior_samples(any_model, n=16, seed=6).axes[0].images[0].get_array())


def test_latent_manifold_decodes_gaussian_quantiles(mlp2):
    n = 6
    fig = F.latent_manifold(mlp2, n=n)
    assert len(fig.axes) == 1 and n_images(fig) == 1
    ax = fig.axes[0]
    assert ax.get_xlabel() == "z1" and ax.get_ylabel() == "z2"
    assert "quantile" in fig.get_suptitle().lower()
    grid = ax.images[0].get_array()
    assert grid.shape == (n * 28, n * 28)
    values = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    # top-left cell: smallest z1, largest z2; bottom-right: largest z1, smallest z2
    corners = bernoulli_mean(mlp2, torch.tensor([[values[0], values[-1]], [values[-1], values[0]]]))
    np.testing.assert_allclose(grid[:28, :28], corners[0], atol=1e-6)
    np.testing.assert_allclose(grid[-28:, -28:], corners[1], atol=1e-6)
    tick_text = " ".join(t.get_text() for t in ax.get_xticklabels())
    assert "1.64" in tick_text and "q=0.05" in tick_text


@pytest.mark.parametrize("name", ["mlp5", "conv3"])
def test_latent_manifold_needs_two_dimensions(name, request):
    with pytest.raises(ValueError, match="latent_dim == 2"):
        F.latent_manifold(request.getfixturevalue(name))


# ---------------------------------------------------------------------------------------------
# scatters


def test_latent_scatter_2d_plots_mu_directly(mlp2, images, labels):
    fig = F.latent_scatter(mlp2, images, labels)
    assert len(fig.axes) == 2  # the scatter and the digit colour bar
    ax, bar = fig.axes
    assert ax.get_xlabel() == "z1" and ax.get_ylabel() == "z2"
    assert "principal" not in fig.get_suptitle()
    assert [t.get_text() for t in bar.get_yticklabels()] == [str(d) for d in range(10)]
    points = ax.collections[0].get_offsets()
    mu, _ = L.encode_means(mlp2, images)
    np.testing.assert_allclose(np.sort(points[:, 0]), np.sort(mu[:, 0].numpy()), rtol=1e-6)


@pytest.mark.parametrize("name", ["mlp5", "conv3"])
def test_latent_scatter_projects_higher_dims_on_principal_components(name, images, labels, request):
    fig = F.latent_scatter(request.getfixturevalue(name), images, labels)
    assert "principal components" in fig.get_suptitle()
    assert fig.axes[0].get_xlabel().startswith("PC1")
    custom = F.latent_scatter(request.getfixturevalue(name), images, labels, title="Test set")
    assert custom.get_suptitle().startswith("Test set") and "principal components" in custom.get_suptitle()


def test_latent_scatter_label_count_must_match(mlp2, images):
    with pytest.raises(ValueError, match="labels"):
        F.latent_scatter(mlp2, images, torch.zeros(3))


def test_pca_2d_finds_the_main_direction():
    direction = torch.tensor([1.0, 2.0, 0.0, -1.0, 0.5])
    mu = torch.linspace(-3, 3, 50).unsqueeze(1) * direction + 1e-3 * torch.randn(50, 5)
    points, explained = L.pca_2d(mu)
    assert points.shape == (50, 2)
    assert explained[0] > 0.999
    np.testing.assert_allclose(np.abs(points[:, 0]).max(), 3 * direction.norm().item(), rtol=1e-2)


def test_latent_scatter_panels_share_one_colour_bar(labels):
    rng = np.random.default_rng(0)
    panels = [(name, rng.normal(size=(60, 2)) * scale, labels.numpy()) for name, scale in
              [("autoencoder", 5.0), ("KL only", 0.01), ("VAE", 1.0)]]
    fig = F.latent_scatter_panels(panels)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == ["autoencoder", "KL only", "VAE"]
    assert all(ax.get_xlabel() == "z1" for ax in fig.axes[:3]) and fig.axes[0].get_ylabel() == "z2"
    assert fig.get_suptitle()
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        F.latent_scatter_panels([("bad", rng.normal(size=(60, 3)), labels.numpy())])
    with pytest.raises(ValueError):
        F.latent_scatter_panels([])


# ---------------------------------------------------------------------------------------------
# latent dimensions, KL, traversals


def test_latent_dimensions_shows_mu_and_sigma_per_image(any_model, images):
    fig = F.latent_dimensions(any_model, images, n=5)
    d = any_model.config.latent_dim
    assert len(fig.axes) == 10 and n_images(fig) == 5  # one image and one error-bar plot each
    plots = [ax for ax in fig.axes if not ax.images]
    assert fig.get_supylabel() == "μ ± σ"
    assert any(ax.get_xlabel() == "latent dimension" for ax in plots)
    with torch.no_grad():
        mu, logvar = any_model.encode(to_unit_float(images[:5]))
    for i, ax in enumerate(plots):
        container = ax.containers[0]
        np.testing.assert_allclose(container.lines[0].get_ydata(), mu[i].numpy(), atol=1e-6)
        assert len(container.lines[0].get_xdata()) == d
    assert "latent dimensions" in fig.get_suptitle()


def test_kl_per_dimension_marks_collapsed_dimensions():
    kl = [2.0, 0.001, 0.5, 0.0, 0.02]
    fig = F.kl_per_dimension(kl, threshold=0.01)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 5
    np.testing.assert_allclose([b.get_height() for b in bars], kl)
    colours = [b.get_facecolor() for b in bars]
    assert colours[0] == colours[2] == colours[4] and colours[1] == colours[3] != colours[0]
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "collapsed (KL < 0.01 nats): 2" in legend and "active" in legend
    assert ax.get_xlabel() == "latent dimension" and "nats" in ax.get_ylabel()
    assert "KL" in fig.get_suptitle()
    log_fig = F.kl_per_dimension(kl, threshold=0.1, log_scale=True)
    assert log_fig.axes[0].get_yscale() == "log"
    assert "collapsed (KL < 0.1 nats): 3" in " ".join(t.get_text() for t in log_fig.axes[0].get_legend().get_texts())


def test_latent_traversals_rows_and_columns(any_model, images):
    d = any_model.config.latent_dim
    fig = F.latent_traversals(any_model, images[0], n_steps=5, span=2.0, max_dims=4)
    assert len(fig.axes) == 2 and n_images(fig) == 2  # the input, and the traversal grid
    grid_ax = fig.axes[1]
    rows = min(d, 4)
    assert grid_ax.images[0].get_array().shape == (rows * 30 - 2, 5 * 30 - 2)
    assert [t.get_text() for t in grid_ax.get_yticklabels()] == [f"z{j + 1}" for j in range(rows)]
    assert [t.get_text() for t in grid_ax.get_xticklabels()] == ["\u22122", "\u22121", "0", "+1", "+2"]
    # the middle column is the reconstruction from μ
    middle = grid_ax.images[0].get_array()[:28, 2 * 30 : 2 * 30 + 28]
    np.testing.assert_allclose(middle, decode_mu(any_model, to_unit_float(images[:1]))[0], atol=1e-5)
    assert "traversal" in fig.get_suptitle().lower()


def test_latent_traversals_pick_the_dimensions_of_largest_kl(mlp5, images):
    kl = [0.1, 3.0, 0.0, 1.5, 0.7]
    fig = F.latent_traversals(mlp5, images[:1], max_dims=3, kl_per_dim=kl)
    names = [t.get_text().split("\n")[0] for t in fig.axes[1].get_yticklabels()]
    assert names == ["z2", "z4", "z5"]
    with pytest.raises(ValueError, match="latent dimensions"):
        F.latent_traversals(mlp5, images[:1], kl_per_dim=[1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# interpolation


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolation_strip_ends_at_the_decoded_means(any_model, images, method):
    steps = 6
    fig = F.interpolation(any_model, images[0], images[1], steps=steps, method=method)
    assert len(fig.axes) == steps + 2 and n_images(fig) == steps + 2
    strip = [ax.images[0].get_array() for ax in fig.axes]
    x = to_unit_float(images[:2])
    np.testing.assert_allclose(strip[0], x[0, 0].numpy())  # the originals at the ends
    np.testing.assert_allclose(strip[-1], x[1, 0].numpy())
    ends = decode_mu(any_model, x)
    np.testing.assert_allclose(strip[1], ends[0], atol=1e-6)  # t = 0 decodes μ_A
    np.testing.assert_allclose(strip[-2], ends[1], atol=1e-6)  # t = 1 decodes μ_B
    assert ("slerp" in fig.get_suptitle()) == (method == "slerp")


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_latents_end_points_are_exact(method):
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(2, 7, generator=generator)
    path = L.interpolate_latents(z_a, z_b, 9, method)
    assert path.shape == (9, 7) and path.dtype == z_a.dtype
    assert torch.equal(path[0], z_a) and torch.equal(path[-1], z_b)
    assert torch.equal(L.interpolate_latents(z_a.unsqueeze(0), z_b.unsqueeze(0), 9, method), path)


def test_interpolate_latents_linear_is_evenly_spaced():
    z_a, z_b = torch.tensor([0.0, 2.0]), torch.tensor([4.0, -2.0])
    path = L.interpolate_latents(z_a, z_b, 5, "linear")
    torch.testing.assert_close(path, torch.tensor([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [3.0, -1.0], [4.0, -2.0]]))


def test_slerp_follows_the_great_circle():
    z_a, z_b = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    path = L.interpolate_latents(z_a, z_b, 7, "slerp")
    torch.testing.assert_close(path.norm(dim=1), torch.full((7,), 2.0))
    angles = torch.atan2(path[:, 1], path[:, 0])
    torch.testing.assert_close(angles, torch.linspace(0, math.pi / 2, 7))


@pytest.mark.parametrize("z_b", [torch.tensor([1.0, 2.0, 3.0]) * 1.5,  # parallel
                                 torch.tensor([1.0, 2.0, 3.0 + 1e-4]),  # nearly parallel
                                 torch.tensor([-1.0, -2.0, -3.0]),  # opposite
                                 torch.zeros(3)])  # no direction at all
def test_slerp_falls_back_to_linear_when_the_angle_is_ill_defined(z_b):
    z_a = torch.tensor([1.0, 2.0, 3.0])
    slerp = L.interpolate_latents(z_a, z_b, 6, "slerp")
    assert torch.isfinite(slerp).all()
    torch.testing.assert_close(slerp, L.interpolate_latents(z_a, z_b, 6, "linear"))


def test_interpolate_latents_rejects_bad_arguments():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="steps"):
        L.interpolate_latents(z, z, 1)
    with pytest.raises(ValueError, match="method"):
        L.interpolate_latents(z, z, 5, "cubic")
    with pytest.raises(ValueError, match="shape"):
        L.interpolate_latents(z, torch.zeros(4), 5)


# ---------------------------------------------------------------------------------------------
# saving


FIGURES = {
    "reconstructions": lambda m, x, y: F.reconstructions(m, x),
    "prior_samples": lambda m, x, y: F.prior_samples(m),
    "latent_manifold": lambda m, x, y: F.latent_manifold(m),
    "latent_scatter": lambda m, x, y: F.latent_scatter(m, x, y),
    "latent_scatter_panels": lambda m, x, y: F.latent_scatter_panels(
        [(name, L.encode_means(m, x)[0] * scale, y) for name, scale in [("AE", 5.0), ("KL", 0.01), ("VAE", 1.0)]]),
    "latent_dimensions": lambda m, x, y: F.latent_dimensions(m, x),
    "kl_per_dimension": lambda m, x, y: F.kl_per_dimension([1.0, 0.001]),
    "latent_traversals": lambda m, x, y: F.latent_traversals(m, x[0], kl_per_dim=[0.5, 1.0]),
    "interpolation": lambda m, x, y: F.interpolation(m, x[0], x[1], method="slerp"),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_saves_as_a_png(name, mlp2, images, labels, tmp_path):
    path = C.save_png(FIGURES[name](mlp2, images, labels), tmp_path / f"{name}.png")
    assert path == tmp_path / f"{name}.png"
    assert_valid_png(path)
    if name == "interpolation":  # one read back pixel by pixel: inputs at the ends, decoded μ_A and μ_B next to them
        tiles, boxes = strip_tiles(picture(path))
        assert len(tiles) == 10 + 2, boxes  # the default 10 steps
        x = to_unit_float(images[:2])
        ends = decode_mu(mlp2, x)
        grey_step = 2 / 255  # 0–1 → 256 grey levels, and back
        np.testing.assert_allclose(tiles[0][1:-1, 1:-1], x[0, 0, 1:-1, 1:-1].numpy(), atol=grey_step)  # inside the frame
        np.testing.assert_allclose(tiles[-1][1:-1, 1:-1], x[1, 0, 1:-1, 1:-1].numpy(), atol=grey_step)
        np.testing.assert_allclose(tiles[1], ends[0], atol=grey_step)
        np.testing.assert_allclose(tiles[-2], ends[1], atol=grey_step)


def test_save_png_writes_a_png_and_closes_the_figure(tmp_path):
    fig = plt.figure()  # a pyplot-managed figure, to see that save_png closes it
    fig.add_subplot().plot([0, 1], [1, 0])
    number = fig.number
    path = C.save_png(fig, tmp_path / "a" / "b" / "line.png")
    assert path.is_file()
    assert_valid_png(path)
    assert number not in plt.get_fignums()


def test_the_png_check_refuses_a_blank_a_damaged_and_a_tiny_picture(tmp_path):
    """assert_valid_png can fail: it reads the pixels, not the first bytes."""
    blank = Figure(figsize=(3, 3))
    blank.add_subplot().set_axis_off()  # an axes that draws nothing: a white page
    C.save_png(blank, tmp_path / "blank.png")
    with pytest.raises(AssertionError, match="blank"):
        assert_valid_png(tmp_path / "blank.png")
    fig = Figure(figsize=(3, 3))
    fig.add_subplot().imshow(np.random.default_rng(0).random((28, 28)), cmap="gray")
    good = C.save_png(fig, tmp_path / "good.png")
    assert_valid_png(good)
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # the signature, half the pixels
    with pytest.raises(OSError):  # PIL: truncated image data
        assert_valid_png(damaged)
    tiny = Figure(figsize=(0.3, 0.3))
    ax = tiny.add_subplot()
    ax.imshow(np.random.default_rng(0).random((28, 28)), cmap="gray")
    ax.set_axis_off()  # nothing but the picture: 45 px and the margin
    with pytest.raises(AssertionError, match="px"):
        assert_valid_png(C.save_png(tiny, tmp_path / "tiny.png"))


def test_figures_do_not_pile_up_in_pyplot(mlp2, images):
    before = set(plt.get_fignums())
    F.reconstructions(mlp2, images, n=2)
    F.prior_samples(mlp2, n=4)
    assert set(plt.get_fignums()) == before


# ---------------------------------------------------------------------------------------------
# sweep figures


def test_active_units_map_shows_the_mean_of_a_repeated_cell():
    rows = [{"beta": 1.0, "latent_dim": 8, "active_units": units} for units in (1, 2, 6)]
    rows.append({"beta": 4.0, "latent_dim": 8, "active_units": 5})
    grid = active_units_map(rows).axes[0].images[0].get_array()
    np.testing.assert_allclose(grid, [[3.0, 5.0]])


# ---------------------------------------------------------------------------------------------
# the set every training run gets (README, "Tracking"): exactly these, by name

README_FIGURES = {"reconstructions", "prior_samples", "latent_scatter", "latent_dimensions", "kl_per_dimension",
                  "latent_traversals", "interpolation", "interpolation_slerp"}  # + latent_manifold when 2-D


@pytest.mark.slow  # a whole run's figures: 10-26 s
@pytest.mark.parametrize("name, expected", [("mlp5", README_FIGURES), ("mlp2", README_FIGURES | {"latent_manifold"})])
def test_a_run_gets_exactly_the_figures_the_readme_lists(name, expected, images, labels, tmp_path, request):
    """render_run_figures writes the README's figures, no more and no fewer: 8, and 9 with a 2-D
    latent space (the manifold); every one a real PNG."""
    from vae_service.core.data import ImageSplit
    from vae_service.viz.run_figures import render_run_figures

    model = request.getfixturevalue(name)
    kl = [0.5] * model.config.latent_dim
    paths = render_run_figures(model, ImageSplit(images, labels), tmp_path / "figures", kl_per_dim=kl)
    assert {p.name for p in paths} == {f"{n}.png" for n in expected}
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {f"{n}.png" for n in expected}
    for path in paths:
        assert_valid_png(path)


# ---------------------------------------------------------------------------------------------
# other data: RGB images in colour, feature vectors without pictures, items without labels


@pytest.fixture(scope="module")
def rgb() -> VAE:
    return _model(4, image_shape=(3, 16, 16), latent_dim=3, hidden=(32,))


@pytest.fixture(scope="module")
def rgb_images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=generator)
    images[:, 0] //= 4  # the channels differ
    return images


@pytest.fixture(scope="module")
def vectors_model() -> VAE:
    return _model(5, image_shape=(8,), latent_dim=4, hidden=(16,), likelihood="gaussian")


@pytest.fixture(scope="module")
def vectors() -> torch.Tensor:
    return torch.randn(40, 8, generator=torch.Generator().manual_seed(2))  # standardised features


def test_rgb_images_are_drawn_in_colour(rgb, rgb_images):
    fig = F.reconstructions(rgb, rgb_images, n=3)
    top = fig.axes[0].images[0].get_array()
    assert top.shape == (16, 16, 3)
    np.testing.assert_allclose(top, to_unit_float(rgb_images[0]).permute(1, 2, 0).numpy())
    assert fig.axes[3].images[0].get_array().shape == (16, 16, 3)
    grid = F.prior_samples(rgb, n=4).axes[0].images[0].get_array()
    assert grid.shape == (2 * 18 - 2, 2 * 18 - 2, 3)
    assert C.to_picture(torch.zeros(1, 5, 6)).shape == (5, 6)  # grey stays (H, W)


@pytest.mark.slow  # a whole run's figures: 10-26 s
def test_an_rgb_run_gets_colour_figures(rgb, rgb_images, tmp_path):
    from matplotlib.image import imread

    from vae_service.core.data import ImageSplit
    from vae_service.viz.run_figures import render_run_figures

    labels = torch.arange(20) % 4
    paths = render_run_figures(rgb, ImageSplit(rgb_images, labels, "class", ("a", "b", "c", "d")), tmp_path,
                               kl_per_dim=[0.5, 0.1, 0.0])
    assert {p.name for p in paths} == {f"{n}.png" for n in README_FIGURES}
    for path in paths:
        assert_valid_png(path)
    picture = imread(tmp_path / "reconstructions.png")[..., :3]
    assert np.abs(picture[..., 0] - picture[..., 1]).max() > 0.1  # red and green differ somewhere: colour


@pytest.mark.slow  # a whole run's figures: 10-26 s
def test_a_vector_model_gets_the_figures_without_pictures(vectors_model, vectors, tmp_path):
    from vae_service.core.data import ImageSplit
    from vae_service.viz.run_figures import render_run_figures

    test = ImageSplit(vectors, torch.arange(40) % 3, "class", ("x", "y", "z"))
    paths = render_run_figures(vectors_model, test, tmp_path, kl_per_dim=[0.3, 0.0, 1.2, 0.05])
    assert {p.name for p in paths} == {"latent_scatter.png", "latent_dimensions.png", "kl_per_dimension.png"}
    assert not (tmp_path / "reconstructions.png").exists()
    for path in paths:
        assert_valid_png(path)
    without_kl = render_run_figures(vectors_model, test, tmp_path / "no-kl")
    assert {p.name for p in without_kl} == {"latent_scatter.png", "latent_dimensions.png"}


def test_latent_dimensions_of_vectors_has_no_image_column(vectors_model, vectors):
    fig = F.latent_dimensions(vectors_model, vectors, n=3)
    assert len(fig.axes) == 3 and n_images(fig) == 0
    assert [ax.get_title() for ax in fig.axes] == ["item 1", "item 2", "item 3"]
    with torch.no_grad():
        mu, _ = vectors_model.encode(vectors[:3])
    for i, ax in enumerate(fig.axes):
        np.testing.assert_allclose(ax.containers[0].lines[0].get_ydata(), mu[i].numpy(), atol=1e-6)
    assert "3 items" in fig.get_suptitle()


@pytest.mark.parametrize("figure", ["reconstructions", "prior_samples", "latent_traversals", "interpolation"])
def test_picture_figures_refuse_a_vector_model(vectors_model, vectors, figure):
    calls = {
        "reconstructions": lambda: F.reconstructions(vectors_model, vectors),
        "prior_samples": lambda: F.prior_samples(vectors_model),
        "latent_traversals": lambda: F.latent_traversals(vectors_model, vectors[0]),
        "interpolation": lambda: F.interpolation(vectors_model, vectors[0], vectors[1]),
    }
    with pytest.raises(ValueError, match="feature vectors"):
        calls[figure]()


def test_vectors_of_the_wrong_width_are_a_clear_error(vectors_model):
    with pytest.raises(ValueError, match="do not fit"):
        L.encode_means(vectors_model, torch.zeros(3, 7))
    mu, _ = L.encode_means(vectors_model, torch.zeros(8))  # one vector
    assert mu.shape == (1, 4)


def test_decoder_means_of_vectors_are_not_clamped(vectors_model):
    z = L.prior_codes(64, 4, seed=0)
    means = L.decoder_means(vectors_model, z)
    with torch.no_grad():
        np.testing.assert_allclose(means.numpy(), vectors_model.decode(z).numpy(), atol=1e-6)
    assert torch.equal(z, L.prior_codes(64, 4, seed=0))


def test_latent_scatter_without_labels_draws_one_colour_and_no_legend(vectors_model, vectors):
    fig = F.latent_scatter(vectors_model, vectors, torch.full((40,), -1), label_kind="item", label_names=())
    assert len(fig.axes) == 1  # no class colour bar
    ax = fig.axes[0]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 40
    assert len({tuple(c) for c in ax.collections[0].get_facecolors()}) == 1
    assert ax.get_legend() is None
    assert "coloured" not in fig.get_suptitle() and "40 items" in fig.get_suptitle()


def test_latent_scatter_with_some_labels_missing_draws_them_grey(mlp2, images):
    labels = torch.arange(60) % 5
    labels[::3] = -1
    fig = F.latent_scatter(mlp2, images, labels, label_kind="class", label_names=("a", "b", "c", "d", "e"))
    ax, bar = fig.axes
    assert [t.get_text() for t in bar.get_yticklabels()] == ["a", "b", "c", "d", "e"]
    grey, coloured = ax.collections
    assert len(grey.get_offsets()) == 20 and len(coloured.get_offsets()) == 40
    assert "no label (20)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_latent_scatter_with_many_classes_names_a_subset_on_the_colour_bar(mlp5, images, tmp_path):
    names = tuple(f"class {i}" for i in range(60))
    fig = F.latent_scatter(mlp5, images, torch.arange(60), label_kind="class", label_names=names)
    ticks = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert 2 <= len(ticks) <= 30 and ticks[0] == "class 0" and ticks[-1] == "class 59"
    assert_valid_png(C.save_png(fig, tmp_path / "many.png"))
