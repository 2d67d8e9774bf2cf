"""A spec's data made ready for a training run, on the driver: which path it takes (tensors in
memory, or a Ray Data stream each worker shards) and the preprocessing that travels with the model
(its test split, for the figures and evaluation: `sources.holdout`).

The choice is by size: data that decodes to at most MEMORY_LIMIT_BYTES is read once, here, and
handed to every worker as tensors (today's path for MNIST); anything larger streams, and each
worker holds only the batches in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from vae_service.core import from_spec
from vae_service.core.data import DataError, Dataset, ImageSplit
from vae_service.core.preprocessing import (
    TEST,
    TRAIN,
    VAL,
    Preprocessing,
    RunningMoments,
)
from vae_service.core.spec import TrainSpec
from vae_service.sources import check

if TYPE_CHECKING:
    import ray.data

MEMORY_LIMIT_BYTES = 1 << 30
FIGURE_ITEMS = 10_000  # test items of your own data the figures, `vae encode` and a streamed run's final evaluation use (sources.holdout)
PIPELINE_PARAM = "data.pipeline"  # the MLflow param saying which path a run took
MEMORY, STREAMING = "memory", "streaming"


@dataclass
class Prepared:
    preprocessing: Preprocessing
    pipeline: str  # MEMORY or STREAMING
    train_items: int  # items in the train split (an estimate when streamed; 0: not counted, loaded by each worker)
    description: str  # one line for the run's log
    in_memory: Optional[Dataset] = None  # your own data, read here (named data sets load on each worker)
    streams: dict[str, ray.data.Dataset] = field(default_factory=dict)  # train / val / test: rows x, h[, label]

    def steps_per_epoch(self, spec: TrainSpec) -> int:
        """About how many steps each worker's epoch takes (for its progress bar)."""
        batch = max(1, spec.optim.batch_size // spec.resources.num_workers) * spec.resources.num_workers
        return max(1, self.train_items // batch)


def prepare(spec: TrainSpec) -> Prepared:
    """Raises DataError (naming the field) when the data cannot be read."""
    if not spec.data.own:
        return _named(spec)
    from vae_service.sources import read  # Ray Data (most of a second to import): your own data only
    inspection = check.inspect(spec)
    pipeline = spec.data.loading
    if pipeline == "auto":
        pipeline = MEMORY if inspection.decoded_bytes <= MEMORY_LIMIT_BYTES else STREAMING
    if pipeline == STREAMING and spec.data.binarize == "static":
        raise DataError("data.binarize: static draws once over data in memory; with streaming use dynamic "
                        "(or data.loading: memory)")
    items = read.items(spec.data, inspection)
    where = f"{inspection.items:,} {'images' if spec.data.format == 'images' else 'rows'} from {spec.data.source}"
    if pipeline == MEMORY:
        data, prep = _in_memory(spec, items, inspection)
        description = f"in memory: {where} ({len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test)"
        return Prepared(prep, MEMORY, len(data.train), description, in_memory=data)
    prep = _streamed_preprocessing(spec, items, inspection)
    streams = {name: _split(items, split, prep) for name, split in (("train", TRAIN), ("val", VAL), ("test", TEST))}
    streams["train"] = streams["train"].randomize_block_order()  # a new file order every epoch
    train_share = 1.0 - spec.data.val_fraction - spec.data.test_fraction
    return Prepared(prep, STREAMING, int(inspection.items * train_share), f"streaming (Ray Data): {where}", streams=streams)


# ---------------------------------------------------------------------------------------------


def _named(spec: TrainSpec) -> Prepared:
    """mnist, fashion-mnist, dsprites: in memory on each worker, or streamed when asked."""
    prep = from_spec.named_preprocessing(spec)
    if spec.data.loading != STREAMING:  # each worker loads it (core.from_spec), as before streaming existed
        return Prepared(prep, MEMORY, 0, f"in memory: {spec.data.dataset}")
    from vae_service.sources import read

    data = from_spec.training_data(spec)
    items = len(data.train) + len(data.val) + len(data.test)
    streams = {name: read.of_arrays(getattr(data, name).images.numpy()) for name in ("train", "val", "test")}
    streams["train"] = streams["train"].randomize_block_order()
    return Prepared(prep, STREAMING, len(data.train), f"streaming (Ray Data): {spec.data.dataset}, {items:,} images",
                    streams=streams)


def _in_memory(spec: TrainSpec, items: ray.data.Dataset, inspection: check.Inspection) -> tuple[Dataset, Preprocessing]:
    """One pass over the source: every item by split; vectors standardised with the train split's statistics."""
    parts: dict[int, list[dict]] = {TRAIN: [], VAL: [], TEST: []}
    for batch in items.iter_batches(batch_format="numpy", batch_size=4096):
        for split in parts:
            chosen = batch["split"] == split
            parts[split].append({k: v[chosen] for k, v in batch.items() if k in ("x", "label")})
    joined = {split: {k: np.concatenate([p[k] for p in chunks]) for k in chunks[0]} for split, chunks in parts.items() if chunks}
    train = joined.get(TRAIN, {}).get("x")
    if train is None or len(train) == 0:
        raise DataError(f"data.source: {spec.data.source} holds no items for training after the validation and test shares")
    labels = np.concatenate([j["label"] for j in joined.values() if "label" in j]) if spec.data.label else None
    moments = RunningMoments()
    if spec.data.vectors:
        moments.update(train)
    prep = _preprocessing(spec, inspection, moments, labels)
    empty = {"x": train[:0]}
    splits = [_as_split(joined.get(s, empty), prep) for s in (TRAIN, VAL, TEST)]
    return Dataset(*splits), prep


def _streamed_preprocessing(spec: TrainSpec, items: ray.data.Dataset, inspection: check.Inspection) -> Preprocessing:
    """Streaming: the train split's statistics (vectors) and the label values, in one pass that
    holds a batch at a time; image folders need no pass (labels are the folders)."""
    if not spec.data.vectors:
        return _preprocessing(spec, inspection, None, None)
    moments, labels = RunningMoments(), set()
    for batch in items.iter_batches(batch_format="numpy", batch_size=4096):
        moments.update(batch["x"][batch["split"] == TRAIN])
        if "label" in batch:
            labels.update(str(v) for v in batch["label"])
    if moments.count == 0:
        raise DataError(f"data.source: {spec.data.source} holds no items for training after the validation and test shares")
    return _preprocessing(spec, inspection, moments, np.array(sorted(labels)) if spec.data.label else None)


def _preprocessing(spec: TrainSpec, inspection: check.Inspection, moments: Optional[RunningMoments],
                   labels: Optional[np.ndarray]) -> Preprocessing:
    """What the model records: its input shape, the train split's mean and std (vectors), label names."""
    names = inspection.label_names or (tuple(sorted({str(v) for v in labels})) if labels is not None else ())
    kind = "class" if names else "item"
    if not spec.data.vectors:
        return Preprocessing(input_shape=inspection.input_shape, label_kind=kind, label_names=names)
    return Preprocessing(input_shape=inspection.input_shape, kind="vectors", mean=tuple(map(float, moments.mean)),
                         std=tuple(map(float, moments.std())), label_kind=kind, label_names=names)


def _codes(labels: Optional[np.ndarray], names: tuple[str, ...], n: int) -> np.ndarray:
    """Labels as indices into `names` (-1 where there is none)."""
    if labels is None or not names:
        return np.full(n, -1, dtype=np.int64)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(str(v), -1) for v in labels], dtype=np.int64)


def _as_split(part: dict, prep: Preprocessing) -> ImageSplit:
    x = prep.standardise(part["x"])
    labels = _codes(part.get("label"), prep.label_names, len(x))
    return ImageSplit(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels),
                      label_kind=prep.label_kind, label_names=prep.label_names)


def _split(items: ray.data.Dataset, split: int, prep: Preprocessing) -> ray.data.Dataset:
    """One split of the stream as model inputs: x (uint8 images or standardised float32 vectors),
    h, and label codes."""
    def inputs(batch: dict) -> dict:
        chosen = batch["split"] == split
        x = prep.standardise(batch["x"][chosen])
        return {"x": x, "h": batch["h"][chosen], "label": _codes(batch["label"][chosen] if "label" in batch else None,
                                                                  prep.label_names, len(x))}
    return items.map_batches(inputs, batch_format="numpy")
