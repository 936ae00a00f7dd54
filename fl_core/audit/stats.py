"""The statistics of the server-view checks: uniformity of masked words, independence of masked and
true inputs, and Holm's correction over a family of tests. Pure functions of arrays."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["ALPHA", "CONFIDENCE", "uniformity_p_value", "centered", "correlation_p_value", "holm"]

ALPHA = 1e-3          # family-wise false-alarm rate of each server-view test family
CONFIDENCE = 0.95     # of the empirical epsilon intervals and the one-run lower bound



def uniformity_p_value(words: np.ndarray, bits: int) -> tuple[float, int]:
    """p-value that ``words`` are i.i.d. uniform on [0, 2^bits), and the bins per test.

    Two Pearson chi-square tests over B = 2^b equal bins, one on the top b bits of each word and
    one on the bottom b bits (a mask that leaves either end unmasked fails one of them); b is the
    largest value <= min(8, bits) leaving at least 5 words per bin. Combined by Bonferroni:
    p = min(1, 2 min(p_top, p_bottom)).
    """
    w = np.asarray(words, dtype=np.uint64)
    d = w.size
    b = int(min(8, bits, max(1, math.floor(math.log2(max(d / 5, 2))))))
    bins = 1 << b
    top = (w >> np.uint64(bits - b)) & np.uint64(bins - 1)
    low = w & np.uint64(bins - 1)
    ps = [stats.chisquare(np.bincount(x.astype(np.int64), minlength=bins)).pvalue for x in (top, low)]
    return float(min(1.0, 2 * min(ps))), bins


def centered(words: np.ndarray, bits: int) -> np.ndarray:
    v = np.asarray(words, dtype=np.uint64).astype(np.float64)
    half = float(1 << (bits - 1))
    return np.where(v >= half, v - 2 * half, v)


def correlation_p_value(true_words: np.ndarray, masked_words: np.ndarray, bits: int) -> tuple[float, float]:
    """(Pearson r, two-sided p) between a client's true and masked words, both read as centered
    integers mod 2^bits. If the masked words are uniform and independent of the true ones, r
    has mean 0 and t = r sqrt((d-2)/(1-r^2)) is close to Student t with d-2 degrees of freedom.
    A constant true input has no correlation to test: (0, 1)."""
    x, y = centered(true_words, bits), centered(masked_words, bits)
    if x.std() == 0 or y.std() == 0:  # nothing varies: only an exact copy is evidence
        return (1.0, 0.0) if np.array_equal(x, y) else (0.0, 1.0)
    r = float(np.corrcoef(x, y)[0, 1])
    d = x.size
    if abs(r) >= 1.0:
        return r, 0.0
    t = r * math.sqrt((d - 2) / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), d - 2))


def holm(p_values, alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    reject = np.zeros(p.size, dtype=bool)
    for rank, i in enumerate(order):
        if p[i] > alpha / (p.size - rank):
            break
        reject[i] = True
    return reject.tolist()
