"""The MLflow pyfunc model, logged as "models from code": MLflow stores this file's source and
the artifacts (safetensors weights + JSON config), never a pickled Python object.

`predict` takes images — an array of shape (N, pixels) or (N, C, H, W), grey levels in [0, 1]
(grey levels 0–255 are read as such, given as float32: the logged signature refuses uint8) — and returns a DataFrame with μ and log σ² per latent dimension.
Loading needs the `vae_service` package installed (it rebuilds the network from the config).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel


class VAEEncoderModel(PythonModel):
    def load_context(self, context) -> None:
        from vae_service.core.checkpoint import load_model

        self.vae = load_model(context.artifacts["vae"])  # model.safetensors + config.json

    # The hint tells MLflow that the logged signature (a tensor spec) is the input's contract;
    # without one it warns on every log_model.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        array = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
        images = torch.as_tensor(array, dtype=torch.float32)
        if images.max() > 1.0:  # grey levels 0–255
            images = images / 255.0
        images = images.reshape(-1, *self.vae.config.image_shape)
        with torch.no_grad():
            mu, logvar = self.vae.encode(images)
        dims = range(1, mu.shape[1] + 1)
        columns = {f"mu_{j}": mu[:, j - 1].numpy() for j in dims}
        columns.update({f"logvar_{j}": logvar[:, j - 1].numpy() for j in dims})
        return pd.DataFrame(columns)


mlflow.models.set_model(VAEEncoderModel())
