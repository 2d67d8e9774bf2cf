"""How items become model inputs: recorded in the model's config.json, so a model trained on
any data (grey or RGB images, feature vectors) can be sampled, encoded and drawn later.

Images are stored as uint8 (C, H, W) and scaled to [0, 1] per batch (`core.data.batch_inputs`).
Vectors are standardised per feature with the training split's mean and standard deviation.
Which split an item belongs to is a hash of its content (`split_of`), so the split is the same
however the data is read, streamed or sharded.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2


@dataclass(frozen=True)
class Preprocessing:
    input_shape: tuple[int, ...]  # (C, H, W) for images, (features,) for vectors
    kind: Literal["images", "vectors"] = "images"
    mean: tuple[float, ...] = ()  # vectors: per feature, from the training split only
    std: tuple[float, ...] = ()
    label_kind: str = "digit"  # what a label means, for the figures' legends
    label_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def vectors(self) -> bool:
        return self.kind == "vectors"

    @property
    def channels(self) -> int:
        return 0 if self.vectors else self.input_shape[0]

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Vectors: (x − mean) / std as float32; images pass through unchanged (uint8)."""
        if not self.vectors:
            return x
        return ((x.reshape(len(x), -1) - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        fields = {**data, "input_shape": tuple(data["input_shape"]), "mean": tuple(data.get("mean", ())),
                  "std": tuple(data.get("std", ())), "label_names": tuple(data.get("label_names", ()))}
        return cls(**fields)

    @classmethod
    def of_model_config(cls, config: dict) -> "Preprocessing":
        """What a saved model's config.json says (models from before it was recorded: images of
        the model's own shape, MNIST's digits)."""
        if "preprocessing" in config:
            return cls.from_dict(config["preprocessing"])
        shape = tuple(config["model_config"]["image_shape"])
        return cls(input_shape=shape, label_names=tuple(str(d) for d in range(10)))


@dataclass
class RunningMoments:
    """Per-feature mean and variance over batches (Chan et al.'s pairwise update: exact, stable,
    and one pass over data that need not fit in memory)."""

    count: int = 0
    mean: Optional[np.ndarray] = None
    m2: Optional[np.ndarray] = None

    def update(self, batch: np.ndarray) -> None:
        batch = batch.reshape(len(batch), -1).astype(np.float64)
        if len(batch) == 0:
            return
        n, mean = len(batch), batch.mean(axis=0)
        m2 = ((batch - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    def std(self) -> np.ndarray:
        """Population standard deviation; a constant feature gets 1 (so it standardises to 0)."""
        std = np.sqrt(self.m2 / max(self.count, 1))
        return np.where(std > 1e-12, std, 1.0)


def row_hashes(x: np.ndarray) -> np.ndarray:
    """A CRC-32 of each item's bytes (int64): the item's identity for splitting and for checking
    that workers read disjoint shards."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8)
    return np.fromiter((zlib.crc32(row) for row in rows), dtype=np.int64, count=len(rows))


def split_of(hashes: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """TRAIN, VAL or TEST per item, from its hash: test takes the lowest `test_fraction` of the
    hash range, validation the next `val_fraction`."""
    u = hashes.astype(np.float64) / 2**32
    return np.where(u < test_fraction, TEST, np.where(u < test_fraction + val_fraction, VAL, TRAIN)).astype(np.int8)
