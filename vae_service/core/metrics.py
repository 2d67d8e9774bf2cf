"""Every metric the service reports, named once, and the record one epoch produces.

The worker reports an epoch record to Ray Train (and so to Tune), rank 0 logs it to MLflow, a
sweep keeps part of it per trial, and the CLI, the registry view and the queue show parts of it:
all of them take the names from here.

Units: nats per image. The −ELBO is reconstruction + KL; "rate" is the KL term and
"distortion" the reconstruction term (rate–distortion sweeps); active units count the latent
dimensions whose posterior mean varies across images (Burda et al. 2016: Cov_x(E_q[z_j]) > 0.01).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Sequence

EPOCH = "epoch"  # 0-based; MLflow's step

# the training pass (core.loop.EpochStats), averaged over the epoch's images on every rank
TRAIN_LOSS, TRAIN_NEG_ELBO, TRAIN_RECON, TRAIN_KL = "train_loss", "train_neg_elbo", "train_recon", "train_kl"
IMAGES_PER_S = "images_per_s"  # over all ranks
TRAIN_ITEMS = "train_items"  # items trained on in the epoch, over all ranks (a stream's count is only known after)
# DDP integrity, checked every epoch
SHARD_OVERLAP, RANKS_IN_SYNC = "shard_overlap", "ranks_in_sync"
# evaluation (core.loop.evaluate) on the validation split every epoch, the test split at the end
NEG_ELBO, RECON, KL, KL_PER_DIM = "neg_elbo", "recon", "kl", "kl_per_dim"
VAL_NEG_ELBO, VAL_RECON, VAL_KL, VAL_KL_PER_DIM = "val_neg_elbo", "val_recon", "val_kl", "val_kl_per_dim"
TEST_NEG_ELBO, TEST_RECON, TEST_KL = "test_neg_elbo", "test_recon", "test_kl"
ACTIVE_UNITS = "active_units"  # on the validation split

# The evaluation of a trained model (core.evaluation: `vae eval`, a spec's `evaluation` section).
# `vae eval --metrics` names what to compute; each result has a JSON key, logged to MLflow as eval_<key>.
EVAL_PREFIX = "eval_"
NLL = "nll"  # importance-sampled −log p(x), Burda et al. (2015), on the test split
MIG, FACTORVAE, DCI = "mig", "factorvae", "dci"  # disentanglement, on factor-labelled data (dSprites)
EVAL_KEYS = {  # --metrics name → the result keys it produces
    NLL: (NLL,), "elbo": (NEG_ELBO,), "au": (ACTIVE_UNITS,),
    MIG: (MIG,), FACTORVAE: (FACTORVAE, "factorvae_train", "factorvae_active_dims"),
    DCI: (DCI, "dci_completeness", "dci_informativeness"),
}
LIKELIHOOD_EVALS, FACTOR_EVALS = ("nll", "elbo", "au"), (MIG, FACTORVAE, DCI)
# Higher is better for these; lower for the rest (nll, neg_elbo).
EVAL_MAXIMISED = {ACTIVE_UNITS, MIG, FACTORVAE, DCI, "factorvae_train", "dci_completeness", "dci_informativeness"}


def eval_metric(key: str) -> str:
    """eval_nll, eval_mig, …: an evaluation result's name in MLflow and in a sweep's results."""
    return EVAL_PREFIX + key


def higher_is_better(name: str) -> bool:
    """For sorting models: active units and the disentanglement scores rise, losses fall."""
    return name.removeprefix(EVAL_PREFIX) in EVAL_MAXIMISED


# What each consumer takes from an epoch record.
LOGGED = (TRAIN_LOSS, TRAIN_NEG_ELBO, TRAIN_RECON, TRAIN_KL, VAL_NEG_ELBO, VAL_RECON, VAL_KL, ACTIVE_UNITS,
          IMAGES_PER_S, TEST_NEG_ELBO, TEST_RECON, TEST_KL)  # MLflow, every epoch (plus KL per dimension)
SUMMARY = (VAL_NEG_ELBO, VAL_RECON, VAL_KL, ACTIVE_UNITS, IMAGES_PER_S)  # a run's summary (plus test_*)
TRIAL = (VAL_NEG_ELBO, VAL_RECON, VAL_KL, ACTIVE_UNITS)  # a sweep keeps per trial, and tabulates
KEY = (VAL_NEG_ELBO, TEST_NEG_ELBO, ACTIVE_UNITS)  # beside each registered model version

# A sweep's objectives and the metric each one reads. The evaluation's (nll, mig, factorvae, dci)
# are computed once, at a trial's end (the train spec's `evaluation` section).
RATE, DISTORTION = "rate", "distortion"
END_OF_TRIAL_OBJECTIVES = (NLL, MIG, FACTORVAE, DCI)
OBJECTIVE_METRICS = {VAL_NEG_ELBO: VAL_NEG_ELBO, DISTORTION: VAL_RECON, RATE: VAL_KL, ACTIVE_UNITS: ACTIVE_UNITS,
                     **{name: eval_metric(name) for name in END_OF_TRIAL_OBJECTIVES}}
OBJECTIVE_MODES = {VAL_NEG_ELBO: "min", DISTORTION: "min", RATE: "min", ACTIVE_UNITS: "max",
                   **{name: "max" if name in EVAL_MAXIMISED else "min" for name in END_OF_TRIAL_OBJECTIVES}}


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


def evaluation_entries(requested: Sequence[str], result: Optional[Mapping[str, Any]] = None) -> dict[str, float]:
    """The eval_* entries of an epoch record for a spec's `evaluation.metrics`: the results after
    the last epoch, NaN before (Tune wants every objective in every report)."""
    keys = [key for name in requested for key in EVAL_KEYS[name]]
    return {eval_metric(key): float(result[key]) if result is not None else math.nan for key in keys}


def kl_dim_names(count: int) -> list[str]:
    """val_kl_dim_01, val_kl_dim_02, …: KL per latent dimension as separate MLflow metrics."""
    width = max(len(str(count)), 2)
    return [f"val_kl_dim_{j:0{width}d}" for j in range(1, count + 1)]


def trial_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a sweep keeps of a trial's last result: TRIAL and the evaluation's eval_* metrics."""
    return {k: v for k, v in result.items() if k in TRIAL or k.startswith(EVAL_PREFIX)}


def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A run's summary: SUMMARY (None where missing), every test_* and every eval_* metric."""
    return {**{k: metrics.get(k) for k in SUMMARY},
            **{k: v for k, v in metrics.items() if k.startswith(("test_", EVAL_PREFIX))}}


# A finished epoch's line in a log: `vae submit --wait` follows a queued job's log for these.
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  ", re.MULTILINE)


def format_epoch(record: dict, epochs: int) -> str:
    """One finished epoch: `epoch 3/8  train −ELBO …` (the form `vae submit --wait` looks for)."""
    parts = [f"epoch {record[EPOCH] + 1}/{epochs}", f"train −ELBO {record[TRAIN_NEG_ELBO]:.2f}"]
    if VAL_NEG_ELBO in record:
        parts += [
            f"val −ELBO {record[VAL_NEG_ELBO]:.2f}",
            f"recon {record[VAL_RECON]:.2f}",
            f"KL {record[VAL_KL]:.2f}",
            f"active {record[ACTIVE_UNITS]}",
        ]
    parts.append(f"{record[IMAGES_PER_S]:,.0f} img/s")
    return "  ".join(parts)
