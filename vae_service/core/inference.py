"""Items → codes: the one way a model's encoder is applied to data outside training.

Items come in one of two forms:
- **own units**, as the user's files hold them: images as grey levels 0–255 (any numeric dtype,
  one item per row, flat or (C, H, W)), feature vectors as they are. What a served model takes.
- **stored**, as training keeps them (`core.preprocessing`): images as uint8 (C, H, W), vectors
  already standardised (float32).

`from_own_units` turns the first into model inputs by the model's own `Preprocessing` (the
shape, the 1/255 scale, the training split's per-feature mean and std); `core.data.to_unit_float`
turns the second. `encode` runs the encoder over either in batches on the model's device, so the
codes of an item never depend on the batch it came in; `encode_batch` is the encoder on one batch
already made model inputs on that device (the IS-NLL's proposal, the figures' few images), and
the one place `VAE.encode` is called outside the model's own forward pass.
"""

from __future__ import annotations

import numpy as np
import torch

from vae_service.core.data import to_unit_float
from vae_service.core.model import VAE, unwrap
from vae_service.core.preprocessing import Preprocessing

ENCODE_BATCH = 1024
GREY_LEVELS = 255.0


def from_own_units(items: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """Items in the data's own units → model inputs (float32, the model's input shape).

    Images are always divided by 255, whatever their values: a batch's brightness never changes
    how it is read. Vectors are standardised with the training split's mean and std."""
    array = np.asarray(items)
    if array.ndim == 0 or len(array) == 0:
        raise ValueError("no items given")
    features = int(np.prod(prep.input_shape))
    if array[0].size != features:
        raise ValueError(f"each item has {array[0].size} values and the model takes {features} "
                         f"({'×'.join(map(str, prep.input_shape))})")
    flat = array.reshape(len(array), features)
    if prep.vectors:
        if len(prep.mean) != features:  # a model saved before its preprocessing was recorded
            return torch.as_tensor(flat, dtype=torch.float32)
        return torch.from_numpy(prep.standardise(flat))
    return (torch.as_tensor(flat, dtype=torch.float32) / GREY_LEVELS).reshape(len(array), *prep.input_shape)


def encode_batch(vae: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, log σ²) of q(z|x) for one batch of model inputs already on the model's device, left
    there (a DDP-wrapped model is unwrapped; gradients as the caller's context has them)."""
    return unwrap(vae).encode(inputs)


@torch.no_grad()
def encode(vae: VAE, items: torch.Tensor, batch_size: int = ENCODE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, log σ²) of q(z|x) for stored items or model inputs, on the CPU: encoded in batches on
    the model's device, each batch made inputs there (`to_unit_float`: uint8 images scaled,
    floats taken as inputs), so a large uint8 set is never converted whole."""
    device = next(vae.parameters()).device
    mus, logvars = [], []
    for start in range(0, len(items), batch_size):
        mu, logvar = encode_batch(vae, to_unit_float(items[start : start + batch_size].to(device)))
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
    return torch.cat(mus), torch.cat(logvars)
