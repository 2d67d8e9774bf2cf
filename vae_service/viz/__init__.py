"""The article's figures and the objective comparison, drawn from models, images and rows of
numbers: pure functions that return matplotlib figures (and write PNGs or a CSV when asked).
Only `vae_service.core` is used, never Ray, MLflow or the service, so a notebook can draw every
figure from a model it has loaded; `vae_service.tracking` logs the same figures on MLflow runs."""
