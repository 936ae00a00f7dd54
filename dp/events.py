"""Mechanisms as immutable descriptions, consumed by the accountants.

An event says *what* was released, never how to account for it (the idea of
``dp_accounting.dp_event``): a Gaussian sum with a noise multiplier, a Poisson-sampled event,
an event repeated ``count`` times, and the distributed discrete Gaussian (DDG) sum of Kairouz,
Liu and Steinke (ICML 2021, arXiv:2102.06387). Each event validates itself when built, so an
accountant never sees a bad one, and turns into a plain JSON-friendly dict and back, so that
checkpoints and audit logs can store it.

Units: ``GaussianEvent.noise_multiplier`` is the noise std divided by the L2 sensitivity (the
clip norm). The DDG event lives in the integer domain where the clients add their noise: its
sensitivities bound the norms of one client's scaled, rotated and rounded integer vector, and its
``sigma`` is the scale parameter of the noise in the *whole* sum over ``num_clients`` clients.
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass
from typing import Any

from dp.errors import DPConfigError

__all__ = [
    "UnitOfPrivacy",
    "Adjacency",
    "coerce_adjacency",
    "DPEvent",
    "GaussianEvent",
    "PoissonSampledEvent",
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "event_from_dict",
]


class UnitOfPrivacy(enum.Enum):
    """What a neighbouring dataset adds or removes: one training example, or one client."""

    EXAMPLE = "example"
    CLIENT = "client"


class Adjacency(enum.Enum):
    """The neighbouring relation an epsilon is proved for (what one neighbour differs by).

    - ``ZERO_OUT``: one record's contribution is replaced by zero; the record (a client) stays
      in the cohort and still adds its noise share.
    - ``REPLACE_ONE``: one record's data is replaced by arbitrary other data (sensitivity
      doubled: the sum moves by up to twice the clip norm).
    - ``ADD_REMOVE``: one record is added or removed (and, for a client, its noise share with it).
    """

    ZERO_OUT = "zero-out"
    REPLACE_ONE = "replace-one"
    ADD_REMOVE = "add-remove"

    @property
    def words(self) -> str:
        """What one neighbour differs by, in a sentence for reports."""
        return _ADJACENCY_WORDS[self]


_ADJACENCY_WORDS = {
    Adjacency.ZERO_OUT: "one neighbour has one record's contribution replaced by zero; that "
    "record (client) stays and still adds its noise share",
    Adjacency.REPLACE_ONE: "one neighbour has one record's data replaced by arbitrary other data",
    Adjacency.ADD_REMOVE: "one neighbour has one record more or one fewer",
}


def coerce_adjacency(value: Any) -> Adjacency:
    """An ``Adjacency`` from itself or its value ("zero-out", ...); DPConfigError otherwise."""
    if isinstance(value, Adjacency):
        return value
    try:
        return Adjacency(value)
    except ValueError:
        choices = [a.value for a in Adjacency]
        raise DPConfigError(f"adjacency must be one of {choices}, got {value!r}") from None


# --- validation helpers, shared by the other modules of the package ---------------------------


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DPConfigError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise DPConfigError(f"{name} must be finite, got {value!r}")
    return out


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float, or DPConfigError if it is not a finite number > 0."""
    out = _real(name, value)
    if out <= 0:
        raise DPConfigError(f"{name} must be > 0, got {value!r}")
    return out


def check_non_negative(name: str, value: Any) -> float:
    out = _real(name, value)
    if out < 0:
        raise DPConfigError(f"{name} must be >= 0, got {value!r}")
    return out


def check_delta(value: Any, name: str = "delta") -> float:
    """delta must lie in the open interval (0, 1)."""
    out = _real(name, value)
    if not 0.0 < out < 1.0:
        raise DPConfigError(f"{name} must be in (0, 1), got {value!r}")
    return out


def check_sampling_rate(value: Any, name: str = "sampling_rate") -> float:
    """A Poisson sampling rate q lies in (0, 1]; q = 1 means no sampling."""
    out = _real(name, value)
    if not 0.0 < out <= 1.0:
        raise DPConfigError(f"{name} must be in (0, 1], got {value!r}")
    return out


def check_count(value: Any, name: str = "count", *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DPConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DPConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


# --- events -----------------------------------------------------------------------------------


class DPEvent:
    """Base class of the immutable mechanism descriptions."""

    _TYPE = ""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Any) -> "DPEvent":
        """Rebuild (and re-validate) an event from ``to_dict()`` output; DPConfigError if bad."""
        event = event_from_dict(data)
        if cls is not DPEvent and not isinstance(event, cls):
            raise DPConfigError(f"expected a {cls._TYPE!r} event, got type {data.get('type')!r}")
        return event


@dataclass(frozen=True)
class GaussianEvent(DPEvent):
    """The Gaussian mechanism: noise std = ``noise_multiplier`` x L2 sensitivity."""

    noise_multiplier: float
    _TYPE = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", check_positive("noise_multiplier", self.noise_multiplier)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self._TYPE, "noise_multiplier": self.noise_multiplier}


@dataclass(frozen=True)
class DistributedDiscreteGaussianEvent(DPEvent):
    """A sum of ``num_clients`` integer vectors, each with N_Z(0, sigma^2 / num_clients)^dim noise.

    Kairouz, Liu, Steinke (ICML 2021), "The Distributed Discrete Gaussian Mechanism for Federated
    Learning with Secure Aggregation". All quantities are in the integer domain:

    - ``l2_sensitivity`` (Delta_2): bound on the L2 norm of one client's scaled, rotated and
      (conditionally) rounded integer vector; ``dp.calibration.ddg_l2_sensitivity`` computes it
      from the clip norm, the scale, the dimension and beta.
    - ``l1_sensitivity`` (Delta_1, optional): bound on its L1 norm. When omitted the accountant
      uses min(Delta_2^2, sqrt(dim) * Delta_2), valid for any integer vector.
    - ``sigma``: scale parameter of the noise in the whole sum, sqrt(num_clients) times the
      per-client discrete Gaussian parameter (per-client sigma^2 times ``num_clients``).
    - ``num_clients``: the smallest number of noisy shares the sum can contain (secagg's
      ``min_survivors``). More survivors add independent noise, which only helps.
    - ``dim``: the vector length after padding for the rotation.

    The paper's analysis needs a per-client parameter of at least 1/2.
    """

    l2_sensitivity: float
    sigma: float
    dim: int
    num_clients: int
    l1_sensitivity: float | None = None
    _TYPE = "distributed_discrete_gaussian"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "l2_sensitivity", check_positive("l2_sensitivity", self.l2_sensitivity))
        set_(self, "sigma", check_positive("sigma", self.sigma))
        set_(self, "dim", check_count(self.dim, "dim"))
        set_(self, "num_clients", check_count(self.num_clients, "num_clients"))
        if self.l1_sensitivity is not None:
            set_(self, "l1_sensitivity", check_positive("l1_sensitivity", self.l1_sensitivity))
        if self.client_sigma < 0.5:
            raise DPConfigError(
                "per-client discrete Gaussian parameter sigma / sqrt(num_clients) must be >= 0.5 "
                f"(Kairouz et al. 2021, Prop. 14), got sigma={self.sigma!r} with "
                f"num_clients={self.num_clients!r} (per client {self.client_sigma:.6g})"
            )

    @property
    def client_sigma(self) -> float:
        """The discrete Gaussian parameter each client uses."""
        return self.sigma / math.sqrt(self.num_clients)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self._TYPE,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "sigma": self.sigma,
            "dim": self.dim,
            "num_clients": self.num_clients,
        }


_SAMPLABLE = (GaussianEvent, DistributedDiscreteGaussianEvent)


@dataclass(frozen=True)
class PoissonSampledEvent(DPEvent):
    """``event`` run on a Poisson sample: each record (example or client) kept with prob q.

    Only a base mechanism can be sampled: sampling a composition is not composing samples.
    """

    sampling_rate: float
    event: DPEvent
    _TYPE = "poisson_sampled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampling_rate", check_sampling_rate(self.sampling_rate))
        if not isinstance(self.event, _SAMPLABLE):
            raise DPConfigError(
                "PoissonSampledEvent.event must be a GaussianEvent or a "
                f"DistributedDiscreteGaussianEvent, got {self.event!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self._TYPE,
            "sampling_rate": self.sampling_rate,
            "event": self.event.to_dict(),
        }


@dataclass(frozen=True)
class ComposedEvent(DPEvent):
    """``event`` run ``count`` times (adaptively), e.g. every step of DP-SGD."""

    event: DPEvent
    count: int
    _TYPE = "composed"

    def __post_init__(self) -> None:
        if not isinstance(self.event, DPEvent) or type(self.event) is DPEvent:
            raise DPConfigError(f"ComposedEvent.event must be a DPEvent, got {self.event!r}")
        object.__setattr__(self, "count", check_count(self.count))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self._TYPE, "count": self.count, "event": self.event.to_dict()}


_KEYS = {
    GaussianEvent._TYPE: {"noise_multiplier"},
    PoissonSampledEvent._TYPE: {"sampling_rate", "event"},
    ComposedEvent._TYPE: {"event", "count"},
    DistributedDiscreteGaussianEvent._TYPE: {
        "l2_sensitivity",
        "l1_sensitivity",
        "sigma",
        "dim",
        "num_clients",
    },
}


def event_from_dict(data: Any) -> DPEvent:
    """Inverse of ``to_dict()``; DPConfigError on an unknown type or missing/extra keys."""
    if not isinstance(data, dict):
        raise DPConfigError(f"an event must be a dict, got {data!r}")
    kind = data.get("type")
    if kind not in _KEYS:
        raise DPConfigError(f"unknown event type {kind!r}; expected one of {sorted(_KEYS)}")
    keys = set(data) - {"type"}
    required = _KEYS[kind] - {"l1_sensitivity"}
    if not required <= keys <= _KEYS[kind]:
        raise DPConfigError(
            f"event of type {kind!r} needs keys {sorted(required)} (optional: "
            f"{sorted(_KEYS[kind] - required)}), got {sorted(keys)}"
        )
    if kind == GaussianEvent._TYPE:
        return GaussianEvent(data["noise_multiplier"])
    if kind == PoissonSampledEvent._TYPE:
        return PoissonSampledEvent(data["sampling_rate"], event_from_dict(data["event"]))
    if kind == ComposedEvent._TYPE:
        return ComposedEvent(event_from_dict(data["event"]), data["count"])
    return DistributedDiscreteGaussianEvent(
        l2_sensitivity=data["l2_sensitivity"],
        sigma=data["sigma"],
        dim=data["dim"],
        num_clients=data["num_clients"],
        l1_sensitivity=data.get("l1_sensitivity"),
    )
