"""Every metric the service reports, named once, and the record one epoch produces.

The worker reports an epoch record to Ray Train (and so to Tune), rank 0 logs it to MLflow, a
sweep keeps part of it per trial, and the CLI, the registry view and the queue show parts of it:
all of them take the names from here.

Units: nats per image. The −ELBO is reconstruction + KL; "rate" is the KL term and
"distortion" the reconstruction term (rate–distortion sweeps); active units count the latent
dimensions whose posterior mean varies across images (Burda et al. 2016: Cov_x(E_q[z_j]) > 0.01).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

EPOCH = "epoch"  # 0-based; MLflow's step

# the training pass (core.loop.EpochStats), averaged over the epoch's images on every rank
TRAIN_LOSS, TRAIN_NEG_ELBO, TRAIN_RECON, TRAIN_KL = "train_loss", "train_neg_elbo", "train_recon", "train_kl"
IMAGES_PER_S = "images_per_s"  # over all ranks
# DDP integrity, checked every epoch
SHARD_OVERLAP, RANKS_IN_SYNC = "shard_overlap", "ranks_in_sync"
# evaluation (core.loop.evaluate) on the validation split every epoch, the test split at the end
NEG_ELBO, RECON, KL, KL_PER_DIM = "neg_elbo", "recon", "kl", "kl_per_dim"
VAL_NEG_ELBO, VAL_RECON, VAL_KL, VAL_KL_PER_DIM = "val_neg_elbo", "val_recon", "val_kl", "val_kl_per_dim"
TEST_NEG_ELBO, TEST_RECON, TEST_KL = "test_neg_elbo", "test_recon", "test_kl"
ACTIVE_UNITS = "active_units"  # on the validation split

# What each consumer takes from an epoch record.
LOGGED = (TRAIN_LOSS, TRAIN_NEG_ELBO, TRAIN_RECON, TRAIN_KL, VAL_NEG_ELBO, VAL_RECON, VAL_KL, ACTIVE_UNITS,
          IMAGES_PER_S, TEST_NEG_ELBO, TEST_RECON, TEST_KL)  # MLflow, every epoch (plus KL per dimension)
SUMMARY = (VAL_NEG_ELBO, VAL_RECON, VAL_KL, ACTIVE_UNITS, IMAGES_PER_S)  # a run's summary (plus test_*)
TRIAL = (VAL_NEG_ELBO, VAL_RECON, VAL_KL, ACTIVE_UNITS)  # a sweep keeps per trial, and tabulates
KEY = (VAL_NEG_ELBO, TEST_NEG_ELBO, ACTIVE_UNITS)  # beside each registered model version

# A sweep's objectives and the metric each one reads.
RATE, DISTORTION = "rate", "distortion"
OBJECTIVE_METRICS = {VAL_NEG_ELBO: VAL_NEG_ELBO, DISTORTION: VAL_RECON, RATE: VAL_KL, ACTIVE_UNITS: ACTIVE_UNITS}
OBJECTIVE_MODES = {VAL_NEG_ELBO: "min", DISTORTION: "min", RATE: "min", ACTIVE_UNITS: "max"}


def epoch_record(epoch: int, train: Mapping[str, Any], checks: Mapping[str, Any], val: Optional[Mapping[str, Any]] = None,
                 test: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """One epoch as reported: the training pass's averages, the DDP checks and, on rank 0, the
    evaluation of the validation split (and of the test split after the last epoch)."""
    record = {EPOCH: epoch, **train, **checks}
    if val is not None:
        record.update({VAL_NEG_ELBO: val[NEG_ELBO], VAL_RECON: val[RECON], VAL_KL: val[KL],
                       VAL_KL_PER_DIM: val[KL_PER_DIM], ACTIVE_UNITS: val[ACTIVE_UNITS]})
    if test is not None:
        record.update({TEST_NEG_ELBO: test[NEG_ELBO], TEST_RECON: test[RECON], TEST_KL: test[KL]})
    return record


def kl_dim_names(count: int) -> list[str]:
    """val_kl_dim_01, val_kl_dim_02, …: KL per latent dimension as separate MLflow metrics."""
    width = max(len(str(count)), 2)
    return [f"val_kl_dim_{j:0{width}d}" for j in range(1, count + 1)]


def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A run's summary: SUMMARY (None where missing) and every test_* metric."""
    return {**{k: metrics.get(k) for k in SUMMARY}, **{k: v for k, v in metrics.items() if k.startswith("test_")}}
