"""A model's test split: the one way training (its final evaluation and its figures), `vae eval`,
`vae encode`, `vae interpolate` and `vae compare` gather the test items of the data a model was
trained on (its spec), in their stored order.

Where the items come from:
- a **named data set** (MNIST, Fashion-MNIST, dSprites): its files (`core.from_spec`), the
  spec's `data.limit` applied; `first` replaces that limit (the first N of the whole test set,
  as `vae eval --images N` has always read it); `as_trained` binarises it as the model trained
  (`from_spec.training_data`: `binarize: static`). A caller that wants the whole test set
  whatever the spec's limit (`vae compare`) gives a spec without one.
- **your own data**: read again through Ray Data (`prepare`; the caller has joined Ray) unless
  the caller has it prepared: its first `first` items, FIGURE_ITEMS when `first` is None (the
  figures' and `vae encode`'s sample; a stream is never read whole here).
- what a training worker **already holds**: `loaded` (its data in memory, named or your own:
  the whole test split, on its device) or `stream` (its iterator over the test split's stream,
  with the run's `preprocessing`: the first `first` or FIGURE_ITEMS items).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch

from vae_service.core import from_spec
from vae_service.core.data import Dataset, ImageSplit
from vae_service.core.preprocessing import Preprocessing
from vae_service.core.spec import TrainSpec
from vae_service.sources.prepare import FIGURE_ITEMS, Prepared, prepare

if TYPE_CHECKING:
    import ray.data  # most of a second to import: loaded where a stream is read, never for a named data set in memory

STREAM_BATCH = 4096


def model_test_split(
    spec: TrainSpec,
    *,
    first: Optional[int] = None,
    as_trained: bool = False,
    prepared: Optional[Prepared] = None,
    loaded: Optional[Dataset] = None,
    stream: Optional[Union[ray.data.Dataset, ray.data.DataIterator]] = None,
    preprocessing: Optional[Preprocessing] = None,
) -> ImageSplit:
    """The test split of the data `spec` names (see the module's docstring for where it comes
    from); `preprocessing` goes with `stream` (its input shape and label names)."""
    if loaded is not None:
        return _first(loaded.test, first)
    if stream is not None:
        if preprocessing is None:
            raise ValueError("a stream's test split needs its preprocessing")
        return _from_stream(stream, preprocessing, first or FIGURE_ITEMS)
    if not spec.data.own:
        if first is not None:
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"limit": first})})
        return (from_spec.training_data(spec) if as_trained else from_spec.images(spec)).test
    prepared = prepared if prepared is not None else prepare(spec)
    if prepared.in_memory is not None:
        return _first(prepared.in_memory.test, first or FIGURE_ITEMS)
    return _from_stream(prepared.streams["test"], prepared.preprocessing, first or FIGURE_ITEMS)


def _first(split: ImageSplit, first: Optional[int]) -> ImageSplit:
    return split if first is None else replace(split, images=split.images[:first], labels=split.labels[:first])


def _from_stream(stream: Union[ray.data.Dataset, ray.data.DataIterator], prep: Preprocessing, most: int) -> ImageSplit:
    """The first `most` rows of a stream of the test split (x[, label] as `prepare` makes them) as
    tensors: on the CPU on a driver, on the worker's device in a Ray Train worker (Ray Data's
    `iter_torch_batches`)."""
    import ray.data

    if isinstance(stream, ray.data.Dataset):
        stream = stream.limit(most)
    xs, labels, count = [], [], 0
    for batch in stream.iter_torch_batches(batch_size=STREAM_BATCH):
        xs.append(batch["x"])
        labels.append(batch["label"] if "label" in batch else torch.full((len(batch["x"]),), -1, dtype=torch.int64))
        count += len(batch["x"])
        if count >= most:
            break
    if not xs:
        x = np.zeros((0, *prep.input_shape), np.float32 if prep.vectors else np.uint8)
        return ImageSplit(torch.from_numpy(x), torch.zeros(0, dtype=torch.int64), prep.label_kind, prep.label_names)
    return ImageSplit(torch.cat(xs)[:most], torch.cat(labels)[:most].to(torch.int64),
                      label_kind=prep.label_kind, label_names=prep.label_names)


__all__ = ["FIGURE_ITEMS", "model_test_split"]
