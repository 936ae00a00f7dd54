"""The discrete Gaussian and Skellam samplers against their exact pmfs, with fixed seeds.

Every expected number is computed here from the definition of the distribution
(P[X = x] proportional to exp(-x^2 / (2 sigma^2)), summed over a range wide enough that the
neglected mass is below 1e-300), never copied from the sampler's output. Statistical bounds are
5 standard errors (two-sided miss probability ~6e-7 each) or chi-square p > 1e-4, and the seeds
are fixed, so the tests are deterministic; a wrong sampler fails them by a wide margin (the
rounded-Gaussian controls below show the chi-square test has the power to tell).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp.errors import DPConfigError
from dp.noise import SEED_BYTES, NoiseGenerator, discrete_gaussian, skellam

N = 200_000


def seed(i: int) -> bytes:
    return i.to_bytes(SEED_BYTES, "little")


def dg_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Support and pmf of N_Z(0, sigma^2) from the definition (mass past 40 sigma + 40 < 1e-300)."""
    k_max = int(40 * sigma) + 40
    k = np.arange(-k_max, k_max + 1)
    w = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma**2))
    return k, w / w.sum()


def moments(k: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    var = float(np.sum(p * k.astype(np.float64) ** 2))
    m4 = float(np.sum(p * k.astype(np.float64) ** 4))
    return var, m4


def chi_square_p(sample: np.ndarray, k: np.ndarray, p: np.ndarray,
                 min_expected: float = 20.0) -> float:
    """Goodness of fit on integer bins with expected count >= min_expected; the tails pooled."""
    n = sample.size
    inner = k[p * n >= min_expected]
    lo, hi = int(inner.min()), int(inner.max())
    observed = np.bincount(np.clip(sample, lo - 1, hi + 1) - (lo - 1), minlength=hi - lo + 3)
    expected = np.concatenate([[p[k < lo].sum()], p[(k >= lo) & (k <= hi)], [p[k > hi].sum()]]) * n
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    expected *= observed.sum() / expected.sum()  # remove float rounding in the total
    return float(stats.chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 10.0, 1000.0])
def test_mean_and_exact_variance(sigma: float) -> None:
    x = discrete_gaussian(N, sigma, gen=NoiseGenerator(seed(1))).astype(np.float64)
    var, m4 = moments(*dg_pmf(sigma))
    # For sigma = 0.3 the exact variance is ~0.0077, far below sigma^2 = 0.09: the sampler must
    # match the discrete law, not a continuous Gaussian.
    assert abs(x.mean()) <= 5 * math.sqrt(var / N)
    assert abs(x.var() - var) <= 5 * math.sqrt((m4 - var**2) / N)


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0])
def test_tail_probabilities(sigma: float) -> None:
    x = np.abs(discrete_gaussian(N, sigma, gen=NoiseGenerator(seed(2))))
    k, p = dg_pmf(sigma)
    for mult in (1.0, 2.0, 3.0):
        threshold = math.ceil(mult * sigma)
        tail = float(p[np.abs(k) >= threshold].sum())
        observed = float(np.mean(x >= threshold))
        assert abs(observed - tail) <= 5 * math.sqrt(tail * (1 - tail) / N) + 1e-12, (mult, tail)
    # 6 sigma: exact tail ~2e-9, so over 2e5 samples (expected 4e-4 hits) seeing 2 or more
    # has probability < 1e-7.
    assert np.sum(x >= math.ceil(6 * sigma)) <= 1


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.5])
def test_chi_square_goodness_of_fit(sigma: float) -> None:
    x = discrete_gaussian(N, sigma, gen=NoiseGenerator(seed(3)))
    assert chi_square_p(x, *dg_pmf(sigma)) > 1e-4


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_chi_square_rejects_rounded_gaussian(sigma: float) -> None:
    """Control: the same test tells a rounded continuous Gaussian apart, so it has power."""
    x = np.rint(np.random.default_rng(0).normal(0.0, sigma, N)).astype(np.int64)
    assert chi_square_p(x, *dg_pmf(sigma)) < 1e-6


def test_symmetric_and_centered_for_large_sigma() -> None:
    x = discrete_gaussian(N, 1e6, gen=NoiseGenerator(seed(4))).astype(np.float64)
    # Variance of N_Z(0, 1e12) equals 1e12 up to exp(-2 pi^2 1e12) (Poisson summation).
    assert abs(x.mean()) <= 5 * 1e6 / math.sqrt(N)
    assert abs(x.var() / 1e12 - 1) <= 5 * math.sqrt(2 / N)
    assert abs(np.mean(x > 0) - 0.5) <= 5 * math.sqrt(0.25 / N)


def test_deterministic_per_seed_and_independent_across_seeds() -> None:
    a = discrete_gaussian((30, 40), 3.0, gen=NoiseGenerator(seed(5)))
    b = discrete_gaussian((30, 40), 3.0, gen=NoiseGenerator(seed(5)))
    c = discrete_gaussian((30, 40), 3.0, gen=NoiseGenerator(seed(6)))
    assert a.shape == (30, 40) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert np.mean(a == c) < 0.3  # P[X = Y] for two N_Z(0, 9) is ~0.094


def test_default_generator_is_fresh() -> None:
    a = discrete_gaussian(1000, 10.0, gen=NoiseGenerator())
    b = discrete_gaussian(1000, 10.0, gen=NoiseGenerator())
    assert not np.array_equal(a, b)


def test_keystream_known_answer() -> None:
    """The first CTR block is AES-256_K(IV): checked against an ECB encryption of the IV."""
    key = bytes(range(32))
    iv = b"dp.noise.v1" + bytes(5)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    second_iv = (int.from_bytes(iv, "big") + 1).to_bytes(16, "big")
    expected = ecb.update(iv + second_iv)
    assert NoiseGenerator(key).random_bytes(32) == expected


def test_uniform_and_exponential() -> None:
    gen = NoiseGenerator(seed(7))
    u = gen.uniform(N)
    assert u.min() > 0.0 and u.max() <= 1.0
    # On the 2^-52 grid: u * 2^52 is an integer.
    np.testing.assert_array_equal(u * 2.0**52, np.round(u * 2.0**52))
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    e = gen.exponential(N)
    assert np.all(np.isfinite(e)) and e.min() >= 0 and e.max() <= 52 * math.log(2) + 1e-9
    assert abs(e.mean() - 1.0) <= 5 / math.sqrt(N)  # Exp(1): mean 1, sd 1


def test_zero_sigma_and_empty_shape() -> None:
    gen = NoiseGenerator(seed(8))
    zeros = discrete_gaussian((4, 5), 0.0, gen=gen)
    np.testing.assert_array_equal(zeros, np.zeros((4, 5), np.int64))
    assert discrete_gaussian((0,), 2.0, gen=gen).shape == (0,)
    assert skellam(3, 0.0, gen=gen).tolist() == [0, 0, 0]


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=3),
       sigma=st.floats(0.0, 1e6, allow_nan=False))
def test_any_shape_and_sigma(shape: list[int], sigma: float) -> None:
    x = discrete_gaussian(tuple(shape), sigma, gen=NoiseGenerator(seed(9)))
    assert x.shape == tuple(shape) and x.dtype == np.int64
    # |X| > 40 sigma + 40 has probability < 1e-300 under N_Z(0, sigma^2).
    assert np.all(np.abs(x) <= 40 * sigma + 40)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 1e13, "x"])
def test_bad_sigma_is_typed_error(bad: object) -> None:
    with pytest.raises(DPConfigError, match="sigma"):
        discrete_gaussian(3, bad, gen=NoiseGenerator(seed(0)))  # type: ignore[arg-type]
    with pytest.raises(DPConfigError, match="mu"):
        skellam(3, bad, gen=NoiseGenerator(seed(0)))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "a" * 32, 7])
def test_bad_seed_is_typed_error(bad: object) -> None:
    with pytest.raises(DPConfigError, match="32 bytes"):
        NoiseGenerator(bad)  # type: ignore[arg-type]


def test_negative_shape_is_typed_error() -> None:
    with pytest.raises(DPConfigError, match="shape"):
        discrete_gaussian((2, -1), 1.0, gen=NoiseGenerator(seed(0)))


@pytest.mark.parametrize("mu", [0.4, 2.0, 30.0])
def test_skellam_matches_pmf(mu: float) -> None:
    x = skellam(N, mu, gen=NoiseGenerator(seed(10)))
    # Skellam(mu, mu): mean 0, variance 2 mu, fourth central moment 3 (2 mu)^2 + 2 mu.
    var = 2 * mu
    m4 = 3 * var**2 + var
    assert abs(x.mean()) <= 5 * math.sqrt(var / N)
    assert abs(x.var() - var) <= 5 * math.sqrt((m4 - var**2) / N)
    k = np.arange(-int(20 * mu) - 40, int(20 * mu) + 41)
    assert chi_square_p(x, k, stats.skellam.pmf(k, mu, mu)) > 1e-4
