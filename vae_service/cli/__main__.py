"""`python -m vae_service.cli …` is `vae …` (the tests and Ray job entrypoints use it)."""

from vae_service.cli import main

main()
