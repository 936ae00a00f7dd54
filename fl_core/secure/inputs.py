"""One encoding of a client's update into secagg words, and of the sum back into a mean update.

The simulator path (``round.py``) and every transport (``transport.py``, the ``flower`` package) go
through ``Encoder``, so a round means the same thing wherever it runs:

- ``DDG``: client-level distributed DP (``dp.distributed``, KLS 2021): clip, rotate, round, add
  this client's share of discrete Gaussian noise. The mean is uniform over the survivors.
- ``FIXED_POINT``: no noise (or sample-level DP already applied on the client): L2 clip to a
  public bound (``secagg.encoding.clip_l2``, whose result provably meets it) and fixed point with
  unbiased rounding. ``weighted`` (no DP only): weight by the client's example count over a public
  cap and append the raw count as one more word; the server learns only the sums, never a
  client's count. Unweighted (any DP mode): the mean is uniform over the survivors and no count
  leaves a client (their sum, released unnoised, would tell example-level neighbours apart).
- ``WORDS``: test only, words drawn from (seed, client, round); the aggregate is the result.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dp.distributed import DDGConfig, DDGPlan
from dp.distributed import decode_sum as ddg_decode_sum
from dp.distributed import encode_client as ddg_encode
from dp import xnoise
from dp.noise import NoiseGenerator
from dp.rotation import padded_dim
from secagg import wire
from secagg.encoding import FixedPointEncoding, clip_l2
from secagg.errors import ConfigError, InputError, OverflowRiskError

__all__ = ["InputKind", "InputSpec", "Encoder", "Decoded", "ddg_plan", "known_words", "encode_input",
           "decode_aggregate"]


class InputKind(enum.Enum):
    DDG = "ddg"                  # client-level distributed DP (dp.distributed, KLS 2021)
    FIXED_POINT = "fixed-point"  # no noise: L2 clip, weight by examples, fixed point, + count word
    WORDS = "words"              # test only: words drawn from (seed, client, round), no training


@dataclass(frozen=True)
class InputSpec:
    """How every client turns its update (``dim`` floats) into words of ``bits`` bits; public,
    sent in the round setup.

    DDG: the noise is calibrated for ``min_survivors`` shares and the range for ``num_clients``;
    give (``epsilon``, ``delta``) over ``rounds`` rounds or a ``noise_multiplier``. Each client
    computes its noise from these public numbers itself.
    FIXED_POINT: ``l2_clip`` bounds the update; ``weighted`` (no DP only): weight by the example
    count over ``example_cap`` and append the count word, else a uniform mean and no count.
    The simulator path (``round.secure_mean``) builds its encoder from an InputSpec too, so both
    paths encode with the same ``Encoder`` from the same public description.
    """

    kind: InputKind
    dim: int
    bits: int
    l2_clip: float = 1.0
    num_clients: int = 2
    min_survivors: int = 2
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    rounds: int = 1
    sampling_rate: float = 1.0
    example_cap: int = 1
    test_seed: int = 0
    weighted: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.kind, InputKind):
            raise ConfigError(f"kind must be an InputKind, got {self.kind!r}")
        if not isinstance(self.weighted, bool):
            raise ConfigError(f"weighted must be a bool, got weighted={self.weighted!r}")
        for name in ("dim", "bits", "num_clients", "min_survivors", "rounds", "example_cap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive int, got {name}={v!r}")
        if self.kind is InputKind.DDG:
            self.ddg_config()  # validates every DP field with dp's messages; calibrated on first use
        else:
            self.encoder()  # fixed point: the range check

    def ddg_config(self) -> DDGConfig:
        return DDGConfig(l2_clip=self.l2_clip, bits=self.bits, dim=self.dim, num_clients=self.num_clients,
                         min_survivors=self.min_survivors, epsilon=self.epsilon, delta=self.delta,
                         noise_multiplier=self.noise_multiplier, rounds=self.rounds,
                         sampling_rate=self.sampling_rate)

    def encoder(self) -> Encoder:
        return _encoder_of(self)

    @property
    def word_dim(self) -> int:
        """Words per client: the rotated length (DDG), dim + the count word (weighted fixed point), or dim."""
        if self.kind is InputKind.DDG:
            return padded_dim(self.dim)
        return self.dim + 1 if self.kind is InputKind.FIXED_POINT and self.weighted else self.dim

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> InputSpec:
        """Inverse of ``to_dict``; a setup written before ``weighted`` existed reads as weighted."""
        d = dict(d)
        d["kind"] = InputKind(d["kind"])
        return cls(**d)


@dataclass(frozen=True)
class Decoded:
    mean: np.ndarray | None       # float64 mean update; None for test words
    total_examples: int | None    # fixed point: the sum of the survivors' example counts


@dataclass(frozen=True)
class Encoder:
    """Update -> words and sum -> mean for one round; build with ``ddg``, ``fixed_point`` or
    ``InputSpec.encoder()``."""

    kind: InputKind
    bits: int
    dim: int
    plan: DDGPlan | None = None
    fixed: FixedPointEncoding | None = None
    l2_clip: float = 1.0
    example_cap: int = 1
    test_seed: int = 0
    weighted: bool = True  # fixed point: example-count weights and the count word (no DP only)

    @classmethod
    def ddg(cls, plan: DDGPlan) -> Encoder:
        return cls(InputKind.DDG, bits=plan.bits, dim=plan.config.dim, plan=plan)

    @classmethod
    def fixed_point(cls, *, dim: int, bits: int, l2_clip: float, max_clients: int, example_cap: int,
                    weighted: bool = True) -> Encoder:
        if weighted and example_cap * max_clients >= 1 << bits:
            raise OverflowRiskError(f"example counts of max_clients={max_clients} clients, each up to "
                              f"example_cap={example_cap}, could wrap 2^{bits}")
        enc = FixedPointEncoding.for_sum(bits=bits, clip=l2_clip, max_clients=max_clients)
        return cls(InputKind.FIXED_POINT, bits=bits, dim=dim, fixed=enc, l2_clip=l2_clip, example_cap=example_cap,
                   weighted=bool(weighted))

    @property
    def word_dim(self) -> int:
        if self.kind is InputKind.DDG:
            return self.plan.padded_dim
        return self.dim + 1 if self.kind is InputKind.FIXED_POINT and self.weighted else self.dim

    def encode(self, update: np.ndarray | None, *, client_id: int, round_number: int, round_seed: bytes,
               num_examples: int | None = None, secret_seed: bytes | None = None,
               noise_seed: bytes | None = None, rng: np.random.Generator | None = None,
               overwrite_update: bool = False) -> np.ndarray:
        """One client's words. Its noise (DDG) and rounding come from ``rng`` (fixed point) or
        ``secret_seed`` (32 bytes; reproducible runs and tests) or, by default, os.urandom. DDG
        with ``noise_seed``: the noise share is drawn from that seed, which the client
        secret-shares so the server can remove excess shares (``dp.xnoise``).
        ``overwrite_update``: fixed point may clip a float64 ``update`` in place (saves a copy)."""
        if self.kind is InputKind.WORDS:
            return known_words(self.test_seed, client_id, round_number, self.dim, self.bits)
        x = np.asarray(update, dtype=np.float64)
        if x.shape != (self.dim,):
            raise InputError(f"update has shape {x.shape}, the round expects ({self.dim},)")
        if self.kind is InputKind.DDG:
            if noise_seed is not None:
                return xnoise.encode_client(x, plan=self.plan, rotation_seed=round_seed, noise_seed=noise_seed,
                                            gen=NoiseGenerator(secret_seed))
            return ddg_encode(x, plan=self.plan, rotation_seed=round_seed, gen=NoiseGenerator(secret_seed))
        if not self.weighted:  # uniform weights: nothing but the clipped update leaves the client
            if rng is None:
                rng = np.random.default_rng(int.from_bytes(secret_seed or os.urandom(32), "big"))
            return self.fixed.encode(clip_l2(x, self.l2_clip, overwrite=overwrite_update), rng=rng)
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) \
                or not 0 < num_examples <= self.example_cap:
            raise InputError(f"client {client_id}: num_examples={num_examples!r} must be an int in "
                             f"(0, example_cap={self.example_cap}]")
        if rng is None:
            rng = np.random.default_rng(int.from_bytes(secret_seed or os.urandom(32), "big"))
        # clip, then weight by a factor <= 1: the weighted norm stays within l2_clip exactly
        weighted = clip_l2(x, self.l2_clip, overwrite=overwrite_update)  # ours: weighted in place
        weighted *= int(num_examples) / self.example_cap
        words = np.empty(self.dim + 1, dtype=wire.word_dtype(self.bits))  # the update's words, then the count
        self.fixed.encode(weighted, rng=rng, out=words[:-1])
        words[-1] = num_examples
        return words

    def decode(self, aggregate: np.ndarray, *, survivors: int, round_seed: bytes,
               revealed_noise: Mapping[int, bytes] | None = None) -> Decoded:
        """The mean over ``survivors`` clients: uniform (DDG) or example-weighted (fixed point).
        DDG with ``revealed_noise`` (owner -> noise seed): those noise shares are removed first."""
        if self.kind is InputKind.WORDS:
            return Decoded(None, None)
        if self.kind is InputKind.DDG:
            if revealed_noise:
                aggregate = xnoise.remove_excess(aggregate, plan=self.plan, seeds=revealed_noise)
            return Decoded(ddg_decode_sum(aggregate, plan=self.plan, rotation_seed=round_seed) / survivors, None)
        if not self.weighted:
            return Decoded(self.fixed.decode_sum(aggregate, count=survivors) / survivors, None)
        total = int(aggregate[-1])
        if total <= 0:
            raise InputError(f"the aggregate's example count is {total}: the sum is not a fixed-point sum")
        mean = self.fixed.decode_sum(aggregate[:-1], count=survivors) * (self.example_cap / total)
        return Decoded(mean, total)


@functools.lru_cache(maxsize=8)
def _encoder_of(spec: InputSpec) -> Encoder:
    if spec.kind is InputKind.DDG:
        return Encoder.ddg(spec.ddg_config().plan())
    if spec.kind is InputKind.FIXED_POINT:
        return Encoder.fixed_point(dim=spec.dim, bits=spec.bits, l2_clip=spec.l2_clip,
                                   max_clients=spec.num_clients, example_cap=spec.example_cap,
                                   weighted=spec.weighted)
    wire.word_dtype(spec.bits)  # a width secagg can carry
    return Encoder(InputKind.WORDS, bits=spec.bits, dim=spec.dim, test_seed=spec.test_seed)


def ddg_plan(spec: InputSpec) -> DDGPlan:
    return spec.encoder().plan


def known_words(seed: int, client_id: int, round_number: int, dim: int, bits: int) -> np.ndarray:
    """Test-only input: ``dim`` uniform words in [0, 2**bits) from numpy's PCG64 seeded with
    [seed, client_id, round]; a test recomputes them out of band to check the aggregate."""
    rng = np.random.default_rng([seed, client_id, round_number])
    return rng.integers(0, 1 << bits, size=dim, dtype=np.uint64).astype(wire.word_dtype(bits))


def encode_input(spec: InputSpec, *, client_id: int, round_number: int, round_seed: bytes,
                 update: np.ndarray | None = None, num_examples: int | None = None,
                 secret_seed: bytes | None = None) -> np.ndarray:
    """``spec.encoder().encode(...)``: one client's words for this round."""
    return spec.encoder().encode(update, client_id=client_id, round_number=round_number, round_seed=round_seed,
                                 num_examples=num_examples, secret_seed=secret_seed)


def decode_aggregate(spec: InputSpec, aggregate: np.ndarray, *, survivors: int,
                     round_seed: bytes) -> np.ndarray | None:
    """The mean update (None for test words): ``spec.encoder().decode(...).mean``."""
    return spec.encoder().decode(aggregate, survivors=survivors, round_seed=round_seed).mean
