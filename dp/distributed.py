"""Distributed discrete Gaussian (DDG): client-level DP noise added by the clients, in Z_{2^bits}.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation" (ICML 2021, arXiv:2102.06387v4), Algorithms 1 and 2. Each client

1. clips its update to L2 norm c,
2. rotates it with the randomized Hadamard transform of a public per-round seed (padded length D),
3. scales by 1/gamma (gamma: the granularity) and rounds each coordinate up or down at random,
   unbiased, re-rounding until the integer vector's norm is at most the bound of the paper's
   Sec. 4 with parameter beta (``dp.calibration.ddg_l2_sensitivity``; the accountant uses the same
   bound),
4. adds discrete Gaussian noise N_Z(0, s^2)^D from its own secret ``NoiseGenerator``,
5. reduces mod 2**bits into secagg's word dtype.

The server gets the sum of the survivors' words mod 2**bits from secure aggregation, maps it to
centered integers in [-2**(bits-1), 2**(bits-1)), multiplies by gamma and un-rotates.

Dropouts and colluders. A server colluding with c clients knows their noise shares and can
subtract them, so only the honest survivors' noise counts: each client's noise parameter is
s = sigma / sqrt(h) with h = min_survivors - colluders (``DDGConfig.honest_survivors``). The noise
of any h honest shares sums to the target variance sigma^2, and secagg never releases a sum over
fewer than min_survivors clients, of which at most c collude. A sum over more survivors carries
more noise, which only helps: the extra shares are independent of the target client's data
(post-processing), so the guarantee computed for h shares holds for every sum secagg can release.

Neighbouring relation (``DDGConfig.adjacency``): zero-out (the client stays, keeps its noise
share, its update replaced by 0; what KLS 2021 prove) or replace-one (its update replaced by
another: sensitivity doubled). Add-remove would also take away its noise share, which no
analysis here covers: refused.

Range (the paper's Sec. 4.4 / Eq. 61 rule, also the authors' code): the modulus 2**bits must hold k
standard deviations each side of the aggregate of up to n = num_clients clients, modelled as
sub-Gaussian with per-coordinate variance (c^2 n^2 / D + n (gamma^2/4 + sigma_client^2)) / gamma^2
(worst-case aligned signal, rounding, noise). Solving 2**bits = 2k sqrt(...) for gamma gives
gamma = 2k sqrt(c^2 n^2 / D + n sigma_client^2) / sqrt(4**bits - k^2 n), which needs
4**bits > k^2 n. With a target (epsilon, delta), sigma depends on gamma (rounding inflates the
sensitivity) and gamma on sigma, so ``DDGConfig.plan`` iterates the two to their least fixed
point; it refuses a bit width for which none exists.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from secagg.encoding import MAX_BITS, word_dtype

from .calibration import DEFAULT_BETA, calibrate_ddg, make_ddg_event
from .errors import DPConfigError, DPError
from .events import (
    Adjacency,
    DistributedDiscreteGaussianEvent,
    coerce_adjacency,
    check_count,
    check_delta,
    check_positive,
    check_sampling_rate,
)
from .noise import NoiseGenerator, discrete_gaussian
from .rotation import padded_dim, rotate, unrotate

__all__ = [
    "DDGConfig",
    "DDGPlan",
    "choose_gamma",
    "clip_l2",
    "conditional_round",
    "to_words",
    "from_words",
    "modular_sum",
    "encode_client",
    "decode_sum",
]

#: Re-rounding attempts before giving up; each fails with probability <= beta (< 1), so 1000
#: failures in a row happen with probability below 0.61**1000 ~ 1e-215 at the default beta.
_MAX_ROUNDING_TRIES = 1000
#: Fixed-point iterations for (gamma, sigma); convergence is geometric when a fixed point exists.
_MAX_PLAN_ITERATIONS = 500
#: The iteration stops when gamma moves by less than this (relative); the noise calibration is
#: solved 100x finer so its bisection grid does not make the iteration jitter.
_PLAN_RTOL = 1e-8
_CALIBRATION_RTOL = 1e-10


def _check_bits(bits: object) -> int:
    if (isinstance(bits, bool) or not isinstance(bits, numbers.Integral)
            or not 2 <= bits <= MAX_BITS):
        raise DPConfigError(f"bits must be an int in [2, {MAX_BITS}], got bits={bits!r}")
    return int(bits)


def choose_gamma(*, l2_clip: float, bits: int, padded_dim: int, num_clients: int,
                 client_sigma: float, k_stddevs: float) -> float:
    """The granularity gamma for which 2**bits spans k_stddevs each side of the aggregate.

    KLS 2021 Sec. 4.4: solves 2**bits = 2k sqrt(c^2 n^2/D + n (gamma^2/4 + sigma^2)) / gamma,
    with ``client_sigma`` the per-client noise std in real units. Raises DPConfigError naming
    bits and n when 4**bits <= k^2 n (no gamma can fit even the rounding noise).
    """
    bits = _check_bits(bits)
    n = check_count(num_clients, "num_clients")
    k = check_positive("k_stddevs", k_stddevs)
    c = check_positive("l2_clip", l2_clip)
    headroom = 4.0**bits - k * k * n
    if headroom <= 0:
        raise DPConfigError(
            f"bits={bits} is too small for n={n} clients at k_stddevs={k:g}: the modulus "
            f"2**bits must exceed k*sqrt(n) = {k * math.sqrt(n):.4g} (4**bits > k^2 n)")
    spread = c * c * n * n / padded_dim + n * client_sigma * client_sigma
    return 2.0 * k * math.sqrt(spread) / math.sqrt(headroom)


@dataclass(frozen=True)
class DDGConfig:
    """What a DDG round needs; ``plan()`` turns it into gamma, the noise and the DP event.

    ``num_clients`` (n) is the most clients whose shares can be summed (the range must hold
    them); ``min_survivors`` the fewest; ``colluders`` the clients that may collude with the
    server (secagg's tolerated corrupt count): the noise is calibrated for the
    ``honest_survivors`` = min_survivors - colluders shares the server cannot subtract. Give
    either a target (``epsilon``, ``delta``) for ``rounds`` rounds at client sampling rate
    ``sampling_rate``, or a ``noise_multiplier`` z: the noise std of the honest survivors' sum is
    z * l2_clip. ``adjacency``: zero-out (default) or replace-one; add-remove is refused.
    """

    l2_clip: float
    bits: int
    dim: int
    num_clients: int
    min_survivors: int
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    rounds: int = 1
    sampling_rate: float = 1.0
    beta: float = DEFAULT_BETA
    k_stddevs: float = 4.0
    colluders: int = 0
    adjacency: Adjacency = Adjacency.ZERO_OUT

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "l2_clip", check_positive("l2_clip", self.l2_clip))
        set_(self, "bits", _check_bits(self.bits))
        set_(self, "dim", check_count(self.dim, "dim"))
        set_(self, "num_clients", check_count(self.num_clients, "num_clients"))
        set_(self, "min_survivors", check_count(self.min_survivors, "min_survivors"))
        if self.min_survivors > self.num_clients:
            raise DPConfigError(f"min_survivors={self.min_survivors} exceeds "
                                f"num_clients={self.num_clients}")
        set_(self, "colluders", check_count(self.colluders, "colluders", minimum=0))
        if self.colluders >= self.min_survivors:
            raise DPConfigError(f"colluders={self.colluders} leaves no honest survivor among "
                                f"min_survivors={self.min_survivors}")
        set_(self, "adjacency", coerce_adjacency(self.adjacency))
        if self.adjacency is Adjacency.ADD_REMOVE:
            raise DPConfigError(
                "adjacency='add-remove' is not offered for the distributed discrete Gaussian: "
                "a departing client takes its noise share (the sum then has one share fewer) and, "
                "with a fixed cohort, another client takes its place; no analysis of that is "
                "implemented. Use 'zero-out' (the client stays, its update replaced by 0) or "
                "'replace-one' (its update replaced by another)")
        set_(self, "rounds", check_count(self.rounds, "rounds"))
        set_(self, "sampling_rate", check_sampling_rate(self.sampling_rate))
        set_(self, "k_stddevs", check_positive("k_stddevs", self.k_stddevs))
        if (isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real)
                or not 0.0 <= self.beta < 1.0):
            raise DPConfigError(f"beta must be in [0, 1), got beta={self.beta!r}")
        targeted = self.epsilon is not None or self.delta is not None
        if targeted == (self.noise_multiplier is not None):
            raise DPConfigError(
                "give either epsilon and delta, or noise_multiplier; got "
                f"epsilon={self.epsilon!r}, delta={self.delta!r}, "
                f"noise_multiplier={self.noise_multiplier!r}")
        if targeted:
            if self.epsilon is None or self.delta is None:
                raise DPConfigError(f"a target needs both epsilon and delta, got "
                                    f"epsilon={self.epsilon!r}, delta={self.delta!r}")
            set_(self, "epsilon", check_positive("epsilon", self.epsilon))
            set_(self, "delta", check_delta(self.delta))
        else:
            z = check_positive("noise_multiplier", self.noise_multiplier)
            set_(self, "noise_multiplier", z)
        # The paper's range rule can hold n clients at all: checked here, before any planning.
        choose_gamma(l2_clip=self.l2_clip, bits=self.bits, padded_dim=padded_dim(self.dim),
                     num_clients=self.num_clients, client_sigma=0.0, k_stddevs=self.k_stddevs)

    @property
    def honest_survivors(self) -> int:
        """The fewest noise shares the server (with its colluders) cannot subtract."""
        return self.min_survivors - self.colluders

    def plan(self) -> DDGPlan:
        """Choose gamma and the per-client noise; DPConfigError if the bit width cannot work."""
        size = padded_dim(self.dim)

        def gamma_for(client_std: float) -> float:  # client_std in real units
            return choose_gamma(l2_clip=self.l2_clip, bits=self.bits, padded_dim=size,
                                num_clients=self.num_clients, client_sigma=client_std,
                                k_stddevs=self.k_stddevs)

        if self.noise_multiplier is not None:
            # replace-one moves the sum by up to 2 * l2_clip: twice the noise for the same z
            scale = 2.0 if self.adjacency is Adjacency.REPLACE_ONE else 1.0
            client_std = (scale * self.noise_multiplier * self.l2_clip
                          / math.sqrt(self.honest_survivors))
            gamma = gamma_for(client_std)
            return self._finish(gamma, client_std / gamma, size)

        def sigma_for(gamma: float) -> float:  # per-client parameter in integer units
            return calibrate_ddg(
                target_epsilon=self.epsilon, delta=self.delta, l2_clip=self.l2_clip,
                scale=1.0 / gamma, dim=size, num_clients=self.honest_survivors, beta=self.beta,
                sampling_rate=self.sampling_rate, steps=self.rounds, rtol=_CALIBRATION_RTOL,
                adjacency=self.adjacency)

        # Both maps are non-decreasing, so iterating from the signal-only gamma climbs to the
        # least fixed point when one exists, in ever smaller steps; with too few bits the
        # rounding inflation feeds back into gamma faster than it settles and the steps grow.
        gamma = gamma_for(0.0)
        last_step = math.inf
        for _ in range(_MAX_PLAN_ITERATIONS):
            sigma = sigma_for(gamma)
            new_gamma = gamma_for(sigma * gamma)
            step = new_gamma - gamma
            if step <= _PLAN_RTOL * new_gamma:
                return self._finish(gamma, sigma, size)  # sigma was calibrated for gamma
            if step >= last_step and step > 1e-4 * new_gamma:  # growing, not jitter
                break
            gamma, last_step = new_gamma, step
        raise DPConfigError(
            f"bits={self.bits} is too small for n={self.num_clients} clients at "
            f"epsilon={self.epsilon!r}, delta={self.delta!r}: the rounding noise of a granularity "
            f"that fits the modulus needs more DP noise, which needs a coarser granularity, "
            f"without end (k_stddevs={self.k_stddevs:g}, dim={self.dim}); use more bits")

    def _finish(self, gamma: float, client_sigma: float, size: int) -> DDGPlan:
        event = make_ddg_event(l2_clip=self.l2_clip, scale=1.0 / gamma, dim=size,
                               num_clients=self.honest_survivors, client_sigma=client_sigma,
                               beta=self.beta)
        return DDGPlan(config=self, gamma=gamma, padded_dim=size, client_sigma=client_sigma,
                       event=event)


@dataclass(frozen=True)
class DDGPlan:
    """A planned DDG round: granularity, per-client noise (integer units) and the DP event.

    ``event`` describes one release (one round); compose it over rounds, Poisson-sampled at the
    clients' sampling rate when they are sampled, with an accountant whose unit is the client.
    """

    config: DDGConfig
    gamma: float
    padded_dim: int
    client_sigma: float
    event: DistributedDiscreteGaussianEvent

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def modulus(self) -> int:
        return 1 << self.config.bits

    @property
    def word_dtype(self) -> np.dtype:
        return word_dtype(self.config.bits)

    @property
    def l2_sensitivity(self) -> float:
        """The hard bound on one client's rounded integer vector (the event's Delta_2)."""
        return self.event.l2_sensitivity

    @property
    def central_sigma(self) -> float:
        """Noise std per coordinate, real units, of the honest survivors' sum (the target)."""
        return self.noise_std(self.config.honest_survivors)

    def wrap_probability(self, clients: int | None = None) -> tuple[float, float]:
        """(per coordinate, per round) probability that the sum wraps the modulus.

        The plan's own worst-case model (Sec. 4.4 of KLS 2021, the one gamma was chosen by):
        each coordinate of the sum over ``clients`` (default num_clients) is Gaussian with
        variance (c^2 n^2/D + n (gamma^2/4 + s^2 gamma^2)) / gamma^2 in integer units; it wraps
        when it leaves [-2^(bits-1), 2^(bits-1)). Per round: 1 - (1 - p)^D over the D words.
        Utility only: a wrapped sum is a wrong model update, never a privacy loss.
        """
        cfg = self.config
        n = cfg.num_clients if clients is None else check_count(clients, "clients")
        g, c, d = self.gamma, cfg.l2_clip, self.padded_dim
        var = (c * c * n * n / d + n * (g * g / 4 + (self.client_sigma * g) ** 2)) / (g * g)
        k = 2.0 ** (cfg.bits - 1) / math.sqrt(var)
        per_coordinate = math.erfc(k / math.sqrt(2.0))  # 2 * Phi(-k), without importing scipy
        return per_coordinate, float(-np.expm1(d * np.log1p(-per_coordinate)))

    def noise_std(self, survivors: int) -> float:
        """Nominal noise std per coordinate, real units, of the decoded sum over ``survivors``."""
        return self.gamma * self.client_sigma * math.sqrt(check_count(survivors, "survivors"))


def _sum_squares(v: np.ndarray) -> float:
    # einsum, not a BLAS dot: multithreaded BLAS on a busy machine costs 100x more here.
    flat = v.ravel()
    return float(np.einsum("i,i->", flat, flat))


def clip_l2(x: np.ndarray, l2_clip: float) -> np.ndarray:
    """A float64 copy of ``x`` scaled by min(1, l2_clip / ||x||_2); DPConfigError if not finite.

    Float rounding may leave the norm a few ulps above ``l2_clip``; privacy does not rely on
    it, since conditional rounding enforces the integer-domain bound exactly.
    """
    out = np.array(x, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise DPConfigError(f"x has {int(np.count_nonzero(~np.isfinite(out)))} NaN or inf "
                            "entries; updates must be finite")
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.0:
        norm = peak * math.sqrt(_sum_squares(out / peak))  # no overflow for huge entries
        if norm > l2_clip:
            out *= l2_clip / norm
    return out


def conditional_round(x: np.ndarray, *, bound: float, gen: NoiseGenerator) -> np.ndarray:
    """Unbiased randomized rounding of each coordinate, redrawn until ||result||_2 <= bound.

    KLS 2021 Alg. 1 step 3: each coordinate goes to floor(v) + 1 with probability v - floor(v).
    The float64 sum of squares has relative error below size * 2**-53, so we test against
    bound^2 shrunk by 4x that: the returned integer vector's true norm never exceeds ``bound``.
    """
    x = np.asarray(x, dtype=np.float64)
    base = np.floor(x)
    frac = x - base
    bound_sq = float(bound) ** 2 * (1.0 - 4.0 * max(x.size, 1) * 2.0**-53)
    for _ in range(_MAX_ROUNDING_TRIES):
        r = base + (gen.uniform(x.size).reshape(x.shape) < frac)
        if _sum_squares(r) <= bound_sq:
            return r.astype(np.int64)
    raise DPError(f"conditional rounding failed {_MAX_ROUNDING_TRIES} times against "
                  f"bound={bound!r} (input norm {np.linalg.norm(x):.6g}); the input was not "
                  "clipped and scaled for this bound")


def to_words(v: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers mod 2**bits as secagg words (two's complement wrap is exact)."""
    bits = _check_bits(bits)
    v = np.asarray(v)
    if v.dtype.kind not in "iu":
        raise DPConfigError(f"to_words needs an integer array, got dtype={v.dtype}")
    return (v.astype(np.int64) & ((1 << bits) - 1)).astype(word_dtype(bits))


def from_words(words: np.ndarray, bits: int) -> np.ndarray:
    """Words (reduced mod 2**bits here) as centered int64 in [-2**(bits-1), 2**(bits-1))."""
    bits = _check_bits(bits)
    w = np.asarray(words)
    if w.dtype.kind != "u":
        raise DPConfigError(f"words must be an unsigned integer array, got dtype={w.dtype}")
    v = w.astype(np.uint64) & np.uint64((1 << bits) - 1)
    half = 1 << (bits - 1)
    out = v.astype(np.int64)
    out[out >= half] -= 1 << bits
    return out


def modular_sum(words: Sequence[np.ndarray], *, bits: int) -> np.ndarray:
    """The sum mod 2**bits of clients' words: what secure aggregation hands the server."""
    bits = _check_bits(bits)
    if len(words) == 0:
        raise DPConfigError("modular_sum needs at least one word vector, got none")
    acc = np.zeros(np.shape(words[0]), dtype=np.uint64)
    for w in words:
        acc += np.asarray(w, dtype=np.uint64)  # wraps mod 2**64, and 2**bits divides 2**64
    return (acc & np.uint64((1 << bits) - 1)).astype(word_dtype(bits))


def encode_client(x: np.ndarray, *, plan: DDGPlan, rotation_seed: bytes,
                  gen: NoiseGenerator | None = None) -> np.ndarray:
    """One client's share: clip, rotate, scale, round, add its noise, wrap into Z_{2^bits}.

    ``rotation_seed`` is the round's public seed (the same for every client and the server);
    ``gen`` is the client's secret randomness (fresh from ``os.urandom`` when omitted).
    Returns ``plan.padded_dim`` words of ``plan.word_dtype``.
    """
    cfg = plan.config
    x = np.asarray(x)
    if x.shape != (cfg.dim,):
        raise DPConfigError(f"x must have shape ({cfg.dim},), got {x.shape}")
    gen = NoiseGenerator() if gen is None else gen
    clipped = clip_l2(x, cfg.l2_clip)
    scaled = rotate(clipped, seed=rotation_seed)
    scaled *= 1.0 / plan.gamma
    rounded = conditional_round(scaled, bound=plan.l2_sensitivity, gen=gen)
    rounded += discrete_gaussian(rounded.shape, plan.client_sigma, gen=gen)
    return to_words(rounded, cfg.bits)


def decode_sum(words: np.ndarray, *, plan: DDGPlan, rotation_seed: bytes) -> np.ndarray:
    """The server's estimate of the sum of the survivors' clipped updates (float64, ``dim``).

    ``words`` is the aggregate mod 2**bits; it is read as centered integers, so a sum whose
    coordinates leave [-2**(bits-1), 2**(bits-1)) wraps (the plan keeps that k_stddevs away).
    """
    w = np.asarray(words)
    if w.shape != (plan.padded_dim,):
        raise DPConfigError(f"words must have shape ({plan.padded_dim},), got {w.shape}")
    centered = from_words(w, plan.bits).astype(np.float64)
    centered *= plan.gamma
    return unrotate(centered, seed=rotation_seed, dim=plan.config.dim)
