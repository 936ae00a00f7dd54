"""Randomized Hadamard rotation: spreads a vector's norm evenly over its coordinates.

Distributed DP rounds and clips coordinates one by one; after a random rotation every coordinate
of a vector of norm c is about c / sqrt(D), so rounding and modular clipping cost little
(Kairouz, Liu, Steinke, ICML 2021, Section 4.2; Ailon and Chazelle 2006). The rotation is
R = H D_xi / sqrt(D): random signs xi, then the Walsh-Hadamard matrix H of order D, the next power
of two at or above the dimension (the input is zero-padded). R is orthogonal, so the norm is
kept and R^-1 = D_xi H / sqrt(D). The signs come from a *public* per-round seed so that the server,
which sees only the sum of rotated vectors, can undo the rotation after aggregation.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import DPConfigError

__all__ = ["padded_dim", "random_signs", "fwht", "rotate", "unrotate"]

_SIGN_DOMAIN = b"dp.rotation.signs.v1"
_MIN_SEED_BYTES = 16


def padded_dim(dim: int) -> int:
    """The smallest power of two >= ``dim`` (the length of a rotated vector)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise DPConfigError(f"dim must be a positive integer, got {dim!r}")
    return 1 << (int(dim) - 1).bit_length()


def random_signs(seed: bytes, size: int) -> np.ndarray:
    """``size`` signs +-1.0 from the public ``seed``: bit i of the AES-256-CTR keystream of
    key SHA-256(domain || seed), least significant bit first; bit 1 means -1."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) < _MIN_SEED_BYTES:
        length = len(seed) if isinstance(seed, (bytes, bytearray)) else "n/a"
        raise DPConfigError(f"seed must be at least {_MIN_SEED_BYTES} bytes, got "
                            f"{type(seed).__name__} of length {length}")
    key = hashlib.sha256(_SIGN_DOMAIN + bytes(seed)).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    raw = np.frombuffer(enc.update(bytes((size + 7) // 8)), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[:size]
    return 1.0 - 2.0 * bits.astype(np.float64)


def fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh-Hadamard transform along the last axis, in place; returns ``a``.

    ``a`` must be a C-contiguous float array whose last axis is a power of two. log2(D) passes,
    each two in-place vector operations on a (blocks, 2, h) view: x, y <- x + y, x - y.
    """
    size = a.shape[-1]
    if size & (size - 1):
        raise DPConfigError(f"last axis must be a power of two, got {size}")
    if not a.flags.c_contiguous:
        raise DPConfigError("fwht needs a C-contiguous array")
    h = 1
    while h < size:
        v = a.reshape(-1, 2, h)
        x, y = v[:, 0, :], v[:, 1, :]
        x += y          # x + y
        y *= -2.0
        y += x          # (x + y) - 2y = x - y
        h *= 2
    return a


def rotate(x: np.ndarray, *, seed: bytes) -> np.ndarray:
    """R x for vectors along the last axis of ``x``: pad to D = padded_dim, flip signs, Hadamard.

    Returns a new float64 array with last axis D; ``x`` is not modified.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise DPConfigError("x must have at least one axis")
    dim = x.shape[-1]
    size = padded_dim(dim)
    out = np.zeros(x.shape[:-1] + (size,), dtype=np.float64)
    out[..., :dim] = x
    out *= random_signs(seed, size)
    fwht(out)
    out *= 1.0 / np.sqrt(size)
    return out


def unrotate(y: np.ndarray, *, seed: bytes, dim: int) -> np.ndarray:
    """R^-1 y, truncated to the first ``dim`` coordinates (undoes ``rotate``)."""
    out = np.array(y, dtype=np.float64, order="C", copy=True)
    if out.ndim == 0:
        raise DPConfigError("y must have at least one axis")
    size = out.shape[-1]
    if padded_dim(dim) != size:
        raise DPConfigError(f"dim={dim!r} does not pad to the rotated length {size}")
    fwht(out)
    out *= random_signs(seed, size) / np.sqrt(size)
    return out[..., :dim] if dim == size else out[..., :dim].copy()
