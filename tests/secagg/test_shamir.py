"""Shamir sharing over GF(2**256 + 297): primality, known answers, hiding, reconstruction, errors."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import (
    ConfigError,
    DuplicateShareError,
    InconsistentSharesError,
    InputError,
    InsufficientSharesError,
    MalformedShareError,
    RemoteProtocolError,
)
from secagg.hazmat import shamir
from secagg.hazmat.shamir import PRIME, Share, lagrange_at_zero, reconstruct, split

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "shamir.json").read_text())
SMALL_PRIMES = [p for p in range(2, 400) if all(p % q for q in range(2, int(p**0.5) + 1))]


# ------------------------------------------------------------------ independent helpers


def miller_rabin(n: int, bases) -> bool:
    """False means n is certainly composite; True means n passed every base."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


class Stream:
    """Deterministic randbytes over fixed bytes; fails loudly if read past the end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def __call__(self, n: int) -> bytes:
        assert self.pos + n <= len(self.data), "stream exhausted"
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def seeded(seed: int):
    return random.Random(seed).randbytes


def coefficients_from_stream(stream: bytes, count: int) -> list[int]:
    """The documented sampler, written out again: 33-byte big-endian w, reject w >= 255*p."""
    out, pos = [], 0
    while len(out) < count:
        w = int.from_bytes(stream[pos:pos + 33], "big")
        pos += 33
        if w < 255 * PRIME:
            out.append(w % PRIME)
    assert pos == len(stream), "the recorded stream has unused bytes"
    return out


def poly_mul_linear(poly: list[int], root: int) -> list[int]:
    """poly(x) * (x - root), coefficients lowest degree first."""
    out = [0] * (len(poly) + 1)
    for i, a in enumerate(poly):
        out[i] = (out[i] - root * a) % PRIME
        out[i + 1] = (out[i + 1] + a) % PRIME
    return out


def interpolate(points: list[tuple[int, int]]) -> list[int]:
    """Monomial coefficients of the unique polynomial of degree < len(points) through the points."""
    total = [0] * len(points)
    for i, (xi, yi) in enumerate(points):
        basis, denom = [1], 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                basis = poly_mul_linear(basis, xj)
                denom = denom * (xi - xj) % PRIME
        scale = yi * pow(denom, -1, PRIME) % PRIME
        total = [(a + scale * b) % PRIME for a, b in zip(total, basis)]
    return total


# ------------------------------------------------------------------ the prime


def test_prime_value_and_primality():
    assert PRIME == 2**256 + 297
    bases = SMALL_PRIMES[:64] + [random.Random(7).randrange(2, PRIME - 1) for _ in range(64)]
    assert miller_rabin(PRIME, bases)  # 128 bases: error probability < 4**-128 if composite
    assert shamir.SHARE_VALUE_BYTES == 33 and PRIME.bit_length() == 257


def test_prime_is_the_smallest_above_2_256():
    # Every odd candidate in (2**256, PRIME) fails base 2 or 3, which proves it composite.
    for candidate in range(2**256 + 1, PRIME, 2):
        assert not miller_rabin(candidate, [2, 3]), candidate


def test_prime_against_sympy():
    sympy = pytest.importorskip("sympy")
    assert sympy.isprime(PRIME) and sympy.nextprime(2**256) == PRIME


# ------------------------------------------------------------------ known-answer vectors


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["label"])
def test_known_answer_vectors(vec):
    assert int(VECTORS["prime"]) == PRIME
    secret, t, xs = bytes.fromhex(vec["secret"]), vec["threshold"], vec["xs"]
    stream = Stream(bytes.fromhex(vec["randbytes"]))
    shares = split(secret, threshold=t, xs=xs, randbytes=stream)
    assert [s.to_bytes().hex() for s in shares] == vec["shares"]
    assert stream.pos == len(stream.data)  # consumed exactly the recorded stream
    # Independent derivation: coefficients by the documented sampler, f(x) by plain powers.
    coeffs = [int.from_bytes(secret, "big")] + coefficients_from_stream(stream.data, t - 1)
    for x, raw in zip(xs, vec["shares"]):
        y = sum(a * pow(x, i, PRIME) for i, a in enumerate(coeffs)) % PRIME
        assert raw == (x.to_bytes(4, "big") + y.to_bytes(33, "big")).hex()
    parsed = [Share.from_bytes(bytes.fromhex(h)) for h in vec["shares"]]
    assert reconstruct(parsed, threshold=t) == secret
    assert reconstruct(parsed[::-1][:t], threshold=t) == secret


def test_vectors_exercise_rejection():
    # The sampler must skip a 33-byte draw >= 255*p: 2**264 - 1 is one (255*p < 2**264 - 2**255).
    assert 255 * PRIME < 2**264 - 1 < 256 * PRIME
    labels = {v["label"]: v for v in VECTORS["vectors"]}
    assert labels["t2-rejection-first"]["randbytes"].startswith("ff" * 33)
    stream = Stream(b"\xff" * 33 + (5).to_bytes(33, "big"))
    shares = split(bytes(32), threshold=2, xs=[1, 2], randbytes=stream)
    assert [s.y for s in shares] == [5, 10]  # f(x) = 0 + 5x: the rejected draw was skipped


# ------------------------------------------------------------------ reconstruction


@settings(max_examples=60, deadline=None)
@given(data=st.data(), secret=st.binary(min_size=32, max_size=32), seed=st.integers(0, 2**32))
def test_any_t_shares_reconstruct(data, secret, seed):
    m = data.draw(st.integers(1, 20), label="m")
    t = data.draw(st.integers(1, m), label="t")
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=m, max_size=m, unique=True), label="xs")
    shares = split(secret, threshold=t, xs=xs, randbytes=seeded(seed))
    assert [s.x for s in shares] == xs
    order = data.draw(st.permutations(range(m)), label="order")
    assert reconstruct([shares[i] for i in order[:t]], threshold=t) == secret
    assert reconstruct([shares[i] for i in order], threshold=t) == secret  # all m: consistent


def test_every_t_subset_of_a_small_example():
    secret = bytes(range(100, 132))
    shares = split(secret, threshold=4, xs=[1, 2, 3, 10, 11, 200, 2**32 - 1], randbytes=seeded(1))
    for size in range(len(shares) + 1):
        for subset in itertools.combinations(shares, size):
            if size < 4:
                with pytest.raises(InsufficientSharesError):
                    reconstruct(subset, threshold=4)
            else:
                assert reconstruct(subset, threshold=4) == secret


@settings(max_examples=40, deadline=None)
@given(data=st.data(), s1=st.binary(min_size=32, max_size=32), s2=st.binary(min_size=32, max_size=32),
       seed=st.integers(0, 2**32))
def test_t_minus_1_shares_fit_every_secret(data, s1, s2, seed):
    """Perfect hiding: t-1 shares of s1 are exactly what sharing s2 gives for one coefficient draw.

    The polynomial through (0, s2) and the t-1 observed points exists and is unique, so for every
    candidate secret exactly one coefficient vector explains the view: with uniform coefficients
    the view has the same distribution whatever the secret.
    """
    t = data.draw(st.integers(2, 10), label="t")
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=t, max_size=t, unique=True), label="xs")
    shares = split(s1, threshold=t, xs=xs, randbytes=seeded(seed))
    seen = shares[: t - 1]
    with pytest.raises(InsufficientSharesError):
        reconstruct(seen, threshold=t)
    g = interpolate([(0, int.from_bytes(s2, "big"))] + [(s.x, s.y) for s in seen])
    stream = Stream(b"".join(a.to_bytes(33, "big") for a in g[1:]))  # a < p < 255p: accepted as is
    again = split(s2, threshold=t, xs=[s.x for s in seen] + [xs[-1]], randbytes=stream)
    assert again[: t - 1] == seen
    assert reconstruct(again, threshold=t) == s2


def test_share_value_is_uniform():
    """One share's y = s + a_1 x is uniform on GF(p) for any fixed secret (t = 2).

    Chi-square over 64 equal bins of y (top bits) and 64 residues y mod 64 (low bits), 20,000
    shares from a seeded generator; the critical value has p = 1e-6 for 63 degrees of freedom,
    so with this fixed seed the test is deterministic and a non-uniform sampler fails it.
    """
    chi2 = pytest.importorskip("scipy.stats").chi2
    critical = chi2.isf(1e-6, 63)
    draws, rand = 20_000, seeded(2024)
    for secret in (bytes(32), b"\xff" * 32):
        ys = [split(secret, threshold=2, xs=[7, 8], randbytes=rand)[0].y for _ in range(draws)]
        for bins in ([y * 64 // PRIME for y in ys], [y % 64 for y in ys]):
            counts = [0] * 64
            for b in bins:
                counts[b] += 1
            expected = draws / 64
            assert sum((c - expected) ** 2 / expected for c in counts) < critical


def test_reconstruct_is_fast_with_cached_coefficients():
    xs = list(range(1, 18))
    sets = [split(random.Random(i).randbytes(32), threshold=17, xs=xs, randbytes=seeded(i)) for i in range(1000)]
    lagrange_at_zero.cache_clear()
    best = float("inf")
    for _ in range(3):  # CPU time, best of three: insensitive to other processes
        start = time.process_time()
        for shares in sets:
            reconstruct(shares, threshold=17)
        best = min(best, time.process_time() - start)
    assert best < 0.1, f"1000 reconstructions with t=17 took {best:.3f} s of CPU"
    assert lagrange_at_zero.cache_info().hits >= 999


def test_lagrange_at_zero_known_answer():
    # xs = (1, 2): f(0) = 2 f(1) - f(2) for any line, so the coefficients are (2, -1 mod p).
    assert lagrange_at_zero((1, 2)) == (2, PRIME - 1)
    # xs = (1, 2, 3): f(0) = 3 f(1) - 3 f(2) + f(3) for any parabola.
    assert lagrange_at_zero((1, 2, 3)) == (3, PRIME - 3, 1)
    with pytest.raises(DuplicateShareError):
        lagrange_at_zero((1, 1))
    with pytest.raises(ConfigError):
        lagrange_at_zero((0, 1))


# ------------------------------------------------------------------ errors


def test_duplicate_shares_rejected():
    shares = split(bytes(32), threshold=2, xs=[1, 2, 3], randbytes=seeded(3))
    with pytest.raises(DuplicateShareError, match="x: \\[2\\]"):
        reconstruct([shares[1], shares[0], shares[1]], threshold=2)


def test_too_few_shares_rejected():
    shares = split(bytes(32), threshold=3, xs=[1, 2, 3], randbytes=seeded(4))
    with pytest.raises(InsufficientSharesError, match="got 2 shares, need threshold=3"):
        reconstruct(shares[:2], threshold=3)
    with pytest.raises(InsufficientSharesError):
        reconstruct([], threshold=1)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_any_single_tampered_share_is_caught_with_more_than_t(data, seed):
    t = data.draw(st.integers(1, 8), label="t")
    m = data.draw(st.integers(t + 1, t + 5), label="m")
    shares = split(random.Random(seed).randbytes(32), threshold=t, xs=range(1, m + 1), randbytes=seeded(seed))
    i = data.draw(st.integers(0, m - 1), label="i")
    delta = data.draw(st.integers(1, PRIME - 1), label="delta")
    shares[i] = Share(shares[i].x, (shares[i].y + delta) % PRIME)
    with pytest.raises(InconsistentSharesError) as err:
        reconstruct(shares, threshold=t)
    assert isinstance(err.value, RemoteProtocolError)  # a peer's fault, not the caller's


def test_value_out_of_secret_range_is_inconsistent():
    # f(x) = (2**256 + 5) + 3x is a valid field polynomial whose constant is no 32-byte string.
    c = 2**256 + 5
    shares = [Share(x, (c + 3 * x) % PRIME) for x in (1, 2)]
    with pytest.raises(InconsistentSharesError, match="2\\*\\*256"):
        reconstruct(shares, threshold=2)


@pytest.mark.parametrize("raw, why", [
    (bytes(36), "36"),
    (bytes(38), "38"),
    (b"", "0"),
    ((1).to_bytes(4, "big") + PRIME.to_bytes(33, "big"), "y="),
    ((1).to_bytes(4, "big") + (2**264 - 1).to_bytes(33, "big"), "y="),
    ((0).to_bytes(4, "big") + (5).to_bytes(33, "big"), "x=0"),
])
def test_malformed_share_bytes(raw, why):
    with pytest.raises(MalformedShareError, match=why):
        Share.from_bytes(raw)


def test_malformed_share_values_and_objects():
    for x, y in [(0, 1), (2**32, 1), (1, -1), (1, PRIME), (True, 1), (1.0, 1)]:
        with pytest.raises(MalformedShareError):
            Share(x, y)
    with pytest.raises(MalformedShareError):
        reconstruct([(1, 2), (2, 3)], threshold=2)


@given(x=st.integers(1, 2**32 - 1), y=st.integers(0, PRIME - 1))
def test_share_bytes_round_trip(x, y):
    raw = Share(x, y).to_bytes()
    assert len(raw) == 37 and raw[:4] == x.to_bytes(4, "big") and raw[4:] == y.to_bytes(33, "big")
    assert Share.from_bytes(raw) == Share(x, y)


@pytest.mark.parametrize("secret", [bytes(31), bytes(33), b"", "a" * 32, None])
def test_split_rejects_bad_secret(secret):
    with pytest.raises(InputError, match="32 bytes"):
        split(secret, threshold=1, xs=[1])


@pytest.mark.parametrize("threshold, xs, match", [
    (0, [1, 2], "threshold"),
    (3, [1, 2], "threshold"),
    (True, [1, 2], "threshold"),
    (1, [], "threshold"),
    (2, [1, 1], "distinct"),
    (1, [0, 1], "xs"),
    (1, [2**32], "xs"),
    (1, [1.0], "xs"),
])
def test_split_rejects_bad_config(threshold, xs, match):
    with pytest.raises(ConfigError, match=match):
        split(bytes(32), threshold=threshold, xs=xs, randbytes=seeded(0))


def test_reconstruct_rejects_bad_threshold():
    shares = split(bytes(32), threshold=1, xs=[1], randbytes=seeded(0))
    for t in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="threshold"):
            reconstruct(shares, threshold=t)


def test_bad_randbytes_is_reported():
    with pytest.raises(InputError, match="randbytes"):
        split(bytes(32), threshold=2, xs=[1, 2], randbytes=lambda n: b"\x00" * (n - 1))


def test_default_randomness_differs_between_calls():
    a = split(bytes(32), threshold=2, xs=[1, 2])
    b = split(bytes(32), threshold=2, xs=[1, 2])
    assert a != b  # equal only if os.urandom repeated a 256-bit draw
