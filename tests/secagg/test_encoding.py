"""Fixed-point encoding: clipping, word types, no-wrap guarantee, unbiased rounding, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secagg.encoding import FixedPointEncoding, clip_coordinates, clip_l2, word_dtype
from secagg.errors import ConfigError, InputError, OverflowRiskError

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
vectors = hnp.arrays(np.float64, st.integers(1, 30), elements=finite)


def modular_sum(words: list[np.ndarray], bits: int) -> np.ndarray:
    """What the server sees: the word-wise sum mod 2**bits, in the word dtype."""
    total = np.zeros(words[0].shape, dtype=np.uint64)
    for w in words:
        total += w.astype(np.uint64)  # uint64 wraps mod 2**64, a multiple of 2**bits
    total &= np.uint64(2**bits - 1)
    return total.astype(word_dtype(bits))


# ------------------------------------------------------------------ clipping


def test_clip_l2_known_answer():
    # 3-4-5 triangle: (3, 4) has norm 5; clipped to norm 1 it is (0.6, 0.8).
    out = clip_l2(np.array([3.0, 4.0]), 1.0)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=2e-12)  # clip_l2 aims 2^-40 below the bound
    assert np.linalg.norm(out) <= 1.0 and out[0] < 0.6
    # Entries near the float maximum: the norm overflows if computed naively.
    big = clip_l2(np.array([1e308, 1e308]), 2.0)
    np.testing.assert_allclose(big, [math.sqrt(2), math.sqrt(2)], rtol=2e-12)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("x,max_norm", [([1e200, 1e200], 1e180), ([1e308, -1e308, 3e307], 1e300),
                                        ([1e-150, 1e-150], 1e-200), ([3e-300, 4e-300], 1e-302)])
def test_clip_l2_ends_and_bounds_the_norm_when_the_squares_would_overflow_or_vanish(x, max_norm):
    """The ulp re-check used to square the clipped values themselves: above about 1e154 they
    overflowed to inf, the check never passed and clip_l2 looped for ever. Tiny bounds take the
    same rescaled path (their squares would vanish)."""
    x = np.array(x)
    out = clip_l2(x, max_norm)
    peak = float(np.abs(out).max())
    norm = peak * float(np.linalg.norm(out / peak))  # overflow-safe
    assert norm <= max_norm and norm >= max_norm * (1 - 2.0**-30)
    np.testing.assert_allclose(out / out[0], x / x[0], rtol=1e-12)


@given(x=vectors, max_norm=st.floats(1e-3, 1e3))
def test_clip_l2_bounds_norm_and_keeps_direction(x, max_norm):
    out = clip_l2(x, max_norm)
    assert out is not x and out.shape == x.shape
    assert np.linalg.norm(out) <= max_norm  # exactly, not approximately
    if np.linalg.norm(x) <= max_norm:
        np.testing.assert_array_equal(out, x)
    else:  # scaled by one positive factor: out = x * c with 0 < c < 1
        i = int(np.argmax(np.abs(x)))
        c = out[i] / x[i]
        assert 0 < c < 1
        np.testing.assert_allclose(out, x * c, rtol=1e-12, atol=0)


def test_clip_coordinates_known_answer_and_copy():
    x = np.array([-5.0, -1.0, 0.5, 2.0, 7.0], dtype=np.float32)
    out = clip_coordinates(x, 2.0)
    np.testing.assert_array_equal(out, [-2.0, -1.0, 0.5, 2.0, 2.0])
    assert out.dtype == np.float64 and x[4] == 7.0


@pytest.mark.parametrize("fn", [clip_l2, clip_coordinates])
def test_clipping_rejects_bad_input(fn):
    for bound in (0.0, -1.0, math.inf, math.nan, "1"):
        with pytest.raises(ConfigError):
            fn(np.ones(3), bound)
    with pytest.raises(InputError, match="NaN or inf"):
        fn(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(InputError, match="dtype"):
        fn(np.array([1, 2]), 1.0)
    with pytest.raises(InputError, match="numpy array"):
        fn([1.0, 2.0], 1.0)


# ------------------------------------------------------------------ word dtype


def test_word_dtype():
    assert all(word_dtype(b) == np.uint32 for b in range(1, 33))
    assert all(word_dtype(b) == np.uint64 for b in range(33, 63))
    for bad in (0, 63, 64, -1, 16.0, True, None):
        with pytest.raises(ConfigError, match="bits"):
            word_dtype(bad)


# ------------------------------------------------------------------ the no-wrap boundary


def test_overflow_boundary_is_exact():
    # bits=16, clip=1, scale=100: offset = 100, each word in [0, 200], 2**16 - 1 = 65535.
    # 327 * 200 = 65400 <= 65535 fits; 328 * 200 = 65600 > 65535 could wrap.
    ok = FixedPointEncoding(bits=16, clip=1.0, scale=100.0, max_clients=327)
    assert ok.offset == 100 and ok.modulus == 65536
    with pytest.raises(OverflowRiskError) as err:
        FixedPointEncoding(bits=16, clip=1.0, scale=100.0, max_clients=328)
    msg = str(err.value)
    for part in ("n=328", "[0, 200]", "65600", "65535", "bits=16", "at most 327"):
        assert part in msg, (part, msg)
    assert isinstance(err.value, ConfigError)


def test_offset_rounds_up():
    # clip*scale = 0.5*3 = 1.5: offset 2, so words lie in [0, 4].
    enc = FixedPointEncoding(bits=8, clip=0.5, scale=3.0, max_clients=1)
    assert enc.offset == 2
    words = enc.encode(np.array([-0.5, 0.5, 0.0]), rng=np.random.default_rng(0))
    assert words.min() >= 0 and words.max() <= 4


def test_for_sum_known_answer():
    # floor(65535 / (2*327)) = 100 is the largest offset; scale 100 gives ceil(1*100) = 100,
    # and any larger float scale gives ceil(...) = 101.
    enc = FixedPointEncoding.for_sum(bits=16, clip=1.0, max_clients=327)
    assert enc.scale == 100.0 and enc.offset == 100
    # 2**4 - 1 = 15: 7 clients * [0, 2] = 14 fits with offset 1, 8 clients * 2 = 16 does not.
    assert FixedPointEncoding.for_sum(bits=4, clip=1.0, max_clients=7).offset == 1
    with pytest.raises(OverflowRiskError, match="n=8"):
        FixedPointEncoding.for_sum(bits=4, clip=1.0, max_clients=8)


@given(bits=st.integers(2, 62), clip=st.floats(1e-6, 1e6), n=st.integers(1, 10**6))
def test_for_sum_is_largest_scale_that_fits(bits, clip, n):
    assume(2 * n <= 2**bits - 1)
    enc = FixedPointEncoding.for_sum(bits=bits, clip=clip, max_clients=n)
    assert n * 2 * enc.offset <= 2**bits - 1
    with pytest.raises(OverflowRiskError):
        FixedPointEncoding(bits=bits, clip=clip, scale=float(np.nextafter(enc.scale, math.inf)), max_clients=n)


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=0), "bits"), (dict(bits=63), "bits"), (dict(bits=8.0), "bits"),
    (dict(clip=0.0), "clip"), (dict(clip=-1.0), "clip"), (dict(clip=math.inf), "clip"),
    (dict(scale=0.0), "scale"), (dict(scale=math.nan), "scale"),
    (dict(max_clients=0), "max_clients"), (dict(max_clients=2.0), "max_clients"),
    (dict(max_clients=True), "max_clients"),
])
def test_invalid_fields(kwargs, match):
    fields = dict(bits=32, clip=1.0, scale=10.0, max_clients=10) | kwargs
    with pytest.raises(ConfigError, match=match):
        FixedPointEncoding(**fields)


# ------------------------------------------------------------------ encode / decode


@settings(max_examples=80, deadline=None)
@given(data=st.data(), clip=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32))
def test_round_trip_within_error_bound(data, clip, seed):
    n = data.draw(st.integers(1, 8), label="n")
    d = data.draw(st.integers(1, 20), label="d")
    max_clients = data.draw(st.integers(n, 1000), label="max_clients")
    bits = data.draw(st.integers(math.ceil(math.log2(2 * max_clients + 1)), 62), label="bits")
    enc = FixedPointEncoding.for_sum(bits=bits, clip=clip, max_clients=max_clients)
    l2 = data.draw(st.none() | st.floats(1e-3, 1e3), label="l2_clip")
    xs = [data.draw(hnp.arrays(np.float64, d, elements=finite), label="x") for _ in range(n)]
    rng = np.random.default_rng(seed)
    words = [enc.encode(x, rng=rng, l2_clip=l2) for x in xs]
    for w in words:
        assert w.dtype == word_dtype(bits) and w.shape == (d,)
        assert int(w.min()) >= 0 and int(w.max()) <= 2 * enc.offset
    decoded = enc.decode_sum(modular_sum(words, bits), count=n)
    clipped = [clip_coordinates(clip_l2(x, l2) if l2 else x, clip) for x in xs]
    truth = np.sum(clipped, axis=0)
    bound = enc.max_error_per_coordinate(n)
    if enc.offset <= 2**40:  # the float slack term is negligible unless clip*scale nears 2**53
        assert bound <= n / enc.scale * (1 + 2**-10)
    slack = n * n * clip * 2**-52  # float error of the reference sum itself
    assert np.all(np.abs(decoded - truth) <= bound + slack)


@given(x=vectors, scale=st.floats(1e-2, 1e6), clip=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32))
def test_rounds_only_to_floor_or_ceil(x, scale, clip, seed):
    enc = FixedPointEncoding(bits=62, clip=clip, scale=scale, max_clients=1)
    words = enc.encode(x, rng=np.random.default_rng(seed)).astype(np.int64) - enc.offset
    v = np.clip(x, -clip, clip) * scale
    assert np.all((words == np.floor(v)) | (words == np.ceil(v)))
    assert np.all(np.abs(words) <= enc.offset)


@pytest.mark.parametrize("value", [0.12337, -0.5004, 0.999, -0.0001, 0.25])
def test_stochastic_rounding_is_unbiased(value):
    """Mean of 200,000 independent roundings of one value equals the value.

    Scaled by 1000, each rounding error lies in an interval of width 1, so by Hoeffding
    P(|mean error| >= 0.01) <= 2 exp(-2 * 200000 * 0.01**2) = 2 exp(-40) < 1e-17. Truncation or
    round-to-nearest would be off by the fractional part (>= 0.1 here), far outside the bound.
    """
    enc = FixedPointEncoding(bits=32, clip=1.0, scale=1000.0, max_clients=1)
    draws = 200_000
    words = enc.encode(np.full(draws, value), rng=np.random.default_rng(12345))
    mean = (words.astype(np.float64) - enc.offset).mean() / enc.scale
    assert abs(mean - value) <= 0.01 / enc.scale


def test_decode_sum_known_answer():
    # offset = ceil(1.0 * 10) = 10. Two clients encoding 0.5 and 0.3 exactly (5 and 3 are integers
    # after scaling, so no randomness): words 15 and 13, sum 28, decoded (28 - 2*10)/10 = 0.8.
    enc = FixedPointEncoding(bits=8, clip=1.0, scale=10.0, max_clients=4)
    rng = np.random.default_rng(0)
    a, b = enc.encode(np.array([0.5]), rng=rng), enc.encode(np.array([0.3]), rng=rng)
    assert a.tolist() == [15] and b.tolist() == [13]
    np.testing.assert_allclose(enc.decode_sum(a + b, count=2), [0.8], rtol=1e-15)


def test_encode_rejects_bad_input():
    enc = FixedPointEncoding(bits=16, clip=1.0, scale=100.0, max_clients=3)
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="NaN or inf"):
        enc.encode(np.array([0.0, np.inf]), rng=rng)
    with pytest.raises(InputError, match="NaN or inf"):
        enc.encode(np.array([np.nan]), rng=rng)
    with pytest.raises(InputError, match="ndim=2"):
        enc.encode(np.zeros((2, 2)), rng=rng)
    with pytest.raises(InputError, match="dtype"):
        enc.encode(np.zeros(3, dtype=np.int64), rng=rng)
    with pytest.raises(InputError, match="dtype"):
        enc.encode(np.zeros(3, dtype=object), rng=rng)
    with pytest.raises(InputError, match="numpy array"):
        enc.encode([0.1, 0.2], rng=rng)
    with pytest.raises(ConfigError, match="rng"):
        enc.encode(np.zeros(3), rng=np.random.RandomState(0))
    with pytest.raises(ConfigError, match="max_norm"):
        enc.encode(np.zeros(3), rng=rng, l2_clip=0.0)
    assert enc.encode(np.zeros(0), rng=rng).shape == (0,)
    assert enc.encode(np.zeros(2, dtype=np.float32), rng=rng).tolist() == [100, 100]


def test_decode_sum_rejects_bad_input():
    enc = FixedPointEncoding(bits=10, clip=1.0, scale=10.0, max_clients=5)
    ok = np.array([10, 20], dtype=np.uint32)
    for count in (0, 6, True, 2.0):
        with pytest.raises(ConfigError, match="count"):
            enc.decode_sum(ok, count=count)
    with pytest.raises(InputError, match="dtype"):
        enc.decode_sum(ok.astype(np.uint64), count=1)
    with pytest.raises(InputError, match="dtype"):
        enc.decode_sum([10, 20], count=1)
    with pytest.raises(InputError, match="2\\*\\*bits = 1024"):
        enc.decode_sum(np.array([1024], dtype=np.uint32), count=1)
    with pytest.raises(InputError, match="1-D"):
        enc.decode_sum(ok.reshape(1, 2), count=1)
    with pytest.raises(ConfigError, match="count"):
        enc.max_error_per_coordinate(6)
