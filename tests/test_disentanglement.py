"""Disentanglement metrics (core.disentanglement): hand-computed values for the pure functions,
and on a synthetic data set, codes whose disentanglement is known by construction.

The data set's observations are its factor indices themselves, so a "representation" is any
function of them: an axis-aligned noisy copy (disentangled), a rotation of it (as informative,
entangled), independent noise (uninformative) and a constant (no active dimension). Sizes are
far below disentanglement_lib's defaults to keep the file to seconds.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from vae_service.core import disentanglement as D

SIZES = (3, 6, 10, 8, 8)
CODE_DIMS = len(SIZES) + 2  # the aligned code carries two pure-noise dimensions as well
ROTATION = np.linalg.qr(np.random.default_rng(7).normal(size=(CODE_DIMS, CODE_DIMS)))[0]


class Grid:
    """Every combination of SIZES' values; an observation is its factors, as floats."""

    factor_names = ("a", "b", "c", "d", "e")
    factor_sizes = SIZES

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(size, size=n) for size in self.factor_sizes], axis=1).astype(np.int64)

    def observations(self, factors: np.ndarray) -> np.ndarray:
        return factors.astype(np.float64)


def aligned(seed: int = 1):
    """Each factor standardised, plus a little noise (well below the spacing of its values), then
    two dimensions of tiny noise (std 0.01: below FactorVAE's pruning threshold)."""
    noise = np.random.default_rng(seed)
    sizes = np.array(SIZES)

    def represent(obs: np.ndarray) -> np.ndarray:
        z = (obs - (sizes - 1) / 2) / np.sqrt((sizes**2 - 1) / 12)
        return np.concatenate([z + 0.05 * noise.normal(size=z.shape), 0.01 * noise.normal(size=(len(z), 2))], axis=1)

    return represent


def rotated():
    represent = aligned(seed=2)
    return lambda obs: represent(obs) @ ROTATION


def independent():
    noise = np.random.default_rng(3)
    return lambda obs: noise.normal(size=(len(obs), CODE_DIMS))


def constant():
    return lambda obs: np.zeros((len(obs), CODE_DIMS))


REPRESENTATIONS = {"aligned": aligned, "rotated": rotated, "independent": independent, "constant": constant}


@functools.lru_cache(maxsize=None)
def scores(name: str) -> dict:
    """All three metrics of one representation, computed once for the file's tests."""
    make = REPRESENTATIONS[name]
    return {
        **D.mig(Grid(), make(), np.random.default_rng(0), num_train=2_000),
        **D.factor_vae_score(Grid(), make(), np.random.default_rng(0), num_train=300, num_eval=200,
                             num_variance_estimate=1_000),
        **D.dci(Grid(), make(), np.random.default_rng(0), num_train=600, num_test=300),
    }


# --- the pure functions, by hand ---------------------------------------------------------------

def test_discretize_bins_like_numpy_histogram_then_digitize():
    # 2 bins over [0, 4]: edges 0, 2, 4; left-closed, the maximum in the last bin
    assert D.discretize(np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]), 2)[:, 0].tolist() == [1, 1, 2, 2, 2]
    # a constant column: np.histogram spans [5 - 0.5, 5 + 0.5], edges 4.5, 4.75, 5, 5.25, 5.5
    assert D.discretize(np.full((3, 1), 5.0), 4)[:, 0].tolist() == [3, 3, 3]
    codes = np.random.default_rng(0).normal(size=(50, 3))
    expected = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) for c in codes.T], axis=1)
    assert np.array_equal(D.discretize(codes, 20), expected)
    assert D.discretize(codes, 20).min() == 1 and D.discretize(codes, 20).max() == 20


def test_mutual_info_and_entropy_in_nats():
    y = np.array([[0], [0], [1], [1], [2], [2], [3], [3]])
    codes = np.concatenate([y, y // 2], axis=1)  # all of y; one of its two bits
    assert D.entropy(y) == pytest.approx([math.log(4)])
    assert D.mutual_info(codes, y)[:, 0] == pytest.approx([math.log(4), math.log(2)])


def test_mig_by_hand():
    y = np.array([[0], [0], [1], [1], [2], [2], [3], [3]])
    # gap (ln 4 - ln 2) over H(y) = ln 4
    assert D.mig_from_codes(np.concatenate([y, y // 2], axis=1).astype(float), y)["mig"] == pytest.approx(0.5)
    # a perfect 1-to-1 copy and a constant: the whole entropy
    assert D.mig_from_codes(np.concatenate([y, np.zeros_like(y)], axis=1).astype(float), y) == {
        "mig": pytest.approx(1.0), "mig_per_factor": [pytest.approx(1.0)]}
    # two perfect copies: no gap at all
    assert D.mig_from_codes(np.concatenate([y, 10.0 * y], axis=1), y)["mig"] == pytest.approx(0.0)


def test_mig_needs_two_dimensions():
    with pytest.raises(ValueError, match="at least 2"):
        D.mig_from_codes(np.zeros((4, 1)), np.zeros((4, 1), dtype=np.int64))


def test_disentanglement_and_completeness_by_hand():
    assert D.disentanglement(np.eye(3)) == pytest.approx(1.0, abs=1e-8)
    assert D.completeness(np.eye(3)) == pytest.approx(1.0, abs=1e-8)
    assert D.disentanglement(np.ones((3, 3))) == pytest.approx(0.0, abs=1e-12)
    assert D.completeness(np.ones((3, 3))) == pytest.approx(0.0, abs=1e-12)
    # one dimension evenly about both factors: not disentangled, but each factor in one dimension
    two_in_one = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert D.disentanglement(two_in_one) == pytest.approx(0.0, abs=1e-8)
    assert D.completeness(two_in_one) == pytest.approx(1.0, abs=1e-8)
    # no importance anywhere (no tree ever split): 0, not NaN
    assert D.disentanglement(np.zeros((3, 2))) == pytest.approx(0.0, abs=1e-12)
    assert D.completeness(np.zeros((3, 2))) == pytest.approx(0.0, abs=1e-12)


def test_disentanglement_and_completeness_match_dci_py_with_scipy():
    """dci.py's own formulas, with scipy.stats.entropy, on an arbitrary matrix."""
    from scipy.stats import entropy

    importance = np.random.default_rng(0).random((6, 4)) ** 3
    per_code = 1.0 - entropy(importance.T + 1e-11, base=4)
    per_factor = 1.0 - entropy(importance + 1e-11, base=6)
    assert D.disentanglement(importance) == pytest.approx(
        np.sum(per_code * importance.sum(axis=1) / importance.sum()), rel=1e-12)
    assert D.completeness(importance) == pytest.approx(
        np.sum(per_factor * importance.sum(axis=0) / importance.sum()), rel=1e-12)


def test_sample_codes_encodes_in_batches():
    batches = []

    def represent(obs):
        batches.append(len(obs))
        return obs * 2.0

    codes, factors = D.sample_codes(Grid(), represent, 130, np.random.default_rng(0), batch_size=64)
    assert batches == [64, 64, 2]
    assert codes.shape == (130, 5) and factors.shape == (130, 5) and factors.dtype == np.int64
    assert np.array_equal(codes, 2.0 * factors)
    assert all(factors[:, k].max() < size for k, size in enumerate(SIZES))


def test_a_representation_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(8, d\)"):
        D.sample_codes(Grid(), lambda obs: obs[:-1], 8, np.random.default_rng(0), batch_size=8)


# --- codes with known disentanglement ----------------------------------------------------------

@pytest.mark.slow  # the full metric suite on dSprites-sized codes: 13-22 s on a loaded 2-core machine
def test_an_axis_aligned_code_scores_high():
    s = scores("aligned")
    assert s["mig"] > 0.9  # 0.98 at these sizes
    assert s["factorvae"] > 0.9
    assert s["active_dims"] == len(SIZES)  # the two tiny-noise dimensions are pruned
    assert s["dci_disentanglement"] > 0.8 and s["dci_completeness"] > 0.8
    assert s["dci_informativeness_test"] > 0.95


@pytest.mark.slow  # the full metric suite on dSprites-sized codes: 13-22 s on a loaded 2-core machine
def test_an_independent_code_scores_low():
    s = scores("independent")
    assert s["mig"] < 0.1
    assert s["factorvae"] < 0.4  # chance is 1 / 5 factors
    assert s["dci_informativeness_test"] < 0.3  # chance is mean(1 / size) = 0.17
    assert s["dci_disentanglement"] < 0.2


@pytest.mark.slow  # the full metric suite on dSprites-sized codes: 13-22 s on a loaded 2-core machine
def test_a_rotated_code_is_informative_but_entangled():
    rotated, aligned_, independent_ = scores("rotated"), scores("aligned"), scores("independent")
    assert rotated["mig"] < 0.3 < aligned_["mig"] - 0.5
    assert rotated["dci_disentanglement"] < aligned_["dci_disentanglement"] - 0.4
    # Still predictive. Axis-aligned trees fit a rotated lattice less well from 600 points (0.68
    # against the aligned code's 1.0), yet far above chance and the independent code.
    assert rotated["dci_informativeness_test"] > 0.6
    assert rotated["dci_informativeness_test"] > 3 * independent_["dci_informativeness_test"]
    assert rotated["dci_informativeness_train"] == pytest.approx(aligned_["dci_informativeness_train"], abs=0.05)


def test_a_code_with_no_active_dimension():
    s = scores("constant")
    assert (s["factorvae"], s["factorvae_train"], s["active_dims"]) == (0.0, 0.0, 0)
    assert s["mig"] == 0.0 and s["mig_per_factor"] == [0.0] * len(SIZES)
    numbers = [v for k, v in s.items() if k.startswith("dci_")]
    assert all(math.isfinite(v) for v in numbers)
    assert s["dci_disentanglement"] == pytest.approx(0.0, abs=1e-9)
    assert s["dci_completeness"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow  # the full metric suite on dSprites-sized codes: 13-22 s on a loaded 2-core machine
def test_one_generator_seed_gives_one_score():
    def run():
        rng = np.random.default_rng(11)
        return (D.mig(Grid(), independent(), rng, num_train=500),
                D.factor_vae_score(Grid(), independent(), rng, num_train=50, num_eval=50, num_variance_estimate=200),
                D.dci(Grid(), independent(), rng, num_train=150, num_test=50))

    assert run() == run()
