"""Shamir t-of-m secret sharing of 32-byte secrets over GF(PRIME), PRIME = 2**256 + 297.

Shamir, "How to share a secret", CACM 1979. A secret s is the constant term of a random
polynomial f of degree t-1; the share of holder x is (x, f(x)). Any t shares determine f (Lagrange
interpolation at 0); any t-1 shares are consistent with every secret, each by exactly one
polynomial, so with uniform coefficients they say nothing about s.

Why this prime: a secret is a full 32-byte string (an X25519 private key or a PRG seed), i.e. any
integer in [0, 2**256), so the field must have more than 2**256 elements. 2**256 + 297 is the
smallest prime above 2**256 (the tests check it with Miller-Rabin and check that every odd number
in between is composite). A field element is written in SHARE_VALUE_BYTES = 33 bytes, big-endian.

This is a sharp part (``hazmat``): it does not authenticate shares. Exactly t shares always
interpolate to *some* value; only with more than t shares can forged shares be detected (they do
not lie on one polynomial of degree t-1), which ``reconstruct`` checks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import (
    ConfigError,
    DuplicateShareError,
    InconsistentSharesError,
    InputError,
    InsufficientSharesError,
    MalformedShareError,
)

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_VALUE_BYTES",
    "SHARE_BYTES",
    "MAX_X",
    "Share",
    "split",
    "lagrange_at_zero",
    "reconstruct",
]

#: The smallest prime above 2**256 (2**256 + 297).
PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_VALUE_BYTES = 33
X_BYTES = 4
SHARE_BYTES = X_BYTES + SHARE_VALUE_BYTES
#: Largest x-coordinate: x is a 4-byte unsigned integer and never 0 (f(0) is the secret).
MAX_X = 2**32 - 1

# Rejection sampling of a coefficient: read 33 bytes big-endian as w in [0, 2**264); accept if
# w < 255 * PRIME (the largest multiple of PRIME that fits, since 256 * PRIME > 2**264) and use
# w mod PRIME. Every field element then has exactly 255 preimages, so the result is uniform;
# a draw is rejected with probability (2**264 - 255 * PRIME) / 2**264 < 1/256.
_SAMPLE_LIMIT = (2 ** (8 * SHARE_VALUE_BYTES) // PRIME) * PRIME


@dataclass(frozen=True)
class Share:
    """One holder's share: the point (x, y = f(x)) with 1 <= x <= 2**32 - 1 and 0 <= y < PRIME.

    A Share that exists is well formed (checked here), so bytes from a peer are parsed once with
    ``from_bytes`` and malformed input fails there, as a ``MalformedShareError``.
    """

    x: int
    y: int

    def __post_init__(self) -> None:
        if not _is_int(self.x) or not 1 <= self.x <= MAX_X:
            raise MalformedShareError(f"share x must be an int in [1, {MAX_X}], got x={self.x!r}")
        if not _is_int(self.y) or not 0 <= self.y < PRIME:
            raise MalformedShareError(f"share y must be an int in [0, PRIME), got y={self.y!r:.100}")

    def to_bytes(self) -> bytes:
        """4-byte big-endian x, then 33-byte big-endian y (37 bytes)."""
        return self.x.to_bytes(X_BYTES, "big") + self.y.to_bytes(SHARE_VALUE_BYTES, "big")

    @classmethod
    def from_bytes(cls, b: bytes) -> Share:
        """Parse ``to_bytes`` output; wrong size, x == 0 or y >= PRIME raise MalformedShareError."""
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise MalformedShareError(f"share must be bytes, got {type(b).__name__}")
        b = bytes(b)
        if len(b) != SHARE_BYTES:
            raise MalformedShareError(f"share must be {SHARE_BYTES} bytes, got {len(b)}")
        return cls(int.from_bytes(b[:X_BYTES], "big"), int.from_bytes(b[X_BYTES:], "big"))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_xs(xs: Sequence[int], name: str) -> tuple[int, ...]:
    xs = tuple(xs)
    bad = [x for x in xs if not _is_int(x) or not 1 <= x <= MAX_X]
    if bad:
        raise ConfigError(f"{name} must be ints in [1, {MAX_X}] (x = client_id + 1), bad: {bad[:10]}")
    if len(set(xs)) != len(xs):
        dup = sorted({x for x in xs if xs.count(x) > 1})
        raise ConfigError(f"{name} must be distinct, repeated: {dup[:10]}")
    return xs


def _random_coefficient(randbytes: Callable[[int], bytes]) -> int:
    """A uniform field element from ``randbytes`` by rejection sampling (see _SAMPLE_LIMIT)."""
    while True:
        raw = randbytes(SHARE_VALUE_BYTES)
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != SHARE_VALUE_BYTES:
            raise InputError(f"randbytes({SHARE_VALUE_BYTES}) returned {raw!r:.80}, "
                             f"not {SHARE_VALUE_BYTES} bytes")
        w = int.from_bytes(raw, "big")
        if w < _SAMPLE_LIMIT:
            return w % PRIME


def split(secret: bytes, *, threshold: int, xs: Sequence[int],
          randbytes: Callable[[int], bytes] = os.urandom) -> list[Share]:
    """Shares of ``secret`` for the holders at ``xs`` (in that order); any ``threshold`` recover it.

    ``randbytes`` supplies the t-1 random coefficients a_1..a_{t-1} (drawn in that order, each by
    rejection sampling of 33-byte strings); it is injectable so tests are deterministic, and
    cryptographic by default.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
        length = len(secret) if isinstance(secret, (bytes, bytearray)) else "?"
        raise InputError(f"secret must be exactly {SECRET_BYTES} bytes, got {type(secret).__name__} "
                         f"of length {length}")
    xs = _check_xs(xs, "xs")
    if not _is_int(threshold) or not 1 <= threshold <= len(xs):
        raise ConfigError(f"threshold must be an int in [1, len(xs)={len(xs)}], got threshold={threshold!r}")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [_random_coefficient(randbytes) for _ in range(threshold - 1)]
    top_down = coeffs[::-1]
    shares = []
    for x in xs:  # Horner: t-1 multiplications per holder
        y = 0
        for a in top_down:
            y = (y * x + a) % PRIME
        shares.append(Share(x, y))
    return shares


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses mod PRIME of nonzero ``values`` with one modular exponentiation (Montgomery's trick)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % PRIME
        inv = inv * values[i] % PRIME
    return out


@functools.lru_cache(maxsize=256)
def _barycentric_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """w_i = 1 / prod_{j != i} (x_i - x_j) mod PRIME: O(t^2) once per holder set."""
    dens = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                den = den * (xi - xj) % PRIME
        dens.append(den)
    return tuple(_batch_inverse(dens))


@functools.lru_cache(maxsize=1024)
def _lagrange_at(xs: tuple[int, ...], point: int) -> tuple[int, ...]:
    """l_i(point) = prod_{j != i} (point - x_j) / (x_i - x_j) mod PRIME, for distinct xs.

    Barycentric form (Berrut & Trefethen, SIAM Review 2004): l_i(p) = L(p) w_i / (p - x_i) with
    L(p) = prod_j (p - x_j), so each new point costs O(t) once the weights of the set are known.
    ``point`` must not be one of the xs.
    """
    diffs = [(point - x) % PRIME for x in xs]
    whole = 1
    for d in diffs:
        whole = whole * d % PRIME
    return tuple(whole * w % PRIME * inv % PRIME
                 for w, inv in zip(_barycentric_weights(xs), _batch_inverse(diffs)))


def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum_i l_i * f(x_i) for any f of degree < len(xs).

    Cached (functools.lru_cache, keyed by the tuple of xs in order), because the server
    reconstructs many secrets held by the same set of clients.
    """
    xs = tuple(xs)
    bad = [x for x in xs if not _is_int(x) or not 1 <= x <= MAX_X]
    if bad:
        raise ConfigError(f"xs must be ints in [1, {MAX_X}], bad: {bad[:10]}")
    if len(set(xs)) != len(xs):
        raise DuplicateShareError(f"xs must be distinct, got {sorted(xs)[:20]}")
    if not xs:
        raise InsufficientSharesError("lagrange_at_zero needs at least one x-coordinate")
    return _lagrange_at(xs, 0)


lagrange_at_zero.cache_info = _lagrange_at.cache_info  # type: ignore[attr-defined]


def _cache_clear() -> None:
    _lagrange_at.cache_clear()
    _barycentric_weights.cache_clear()


lagrange_at_zero.cache_clear = _cache_clear  # type: ignore[attr-defined]


def reconstruct(shares: Sequence[Share], *, threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares.

    With exactly t shares the result is the interpolated value (forgery is undetectable then,
    except when it lands at or above 2**256). With more than t, every share must lie on the
    polynomial through the first t (else InconsistentSharesError), which is how garbage is caught.
    """
    if not _is_int(threshold) or threshold < 1:
        raise ConfigError(f"threshold must be a positive int, got threshold={threshold!r}")
    shares = list(shares)
    for s in shares:
        if not isinstance(s, Share):
            raise MalformedShareError(f"expected Share objects, got {type(s).__name__}")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        dup = sorted({x for x in xs if xs.count(x) > 1})
        raise DuplicateShareError(f"two or more shares at the same x: {dup[:10]}")
    if len(shares) < threshold:
        raise InsufficientSharesError(f"got {len(shares)} shares, need threshold={threshold}")
    base = sorted(shares[:threshold], key=lambda s: s.x)  # sorted: one cache entry per holder set
    base_xs = tuple(s.x for s in base)
    base_ys = [s.y for s in base]
    value = sum(c * y for c, y in zip(_lagrange_at(base_xs, 0), base_ys)) % PRIME
    for extra in shares[threshold:]:
        expected = sum(c * y for c, y in zip(_lagrange_at(base_xs, extra.x), base_ys)) % PRIME
        if expected != extra.y:
            raise InconsistentSharesError(
                f"share at x={extra.x} is not on the degree-{threshold - 1} polynomial through the "
                f"shares at x={list(base_xs)[:20]}; at least one share is forged or corrupted")
    if value >= 2 ** (8 * SECRET_BYTES):
        raise InconsistentSharesError(
            f"the shares at x={list(base_xs)[:20]} interpolate to a value >= 2**256, which no "
            f"32-byte secret has; at least one share is forged or corrupted")
    return value.to_bytes(SECRET_BYTES, "big")
