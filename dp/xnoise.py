"""Excess-noise removal for the distributed discrete Gaussian (DDG): dropouts cost no utility.

Jiang, Wang, Zhao, Chen, Chen, "Dordis: Efficient Federated Learning with Dropout-Resilient
Differential Privacy" (EuroSys 2024, arXiv:2209.12528), Sec. 3 ("XNoise"): each client adds more
noise than the target needs, from seeds it secret-shares; once the survivors are known the server
reconstructs the seeds of exactly the excess and subtracts it.

The layers here are whole noise shares. Each client draws its share N_Z(0, s^2)^D (s: the
per-client parameter ``DDGPlan.client_sigma``, calibrated so that the honest part of
``min_survivors`` shares meets the target, exactly as without removal) from a secret 32-byte seed,
and secret-shares that seed. With S survivors, ``secagg.excess.excess_owners`` names S - m of them
(m = min_survivors) and their seeds are revealed and subtracted, so every released sum carries
exactly m noise shares, whatever S >= m. Why whole shares and not Dordis' per-client layers of
decreasing variance: what is left is then a sum of m i.i.d. discrete Gaussians, the case
Kairouz-Liu-Steinke (ICML 2021) Prop. 14 proves, so the accountant charges the very event the
calibration planned; a sum of discrete Gaussians of unequal parameters is not covered by that
analysis. The cost is the same (one extra d-vector regenerated per removed share on the server).

Privacy argument (details and citations in docs/accounting.md): the kept shares' seeds are never
revealed (their owners reveal only shares of the excess owners' seeds), a removed share is known
to the server and counts for nothing, and the noise left is what ``noise_left`` returns: the
accountant charges that event, with the tolerated colluders' shares subtracted. A seed that
cannot be rebuilt (holders dropped during removal) leaves its share in the sum: more noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .distributed import DDGPlan, clip_l2, conditional_round, to_words
from .errors import DPConfigError, DPError
from .events import DistributedDiscreteGaussianEvent, check_count
from .noise import SEED_BYTES, NoiseGenerator, discrete_gaussian
from .rotation import rotate

__all__ = [
    "NOISE_SEED_BYTES",
    "NoiseLeft",
    "tolerated_corrupt",
    "noise_share",
    "encode_client",
    "remove_excess",
    "noise_left",
]

NOISE_SEED_BYTES = SEED_BYTES


def tolerated_corrupt(plan: DDGPlan) -> int:
    """Colluding survivors the plan tolerates: min_survivors minus the shares its event counts."""
    return plan.config.min_survivors - plan.event.num_clients


def noise_share(plan: DDGPlan, seed: bytes) -> np.ndarray:
    """The noise share of ``seed``: N_Z(0, client_sigma^2)^padded_dim as int64, reproducible.

    The seed keys its own AES-CTR stream (``NoiseGenerator``), separate from the client's rounding
    randomness, so revealing it reveals this vector and nothing else.
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != NOISE_SEED_BYTES:
        raise DPConfigError(f"a noise seed must be {NOISE_SEED_BYTES} bytes, got {seed!r:.60}")
    return discrete_gaussian(plan.padded_dim, plan.client_sigma, gen=NoiseGenerator(bytes(seed)))


def encode_client(x: np.ndarray, *, plan: DDGPlan, rotation_seed: bytes, noise_seed: bytes,
                  gen: NoiseGenerator | None = None) -> np.ndarray:
    """``dp.distributed.encode_client`` with the noise share drawn from ``noise_seed``.

    ``gen`` (the rounding randomness) stays secret; ``noise_seed`` is what the client secret-shares.
    """
    cfg = plan.config
    x = np.asarray(x)
    if x.shape != (cfg.dim,):
        raise DPConfigError(f"x must have shape ({cfg.dim},), got {x.shape}")
    gen = NoiseGenerator() if gen is None else gen
    scaled = rotate(clip_l2(x, cfg.l2_clip), seed=rotation_seed)
    scaled *= 1.0 / plan.gamma
    rounded = conditional_round(scaled, bound=plan.l2_sensitivity, gen=gen)
    rounded += noise_share(plan, noise_seed)
    return to_words(rounded, cfg.bits)


def remove_excess(words: np.ndarray, *, plan: DDGPlan, seeds: Mapping[int, bytes]) -> np.ndarray:
    """The aggregate minus the noise shares of ``seeds`` (owner -> revealed seed), mod 2**bits."""
    w = np.asarray(words)
    if w.shape != (plan.padded_dim,) or w.dtype != plan.word_dtype:
        raise DPConfigError(f"words must be ({plan.padded_dim},) {plan.word_dtype}, got "
                            f"{w.shape} {w.dtype}")
    acc = w.astype(np.int64)
    for owner in sorted(seeds):
        acc -= noise_share(plan, seeds[owner])
    return to_words(acc, plan.bits)


@dataclass(frozen=True)
class NoiseLeft:
    """The noise in one released sum after removal, and the DP event that charges it.

    ``kept`` shares are in the sum; ``honest`` of them are counted (the tolerated colluders know
    theirs); ``variance`` is the per-coordinate noise variance of the decoded sum, real units.
    """

    survivors: int
    removed: int
    kept: int
    honest: int
    variance: float
    event: DistributedDiscreteGaussianEvent


def noise_left(plan: DDGPlan, *, survivors: int, removed: int) -> NoiseLeft:
    """What is left when ``removed`` of ``survivors`` noise shares came off.

    DPError when fewer than ``min_survivors`` shares would be left: the removal rule never asks
    for that, so such a sum is not released under this plan.
    """
    s = check_count(survivors, "survivors")
    r = check_count(removed, "removed", minimum=0)
    m = plan.config.min_survivors
    if s < m:
        raise DPError(f"{s} survivors, fewer than min_survivors={m}: no sum is released")
    kept = s - r
    if kept < m:
        raise DPError(f"removing {r} of {s} noise shares leaves {kept}, fewer than "
                      f"min_survivors={m}: at most {s - m} are excess")
    honest = kept - tolerated_corrupt(plan)
    # the plan's event (same sensitivity, per-client noise), for the honest shares left
    event = dataclasses.replace(plan.event, sigma=plan.client_sigma * math.sqrt(honest),
                                num_clients=honest)
    variance = kept * (plan.gamma * plan.client_sigma) ** 2
    return NoiseLeft(survivors=s, removed=r, kept=kept, honest=honest, variance=variance,
                     event=event)

