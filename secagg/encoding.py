"""Fixed-point encoding of real vectors into Z_{2^bits} so that a sum over n clients cannot wrap.

A client clips its vector (optionally in L2 norm, then each coordinate to [-clip, clip]),
multiplies by ``scale`` and rounds stochastically (floor, plus 1 with probability equal to the
fractional part), which is unbiased: E[round(v)] = v. It then adds ``offset = ceil(clip*scale)``,
so every word lies in [0, 2*offset]. The server receives only the sum mod 2**bits of the words of
the ``count`` survivors; if ``max_clients * 2*offset <= 2**bits - 1`` that sum never wraps, so
subtracting ``count*offset`` and dividing by ``scale`` gives the sum of the clipped vectors with an
error below ``count/scale`` per coordinate (each rounding moves a value by less than 1).

The no-wrap condition is checked when the encoding is built, not when data arrives, so a setup
that could overflow is refused before any client spends effort on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, InputError, OverflowRiskError

__all__ = ["MAX_BITS", "clip_l2", "clip_coordinates", "word_dtype", "FixedPointEncoding"]

#: Largest modulus exponent: words fit a uint64 with headroom, and int64 holds count*offset.
MAX_BITS = 62
#: Coordinates rounded per step of ``FixedPointEncoding.encode``: 8192 float64 (64 KiB) buffers stay
#: in cache and in the allocator's heap (fresh d-sized arrays each cost a page fault per 4 KiB).
ENCODE_CHUNK = 1 << 13


def _positive_finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a positive finite number, got {name}={value!r}")
    if not math.isfinite(float(value)) or float(value) <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {name}={value!r}")
    return float(value)


def _finite_array(x: object, name: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise InputError(f"{name} must have a floating dtype, got dtype={x.dtype}")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise InputError(f"{name} has {bad} NaN or inf entries; inputs must be finite")
    return x


def _norm(v: np.ndarray) -> float:
    # einsum, not numpy.linalg.norm: its multithreaded BLAS dot costs ~100x more on a busy machine
    flat = v.ravel()
    return math.sqrt(float(np.einsum("i,i->", flat, flat)))


def _scaled_norm(v: np.ndarray, factor: float, peak: float) -> float:
    """``_norm(v * factor)`` of exactly those rounded products, a chunk at a time (no d-sized copy).
    ``peak`` = max|v|: where the largest product lies outside [2^-300, 2^300] its squares would
    overflow (or vanish), so each product is first scaled by the power of two 2^-e that brings the
    largest near 1 (exact) and the norm scaled back."""
    top = peak * factor
    unit = 1.0 if 2.0**-300 <= top <= 2.0**300 else math.ldexp(1.0, -math.frexp(top)[1])
    flat, total = v.ravel(), 0.0
    buf = np.empty(min(ENCODE_CHUNK, flat.size))
    for a in range(0, flat.size, buf.size):
        part = np.multiply(flat[a:a + buf.size], factor, out=buf[:flat.size - a])
        if unit != 1.0:
            part *= unit
        total += float(np.einsum("i,i->", part, part))
    return math.sqrt(total) / unit


def clip_l2(x: np.ndarray, max_norm: float, *, overwrite: bool = False) -> np.ndarray:
    """A float64 copy of ``x`` scaled down, if needed, so its L2 norm is at most ``max_norm``;
    ``overwrite``: a float64 ``x`` is scaled in place and returned instead (no copy).

    Where max|x| lies outside [2^-300, 2^300] the norm is computed on x / max|x|, so huge entries
    do not overflow (inside it the squares can neither overflow nor lose the norm to underflow),
    and the factor is nudged down by ulps until the rounded result really satisfies the bound,
    with a 2^-40 relative margin so that another way of summing the squares agrees (DP
    sensitivity relies on it). The copy is the only d-sized array made.
    """
    max_norm = _positive_finite(max_norm, "max_norm")
    out = _finite_array(x).astype(np.float64, copy=not overwrite)  # a copy unless overwrite (and float64)
    peak = max(float(out.max()), -float(out.min())) if out.size else 0.0  # max |x|
    if peak == 0.0:
        return out
    norm = _norm(out) if 2.0**-300 <= peak <= 2.0**300 else peak * _norm(out / peak)
    if norm <= max_norm:
        return out
    # Aim 2^-40 (relative) below the bound: any float64 summation order of the squares (ours, a
    # BLAS dot, a pairwise sum) then agrees that the result meets it; then nudge by ulps if needed.
    target = max_norm * (1.0 - 2.0**-40)
    factor = target / norm
    while _scaled_norm(out, factor, peak) > target:  # at most a few ulps of rounding
        factor = float(np.nextafter(factor, 0.0))
    out *= factor  # the products _scaled_norm checked
    return out


def clip_coordinates(x: np.ndarray, bound: float) -> np.ndarray:
    """A float64 copy of ``x`` with every coordinate clipped to [-bound, bound]."""
    bound = _positive_finite(bound, "bound")
    return np.clip(_finite_array(x).astype(np.float64), -bound, bound)


def word_dtype(bits: int) -> np.dtype:
    """uint32 for bits <= 32, uint64 for bits <= 62: the narrowest word that holds Z_{2^bits}."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an int in [1, {MAX_BITS}], got bits={bits!r}")
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an int {rng}, got {name}={value!r}")
    return int(value)


@dataclass(frozen=True)
class FixedPointEncoding:
    """Clip to [-clip, clip], scale, round stochastically, shift into [0, 2*offset] within 2**bits.

    ``max_clients`` is the largest number of words that will ever be summed; construction raises
    OverflowRiskError if that many could wrap the modulus.
    """

    bits: int
    clip: float
    scale: float
    max_clients: int

    def __post_init__(self) -> None:
        word_dtype(self.bits)
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "clip", _positive_finite(self.clip, "clip"))
        object.__setattr__(self, "scale", _positive_finite(self.scale, "scale"))
        object.__setattr__(self, "max_clients", _check_int(self.max_clients, "max_clients", 1))
        if not math.isfinite(self.clip * self.scale):
            raise OverflowRiskError(f"clip*scale = {self.clip!r}*{self.scale!r} overflows a float: no word of "
                                    f"2**bits = 2**{self.bits} can hold it; use a smaller clip*scale")
        top = 2 * self.offset
        worst = self.max_clients * top
        if worst > 2**self.bits - 1:
            raise OverflowRiskError(
                f"sum can wrap: n={self.max_clients} clients (max_clients), each adding a word in "
                f"[0, 2*offset] = [0, {top}] (offset = ceil(clip*scale) = ceil({self.clip!r}*{self.scale!r})), "
                f"can reach {worst} > 2**bits - 1 = {2**self.bits - 1} (bits={self.bits}); "
                f"use at most {(2**self.bits - 1) // top} clients, a smaller clip*scale, or more bits")

    @property
    def offset(self) -> int:
        """ceil(clip * scale): the shift that makes every rounded coordinate non-negative."""
        return math.ceil(self.clip * self.scale)

    @property
    def modulus(self) -> int:
        """2**bits, the modulus the masked sum lives in."""
        return 2**self.bits

    @classmethod
    def for_sum(cls, *, bits: int, clip: float, max_clients: int) -> FixedPointEncoding:
        """The encoding with the largest scale whose sum over ``max_clients`` cannot wrap.

        The largest offset O that fits is floor((2**bits - 1) / (2*max_clients)); the scale is
        then the largest float with ceil(clip*scale) <= O. If even O = 1 does not fit, the
        modulus is too small for that many clients and OverflowRiskError says so.
        """
        word_dtype(bits)
        clip = _positive_finite(clip, "clip")
        max_clients = _check_int(max_clients, "max_clients", 1)
        best = (2**bits - 1) // (2 * max_clients)
        if best < 1:
            raise OverflowRiskError(
                f"no scale fits: n={max_clients} clients (max_clients), each adding a word in [0, 2] "
                f"(the least range, offset = 1), can reach {2 * max_clients} > 2**bits - 1 = "
                f"{2**bits - 1} (bits={bits}); use at most {(2**bits - 1) // 2} clients or more bits")
        scale = best / clip
        if not math.isfinite(scale):
            raise ConfigError(f"clip={clip!r} is too small: the largest offset {best} over clip overflows a float")
        while scale > 0 and math.ceil(clip * scale) > best:  # rounding of best/clip went up
            scale = float(np.nextafter(scale, 0.0))
        while math.ceil(clip * float(np.nextafter(scale, math.inf))) <= best:  # or down
            scale = float(np.nextafter(scale, math.inf))
        return cls(bits=bits, clip=clip, scale=scale, max_clients=max_clients)

    def encode(self, x: np.ndarray, *, rng: np.random.Generator, l2_clip: float | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """Words of ``word_dtype(bits)`` in [0, 2*offset], one per coordinate of the 1-D ``x``.

        ``rng`` drives the stochastic rounding (injected, never global state); ``l2_clip``, if
        given, bounds the L2 norm before the coordinate clip. ``out``: the array to write the
        words into (the word dtype, ``x``'s length), else a new one; it is returned.

        Coordinates are rounded ``ENCODE_CHUNK`` at a time in reused buffers (the words are those
        of one pass over the whole vector: the rounding draws come from ``rng`` in the same order),
        so no d-sized float temporaries are made beside the L2-clipped copy.
        """
        x = _finite_array(x)
        if x.ndim != 1:
            raise InputError(f"x must be 1-D, got ndim={x.ndim} (shape {x.shape})")
        if not isinstance(rng, np.random.Generator):
            raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        dtype, d = word_dtype(self.bits), x.shape[0]
        if out is None:
            out = np.empty(d, dtype=dtype)
        elif not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != (d,):
            raise InputError(f"out must be a numpy array of dtype {dtype} and shape ({d},), got "
                             f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
        v = clip_l2(x, l2_clip) if l2_clip is not None else x
        chunk = min(ENCODE_CHUNK, max(d, 1))
        scaled, low, draws = (np.empty(chunk) for _ in range(3))
        ints = np.empty(chunk, dtype=np.int64)
        for a in range(0, d, chunk):
            m = min(chunk, d - a)
            s, lo, r, w = scaled[:m], low[:m], draws[:m], ints[:m]
            s[...] = v[a:a + m]                     # float64, as clip_coordinates makes it
            np.clip(s, -self.clip, self.clip, out=s)
            s *= self.scale
            np.floor(s, out=lo)
            s -= lo                                 # the fractional part
            rng.random(m, out=r)
            lo += r < s                             # P(+1) = frac: unbiased
            w[...] = lo                             # as astype(np.int64)
            w += self.offset
            out[a:a + m] = w
        return out

    def _check_count(self, count: int) -> int:
        return _check_int(count, "count", 1, self.max_clients)

    def decode_sum(self, words: np.ndarray, *, count: int) -> np.ndarray:
        """float64 estimate of the sum of ``count`` clipped inputs from the sum of their words."""
        count = self._check_count(count)
        dtype = word_dtype(self.bits)
        if not isinstance(words, np.ndarray) or words.dtype != dtype:
            got = words.dtype if isinstance(words, np.ndarray) else type(words).__name__
            raise InputError(f"words must be a numpy array of dtype {dtype} (bits={self.bits}), got {got}")
        if words.ndim != 1:
            raise InputError(f"words must be 1-D, got ndim={words.ndim}")
        if self.bits < 8 * dtype.itemsize and words.size and int(words.max()) >= 2**self.bits:
            raise InputError(f"words must be < 2**bits = {2**self.bits} (bits={self.bits}), "
                             f"got a word {int(words.max())}")
        centred = words.astype(np.int64) - np.int64(count * self.offset)
        return centred / self.scale

    def max_error_per_coordinate(self, count: int) -> float:
        """Bound on |decode_sum - sum of clipped inputs| per coordinate: count/scale, plus float slack.

        Each client's stochastic rounding moves a scaled value by less than 1, so the sum of
        ``count`` of them is off by less than count (scaled), i.e. count/scale after decoding. In
        float64, x*scale and the final division each add a relative error of at most 2**-53 of
        values below count*offset; the factor (1 + 4*offset*2**-53) covers that, and is 1 for all
        practical purposes unless clip*scale nears 2**53.
        """
        count = self._check_count(count)
        return count * (1.0 + 4.0 * self.offset * 2.0**-53) / self.scale
