"""The plumbing under the article's figures: running a model for a drawing, turning images
into model input and into pictures, tiling them, and the small axis and label helpers.

Model calls run under `torch.no_grad()` in eval mode (see `inference`; the model's previous
train/eval mode is restored afterwards), inputs are moved to the model's device, and images may
be uint8 (0–255, as stored by `vae_service.core.data`) or float in [0, 1], grey (one channel) or
RGB (three, drawn in colour). A model of feature vectors (image_shape (D,)) takes its standardised
float vectors as they are, and has no pictures. Latent dimensions are named 1-based: index j of
z is labelled "z{j+1}" (`dim_name`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar, Union

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402

from vae_service.core.data import to_unit_float  # noqa: E402
from vae_service.core.model import VAE, unwrap  # noqa: E402

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]
F = TypeVar("F", bound=Callable[..., Figure])

DEFAULT_DPI = 150


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[VAE]:
    """The VAE of `model` in eval mode under no_grad, its previous train/eval mode restored
    after: drawing a figure or measuring a model must not leave it changed for its trainer."""
    vae = unwrap(model)
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            yield vae
    finally:
        vae.train(was_training)


def inferring(fn: F) -> F:
    """Runs `fn(model, ...)` under `inference(model)`."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with inference(model) as vae:
            return fn(vae, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def model_device(vae: VAE) -> torch.device:
    return next(vae.parameters()).device


def is_vector_model(vae: VAE) -> bool:
    """The model takes feature vectors (image_shape (D,)), not images: it has no pictures."""
    return vae.config.takes_vectors


def image_batch(vae: VAE, images: ArrayLike) -> torch.Tensor:
    """Model inputs → a float batch on the model's device: (N, C, H, W) in [0, 1] for images,
    (N, D) for a model of feature vectors.

    Images: a batch (N, C, H, W), a single image (C, H, W), and for one-channel models also
    (N, H, W) or (H, W); uint8 is scaled by 1/255, anything else is taken as [0, 1] floats.
    Vectors (already standardised, `core.preprocessing`): a batch (N, D) or one vector (D,),
    passed through as float32.
    """
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    x = x.to(model_device(vae))
    shape = tuple(vae.config.image_shape)
    if len(shape) == 1:
        x = x.to(torch.float32)
        if tuple(x.shape) == shape:
            x = x.unsqueeze(0)
        if x.dim() != 2 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"items of shape {tuple(x.shape)} do not fit a model for vectors {shape}")
        if len(x) == 0:
            raise ValueError("no items given")
        return x
    x = to_unit_float(x) if x.dtype == torch.uint8 else x.to(torch.float32)
    if tuple(x.shape) == shape:
        x = x.unsqueeze(0)
    elif shape[0] == 1 and x.dim() == 3 and tuple(x.shape[1:]) == shape[1:]:
        x = x.unsqueeze(1)
    elif shape[0] == 1 and tuple(x.shape) == shape[1:]:
        x = x[None, None]
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"images of shape {tuple(x.shape)} do not fit a model for images {shape}")
    if len(x) == 0:
        raise ValueError("no images given")
    return x


def to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def to_picture(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] → what imshow wants: (H, W) for grey (one channel), (H, W, C) for
    colour (three channels, RGB)."""
    arr = to_numpy(img).astype(np.float32)
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def tile(images: torch.Tensor, ncols: int, pad: int = 0, pad_value: float = 1.0) -> np.ndarray:
    """(N, C, H, W) → one picture of a grid of ncols columns, row-major, `pad` pixels apart:
    (H', W') for grey, (H', W', C) for colour (see `to_picture`)."""
    arr = to_numpy(images).astype(np.float32)
    n, c, h, w = arr.shape
    nrows = math.ceil(n / ncols)
    grid = np.full((c, nrows * (h + pad) - pad, ncols * (w + pad) - pad), pad_value, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = arr[i]
    return to_picture(grid)


def imshow(ax, picture: np.ndarray) -> None:
    """A grey picture (H, W) on a fixed 0–1 grey scale; a colour one (H, W, 3) as RGB, clipped to [0, 1]."""
    if picture.ndim == 3:
        ax.imshow(np.clip(picture, 0.0, 1.0), interpolation="nearest")
    else:
        ax.imshow(picture, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")


def bare(ax) -> None:
    """No ticks, but keep the axes (and so the y label) visible, with a light frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.7")


def cell_centres(count: int, size: int, pad: int = 0) -> np.ndarray:
    """Pixel coordinate of the middle of each of `count` cells of `size` pixels in a tile."""
    return np.arange(count) * (size + pad) + (size - 1) / 2


def spread_indices(count: int, most: int) -> np.ndarray:
    """Up to `most` evenly spread indices of range(count), both ends included, placed
    symmetrically (the number picked has the parity of count, so none is off-centre)."""
    if count <= most + 4:
        return np.arange(count)
    k = most
    if (count - k) % 2:
        k -= 1
    return np.unique(np.round(np.linspace(0, count - 1, max(k, 2))).astype(int))


def signed(value: float, decimals: int = 2) -> str:
    """+1.5 / −0.75 / 0: a sign on non-zero values, a typographic minus, no trailing zeros."""
    if round(value, decimals) == 0:
        return "0"
    text = f"{value:+.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.replace("-", "\u2212")


def dim_name(j: int) -> str:
    return f"z{j + 1}"


def save_png(fig: Figure, path: Union[str, Path], dpi: int = DEFAULT_DPI) -> Path:
    """Writes `fig` as a PNG (parent folders created) and closes it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A constrained layout already keeps every label on the canvas; any other figure is saved
    # with bbox "tight" (the canvas grown or trimmed to what is drawn), which draws it twice.
    tight = {} if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine) else {"bbox_inches": "tight", "pad_inches": 0.1}
    try:
        fig.savefig(path, dpi=dpi, format="png", facecolor="white", **tight)
    finally:
        plt.close(fig)
    return path


__all__ = [
    "DEFAULT_DPI",
    "ArrayLike",
    "bare",
    "cell_centres",
    "dim_name",
    "image_batch",
    "imshow",
    "inference",
    "inferring",
    "is_vector_model",
    "model_device",
    "save_png",
    "signed",
    "spread_indices",
    "tile",
    "to_numpy",
    "to_picture",
]
