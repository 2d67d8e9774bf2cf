"""A run's checkpoints as Ray Train holds them: a `ray.train.Checkpoint` for a checkpoint
directory named by a local path or an `s3://` URI. Here, in the Train adapter, so that `storage`
(which the CLI, the queue and the API load) never imports Ray Train."""

from __future__ import annotations

from typing import Optional

import ray.train

from vae_service import storage


def checkpoint_from_uri(uri: Optional[str]) -> Optional[ray.train.Checkpoint]:
    """The checkpoint at a local path or `s3://` URI (on the endpoint configured in this
    process's environment), or None when no URI is given or nothing is there."""
    if not uri:
        return None
    location = storage.resolve(uri)
    if not storage.exists(location):
        return None
    return ray.train.Checkpoint(location.path, filesystem=location.filesystem)
