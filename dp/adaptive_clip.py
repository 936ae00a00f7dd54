"""Adaptive clipping under secure aggregation and the distributed discrete Gaussian.

Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping"
(NeurIPS 2021, arXiv:1905.03871v5), Alg. 1: each client sends, beside its clipped update, the bit
b_i = 1[||Delta_i|| <= C]; the server estimates the unclipped fraction b and moves the clip norm
geometrically toward the target quantile gamma: C <- C * exp(-eta (b - gamma)).

Under secure aggregation the bit must not travel in the clear, so it rides inside the secure sum as
one more coordinate: a client sends v_i = [clip(Delta_i, C) / C, beta (b_i - 1/2)], whose norm is at
most J = sqrt(1 + beta^2 / 4), and the DDG is planned for dim + 1 coordinates with l2_clip = J.
One DDG event then covers both the update and the bit (its cost is the sensitivity growing from 1
to J), and every coordinate carries the same noise std sigma (normalized units): the count
sum(b_i - 1/2) comes out with std sigma / beta. This is Andrew et al.'s Sec. 3.1 accounting in
another form: a Gaussian update of noise multiplier z_u and a bit sum of std sigma_b cost one
Gaussian mechanism with z = (z_u^-2 + (2 sigma_b)^-2)^(-1/2) (``joint_noise_multiplier``); with
z_u = sigma and sigma_b = sigma / beta that is sigma / J.

Normalizing by C keeps the DDG plan (granularity, noise) fixed while C moves; the server multiplies
the decoded update sum by C. Bits are centred (+-1/2) so a client's vector norm bound, and with it
the sensitivity, holds for add/remove and zero-out neighbours alike.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import numpy as np

from .distributed import DDGConfig, DDGPlan
from .errors import DPConfigError
from .events import check_count, check_positive

__all__ = [
    "AdaptiveClipConfig",
    "ClipTracker",
    "bit_weight",
    "joint_l2_clip",
    "joint_noise_multiplier",
    "client_vector",
    "split_sum",
    "AdaptiveDDGPlan",
    "plan_ddg",
]


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise DPConfigError(f"{name} must be in (0, 1), got {name}={value!r}")
    return float(value)


@dataclass(frozen=True)
class AdaptiveClipConfig:
    """Andrew et al.'s knobs: start, target quantile gamma, step eta, bit noise (clients).

    ``bit_noise`` is the std of the noise on the count of unclipped clients; the paper suggests
    the expected number of clients per round over 20.
    """

    initial_clip: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    bit_noise: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "initial_clip", check_positive("initial_clip", self.initial_clip))
        set_(self, "target_quantile", _check_fraction("target_quantile", self.target_quantile))
        set_(self, "learning_rate", check_positive("learning_rate", self.learning_rate))
        set_(self, "bit_noise", check_positive("bit_noise", self.bit_noise))


def bit_weight(*, unit_sigma: float, bit_noise: float) -> float:
    """beta such that the bit count gets std ``bit_noise`` when the vector norm bound is J(beta).

    ``unit_sigma`` is the noise std per coordinate of the sum planned for l2_clip = 1 (normalized
    units); the noise grows with the clip, so the count's std is J(beta) unit_sigma / beta. Solving
    that for beta needs bit_noise > unit_sigma / 2 (Andrew et al.'s condition 2 sigma_b > z).
    """
    z = check_positive("unit_sigma", unit_sigma)
    sb = check_positive("bit_noise", bit_noise)
    if 2.0 * sb <= z:
        raise DPConfigError(
            f"bit_noise={bit_noise!r} must exceed half the normalized update noise "
            f"unit_sigma/2={z / 2:.4g}: a noisier count costs less, a quieter one more than the "
            "whole privacy budget")
    return z / math.sqrt(sb * sb - z * z / 4.0)


def joint_l2_clip(beta: float) -> float:
    """Norm bound J = sqrt(1 + beta^2/4) of [update / C, beta (b - 1/2)]."""
    b = check_positive("beta", beta)
    return math.sqrt(1.0 + b * b / 4.0)


def joint_noise_multiplier(update_multiplier: float, bit_noise: float) -> float:
    """Andrew et al. Sec. 3.1: the Gaussian z that a (z_u, sigma_b) pair of releases costs."""
    zu = check_positive("update_multiplier", update_multiplier)
    sb = check_positive("bit_noise", bit_noise)
    return 1.0 / math.sqrt(zu ** -2 + (2.0 * sb) ** -2)


def client_vector(update: np.ndarray, *, clip: float, beta: float) -> np.ndarray:
    """[clip(update, C) / C, beta (b - 1/2)] with b = 1[||update|| <= C]; norm <= J(beta)."""
    c = check_positive("clip", clip)
    b = check_positive("beta", beta)
    u = np.asarray(update, dtype=np.float64).ravel()
    if not np.all(np.isfinite(u)):
        raise DPConfigError("update has NaN or inf entries; updates must be finite")
    norm = float(np.sqrt(np.einsum("i,i->", u, u)))
    out = np.empty(u.size + 1, dtype=np.float64)
    out[:-1] = u / max(c, norm)
    out[-1] = b * (0.5 if norm <= c else -0.5)
    return out


def split_sum(decoded: np.ndarray, *, clip: float, beta: float,
              survivors: int) -> tuple[np.ndarray, float]:
    """The update sum in model units and the noisy unclipped fraction, from a decoded sum.

    ``survivors`` is the number of inputs in the sum (public in secure aggregation).
    """
    c = check_positive("clip", clip)
    b = check_positive("beta", beta)
    s = check_count(survivors, "survivors")
    d = np.asarray(decoded, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise DPConfigError(f"decoded must be a vector of dim + 1 >= 2 entries, got {d.shape}")
    fraction = (float(d[-1]) / b + s / 2.0) / s
    return d[:-1] * c, fraction


class ClipTracker:
    """The server's clip norm: ``update(fraction)`` applies C <- C exp(-eta (b - gamma))."""

    def __init__(self, config: AdaptiveClipConfig, clip: float | None = None) -> None:
        self.config = config
        self.clip = config.initial_clip if clip is None else check_positive("clip", clip)

    def update(self, unclipped_fraction: float) -> float:
        f = float(unclipped_fraction)
        if not math.isfinite(f):
            raise DPConfigError(f"unclipped_fraction must be finite, got {unclipped_fraction!r}")
        cfg = self.config
        self.clip *= math.exp(-cfg.learning_rate * (f - cfg.target_quantile))
        return self.clip


@dataclass(frozen=True)
class AdaptiveDDGPlan:
    """A DDG plan for [update / C, bit] vectors: the plan, the bit weight and the bit's noise."""

    plan: DDGPlan
    beta: float
    bit_noise: float  # std of the noisy count, clients, as planned


def plan_ddg(base: DDGConfig, clip_config: AdaptiveClipConfig) -> AdaptiveDDGPlan:
    """Plan the DDG for ``base.dim`` update coordinates plus the bit, normalized by the clip.

    ``base.l2_clip`` is replaced: the vectors have norm <= J(beta). Planning first at l2_clip 1
    gives the noise beta is solved for; the final plan's count noise is reported as planned.
    """
    unit = replace(base, l2_clip=1.0, dim=base.dim + 1).plan()
    beta = bit_weight(unit_sigma=unit.central_sigma, bit_noise=clip_config.bit_noise)
    plan = replace(base, l2_clip=joint_l2_clip(beta), dim=base.dim + 1).plan()
    return AdaptiveDDGPlan(plan=plan, beta=beta, bit_noise=plan.central_sigma / beta)
