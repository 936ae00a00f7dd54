"""Randomized Hadamard rotation: orthogonal, invertible, deterministic per public seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.linalg import hadamard

from dp.errors import DPConfigError
from dp.rotation import fwht, padded_dim, random_signs, rotate, unrotate

SEED = bytes(range(32))

vectors = st.integers(1, 300).flatmap(
    lambda d: hnp.arrays(np.float64, d, elements=st.floats(-1e6, 1e6, allow_nan=False)))


@pytest.mark.parametrize(("dim", "size"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024),
                                           (1024, 1024), (1025, 2048)])
def test_padded_dim(dim: int, size: int) -> None:
    assert padded_dim(dim) == size


def test_fwht_matches_sylvester_hadamard_matrix() -> None:
    """scipy's hadamard(D) is the Sylvester construction, the matrix the FWHT multiplies by."""
    rng = np.random.default_rng(0)
    for size in (1, 2, 4, 8, 64, 256):
        a = rng.standard_normal((3, size))
        np.testing.assert_allclose(fwht(a.copy()), a @ hadamard(size).T, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 3, 8, 37, 100])
def test_rotation_is_the_matrix_h_d_over_sqrt_d(dim: int) -> None:
    """rotate(x) = H diag(xi) pad(x) / sqrt(D), with xi the signs read off rotated unit vectors.

    Column j of R is H[:, j] xi_j / sqrt(D) and H[0, j] = 1, so xi_j = sign(R[0, j]) sqrt(D); the
    whole matrix must then equal scipy's Hadamard matrix times those signs.
    """
    size = padded_dim(dim)
    cols = rotate(np.eye(dim), seed=SEED)  # row j is R e_j
    xi = np.sign(cols[:, 0])
    expected = (hadamard(size)[:, :dim] * xi) / math.sqrt(size)
    np.testing.assert_allclose(cols.T, expected, atol=1e-12)
    np.testing.assert_array_equal(xi, random_signs(SEED, size)[:dim])


@settings(max_examples=60, deadline=None)
@given(x=vectors)
def test_norm_preserved_and_inverse(x: np.ndarray) -> None:
    y = rotate(x, seed=SEED)
    assert y.shape == (padded_dim(x.size),)
    scale = max(1.0, float(np.abs(x).max()))
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) <= 1e-9 * scale * math.sqrt(x.size)
    np.testing.assert_allclose(unrotate(y, seed=SEED, dim=x.size), x, atol=1e-9 * scale)


@settings(max_examples=30, deadline=None)
@given(x=vectors, y=vectors)
def test_inner_products_preserved(x: np.ndarray, y: np.ndarray) -> None:
    d = min(x.size, y.size)
    x, y = x[:d], y[:d]
    scale = max(1.0, float(np.abs(x).max())) * max(1.0, float(np.abs(y).max()))
    got = float(rotate(x, seed=SEED) @ rotate(y, seed=SEED))
    assert abs(got - float(x @ y)) <= 1e-9 * scale * d


def test_batch_rows_rotate_independently() -> None:
    x = np.random.default_rng(1).standard_normal((5, 300))
    batch = rotate(x, seed=SEED)
    for i in range(5):
        np.testing.assert_array_equal(batch[i], rotate(x[i], seed=SEED))
    np.testing.assert_allclose(unrotate(batch, seed=SEED, dim=300), x, atol=1e-12)


def test_deterministic_per_seed() -> None:
    x = np.random.default_rng(2).standard_normal(500)
    np.testing.assert_array_equal(rotate(x, seed=SEED), rotate(x, seed=bytes(SEED)))
    other = rotate(x, seed=bytes(32))
    assert not np.allclose(other, rotate(x, seed=SEED))
    # Decoding with the wrong seed does not give x back.
    assert np.linalg.norm(unrotate(other, seed=SEED, dim=500) - x) > 0.5 * np.linalg.norm(x)


def test_signs_are_balanced() -> None:
    s = random_signs(SEED, 1 << 16)
    assert set(np.unique(s)) == {-1.0, 1.0}
    # Fair coins: mean within 5 standard errors (1/sqrt(65536)).
    assert abs(s.mean()) <= 5 / math.sqrt(s.size)


def test_spike_is_flattened() -> None:
    """A one-hot vector becomes a vector with every entry +-1/sqrt(D): the point of the rotation."""
    x = np.zeros(1000)
    x[123] = 7.0
    y = rotate(x, seed=SEED)
    np.testing.assert_allclose(np.abs(y), 7.0 / math.sqrt(1024))


def test_input_not_modified() -> None:
    x = np.arange(10, dtype=np.float64)
    before = x.copy()
    y = rotate(x, seed=SEED)
    yc = y.copy()
    unrotate(y, seed=SEED, dim=10)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(y, yc)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_dim_is_typed_error(bad: object) -> None:
    with pytest.raises(DPConfigError, match="dim"):
        padded_dim(bad)  # type: ignore[arg-type]


def test_mismatched_dim_and_seed_are_typed_errors() -> None:
    y = rotate(np.ones(10), seed=SEED)
    with pytest.raises(DPConfigError, match="dim=20"):
        unrotate(y, seed=SEED, dim=20)
    with pytest.raises(DPConfigError, match="seed"):
        rotate(np.ones(4), seed=b"short")
    with pytest.raises(DPConfigError, match="power of two"):
        fwht(np.ones(6))
