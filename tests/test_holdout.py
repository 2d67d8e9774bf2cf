"""A model's test split (`sources.holdout.model_test_split`): the one function training's final
evaluation and figures, `vae eval`, `vae encode`/`interpolate` and `vae compare` gather it with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vae_service.core import from_spec
from vae_service.core.data import Dataset
from vae_service.core.spec_loading import validate_data
from vae_service.sources.holdout import model_test_split


def test_a_named_data_sets_split_is_its_test_set_with_the_specs_limit_or_the_first_n():
    spec = validate_data({"data": {"limit": 300}})
    whole = from_spec.images(spec.model_copy(update={"data": spec.data.model_copy(update={"limit": None})})).test
    split = model_test_split(spec)
    assert len(split) == 300 and torch.equal(split.images, whole.images[:300])
    first = model_test_split(spec, first=500)  # replaces data.limit, as `vae eval --images` always did
    assert torch.equal(first.images, whole.images[:500]) and torch.equal(first.labels, whole.labels[:500])
    assert first.label_names == whole.label_names


def test_as_trained_binarises_a_static_spec_as_training_did():
    spec = validate_data({"data": {"limit": 200, "binarize": "static"}})
    split = model_test_split(spec, as_trained=True)
    assert torch.equal(split.images, from_spec.training_data(spec).test.images)
    assert bool(((split.images == 0) | (split.images == 255)).all())
    assert not torch.equal(split.images, model_test_split(spec).images)  # stored: grey levels


def test_what_a_worker_holds_in_memory_is_its_whole_test_split():
    spec = validate_data({"data": {"limit": 100}})
    data = from_spec.training_data(spec)
    assert model_test_split(spec, loaded=data) is data.test
    assert len(model_test_split(spec, loaded=Dataset(data.train, data.val, data.test), first=10)) == 10


@pytest.mark.slow  # starts the session's Ray cluster
def test_your_own_data_in_memory_and_streamed_gives_the_same_test_items(tmp_path, ray_cluster):
    from vae_service.core.preprocessing import TEST, row_hashes, split_of
    from vae_service.sources.prepare import prepare

    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (400, 6)) + np.arange(6)
    y = rng.integers(0, 2, 400)
    np.savez(tmp_path / "v.npz", X=x, y=y)
    data = {"source": str(tmp_path / "v.npz"), "format": "numpy", "key": "X", "label": "y"}
    model = {"likelihood": "gaussian"}
    memory = validate_data({"data": {**data, "loading": "memory"}, "model": model})
    streaming = validate_data({"data": {**data, "loading": "streaming"}, "model": model})
    test_rows = int((split_of(row_hashes(x), memory.data.val_fraction, memory.data.test_fraction) == TEST).sum())

    prepared = prepare(memory)
    in_memory = model_test_split(memory, prepared=prepared)
    assert len(in_memory) == test_rows and in_memory.images.dtype == torch.float32
    assert torch.equal(model_test_split(memory, prepared=prepared, first=5).images, in_memory.images[:5])
    assert torch.equal(model_test_split(memory).images, in_memory.images)  # read again: the same items, same order

    streamed_prep = prepare(streaming)
    streamed = model_test_split(streaming, prepared=streamed_prep)
    key = lambda split: sorted(map(tuple, split.images.numpy().round(5).tolist()))  # noqa: E731
    assert key(streamed) == key(in_memory)
    assert sorted(streamed.labels.tolist()) == sorted(in_memory.labels.tolist())
    # A worker's iterator over the stream: its first items, at most `first`.
    head = model_test_split(streaming, stream=streamed_prep.streams["test"].iterator(),
                            preprocessing=streamed_prep.preprocessing, first=7)
    assert len(head) == 7 and set(key(head)) <= set(key(in_memory))
    with pytest.raises(ValueError, match="preprocessing"):
        model_test_split(streaming, stream=streamed_prep.streams["test"].iterator())
