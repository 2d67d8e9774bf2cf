"""The MLflow pyfunc model, logged as "models from code": MLflow stores this file's source and
the artifacts (safetensors weights + JSON config), never a pickled Python object.

`predict` takes items in the data's own units, one per row, as the training files held them:
images as grey levels 0–255 ((N, pixels), float32: the logged signature refuses uint8), feature
vectors as they are (the model standardises them with its training split's mean and std). It
returns a DataFrame with μ and log σ² per latent dimension: the codes `vae encode` and
`vae encode-dataset` give for the same items (`core.inference`, the one path).
Loading needs the `vae_service` package installed (it rebuilds the network from the config).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class VAEEncoderModel(PythonModel):
    def load_context(self, context) -> None:
        from vae_service.core.checkpoint import load_model, read_model_config
        from vae_service.core.preprocessing import Preprocessing

        self.vae = load_model(context.artifacts["vae"])  # model.safetensors + config.json
        self.preprocessing = Preprocessing.of_model_config(read_model_config(context.artifacts["vae"]))

    # The hint tells MLflow that the logged signature (a tensor spec) is the input's contract;
    # without one it warns on every log_model.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        from vae_service.core.inference import encode, from_own_units

        array = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
        mu, logvar = encode(self.vae, from_own_units(array, self.preprocessing))
        dims = range(1, mu.shape[1] + 1)
        columns = {f"mu_{j}": mu[:, j - 1].numpy() for j in dims}
        columns.update({f"logvar_{j}": logvar[:, j - 1].numpy() for j in dims})
        return pd.DataFrame(columns)


mlflow.models.set_model(VAEEncoderModel())
