"""Server optimizers: turn the round's mean client update into the next global parameters.

All work on flat numpy vectors (``fl_core.learn.params`` layout). With the mean update
Delta_t = mean_i (x_i - x_t), the pseudo-gradient is -Delta_t, and (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021, Algorithm 2, the variant with tau):

    FedAvg      x_{t+1} = x_t + lr * Delta_t                     (McMahan et al. 2017; lr 1 = plain mean)
    FedAvgM     m_t = momentum * m_{t-1} + Delta_t;  x_{t+1} = x_t + lr * m_t   (Hsu et al. 2019)
    adaptive    m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
      FedAdagrad  v_t = v_{t-1} + Delta_t^2
      FedYogi     v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)
      FedAdam     v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2
                x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

with m_{-1} = 0 and v_{-1} = tau^2 (the paper asks for v_{-1} >= tau^2), and no bias correction,
as in the paper. State is kept in float64; the returned parameters are float32.
"""

from __future__ import annotations

import enum
import math
from typing import Any, ClassVar

import numpy as np

from fl_core.errors import CheckpointError, ConfigFieldError, ShapeMismatchError, bad_field

__all__ = [
    "ServerOptName",
    "ServerOptimizer",
    "FedAvg",
    "FedAvgM",
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
    "make_server_optimizer",
]


class ServerOptName(enum.Enum):
    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAGRAD = "fedadagrad"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


def _check_hp(name: str, value: Any, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"got {value!r}; must be a finite number"
    if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
        return f"got {value!r}; must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return None


class ServerOptimizer:
    """Base class: ``step(params, mean_update) -> new params``; state for checkpoints.

    Subclasses list their hyperparameters in ``HPARAMS`` as name -> (default, low, high,
    low open, high open); the constructor validates all of them and names every bad one.
    """

    NAME: ClassVar[ServerOptName]
    HPARAMS: ClassVar[dict[str, tuple[float, float, float, bool, bool]]]
    STATE: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **hp: float):
        unknown = sorted(set(hp) - set(self.HPARAMS))
        problems = [(k, f"got {hp[k]!r}; {self.NAME.value} takes only {sorted(self.HPARAMS)}") for k in unknown]
        self.hparams: dict[str, float] = {}
        for k, (default, lo, hi, lo_open, hi_open) in self.HPARAMS.items():
            v = hp.get(k, default)
            why = _check_hp(k, v, lo, hi, lo_open=lo_open, hi_open=hi_open)
            if why:
                problems.append((k, why))
            else:
                self.hparams[k] = float(v)
        if problems:
            raise ConfigFieldError(problems)
        self.rounds = 0
        self._state: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    def step(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """Return the new global parameters (float32) from the current ones and the mean update
        (mean of trained minus global over the clients). Inputs are not modified."""
        params = np.asarray(params)
        mean_update = np.asarray(mean_update)
        if params.ndim != 1 or mean_update.shape != params.shape:
            raise ShapeMismatchError(f"params shape {params.shape} and mean_update shape {mean_update.shape} "
                                     "must be the same 1-D shape")
        if self._state and next(iter(self._state.values())).shape != params.shape:
            raise ShapeMismatchError(f"this optimizer's state has length {next(iter(self._state.values())).size}, "
                                     f"params have length {params.size}")
        if not np.all(np.isfinite(mean_update)):
            bad = int(np.flatnonzero(~np.isfinite(mean_update))[0])
            raise bad_field("mean_update", f"value {mean_update[bad]} at index {bad}", "must be finite")
        if not self._state:
            self._state = self._init_state(params.size)
        x = params.astype(np.float64) + self._direction(mean_update.astype(np.float64))
        self.rounds += 1
        return x.astype(np.float32)

    def _init_state(self, d: int) -> dict[str, np.ndarray]:
        return {}

    def _direction(self, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-able metadata plus float64 arrays (copies); enough to resume bit-identically."""
        return {"name": self.NAME.value, "hparams": dict(self.hparams), "rounds": self.rounds,
                "state": {k: v.copy() for k, v in self._state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``. The optimizer and its hyperparameters must match this
        one's (a resumed run must continue the same run); else ``CheckpointError``."""
        try:
            name, hparams, rounds, arrays = state["name"], state["hparams"], state["rounds"], state["state"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"server optimizer state lacks {e}") from None
        if name != self.NAME.value:
            raise CheckpointError(f"checkpoint holds server optimizer {name!r}, this run uses {self.NAME.value!r}")
        if {k: float(v) for k, v in hparams.items()} != self.hparams:
            raise CheckpointError(f"checkpoint hyperparameters {hparams} differ from this run's {self.hparams}")
        arrays = {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}
        if arrays and set(arrays) != set(self.STATE):
            raise CheckpointError(f"server optimizer state has arrays {sorted(arrays)}, expected {list(self.STATE)}")
        if len({a.shape for a in arrays.values()}) > 1:
            raise CheckpointError("server optimizer state arrays differ in shape")
        self.rounds = int(rounds)
        self._state = arrays


class FedAvg(ServerOptimizer):
    """x += lr * Delta. With lr = 1 the new model is the clients' mean model."""

    NAME = ServerOptName.FEDAVG
    HPARAMS = {"lr": (1.0, 0.0, math.inf, True, False)}

    def _direction(self, delta: np.ndarray) -> np.ndarray:
        return self.hparams["lr"] * delta


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu, Qi, Brown 2019): m = momentum * m + Delta; x += lr * m."""

    NAME = ServerOptName.FEDAVGM
    HPARAMS = {"lr": (1.0, 0.0, math.inf, True, False), "momentum": (0.9, 0.0, 1.0, False, True)}
    STATE = ("m",)

    def _init_state(self, d: int) -> dict[str, np.ndarray]:
        return {"m": np.zeros(d)}

    def _direction(self, delta: np.ndarray) -> np.ndarray:
        m = self._state["m"]
        m *= self.hparams["momentum"]
        m += delta
        return self.hparams["lr"] * m


class _Adaptive(ServerOptimizer):
    HPARAMS = {"lr": (0.01, 0.0, math.inf, True, False), "beta1": (0.9, 0.0, 1.0, False, True),
               "beta2": (0.99, 0.0, 1.0, False, True), "tau": (1e-3, 0.0, math.inf, True, False)}
    STATE = ("m", "v")

    def _init_state(self, d: int) -> dict[str, np.ndarray]:
        return {"m": np.zeros(d), "v": np.full(d, self.hparams["tau"] ** 2)}

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _direction(self, delta: np.ndarray) -> np.ndarray:
        m, v = self._state["m"], self._state["v"]
        m *= self.hparams["beta1"]
        m += (1.0 - self.hparams["beta1"]) * delta
        self._state["v"] = v = self._second_moment(v, delta * delta)
        return self.hparams["lr"] * m / (np.sqrt(v) + self.hparams["tau"])


class FedAdagrad(_Adaptive):
    """Reddi et al. 2021, Alg. 2: v += Delta^2. beta2 does not apply."""

    NAME = ServerOptName.FEDADAGRAD
    HPARAMS = {k: v for k, v in _Adaptive.HPARAMS.items() if k != "beta2"}

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq


class FedAdam(_Adaptive):
    """Reddi et al. 2021, Alg. 2: v = beta2 v + (1 - beta2) Delta^2."""

    NAME = ServerOptName.FEDADAM

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.hparams["beta2"] * v + (1.0 - self.hparams["beta2"]) * delta_sq


class FedYogi(_Adaptive):
    """Reddi et al. 2021, Alg. 2 (after Zaheer et al. 2018): v -= (1 - beta2) Delta^2 sign(v - Delta^2)."""

    NAME = ServerOptName.FEDYOGI

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.hparams["beta2"]) * delta_sq * np.sign(v - delta_sq)


_CLASSES: dict[ServerOptName, type[ServerOptimizer]] = {
    c.NAME: c for c in (FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi)}


def make_server_optimizer(name: ServerOptName | str, **hp: float | None) -> ServerOptimizer:
    """Build a server optimizer by name. Hyperparameters given as None take the default; one the
    optimizer does not use (e.g. ``momentum`` for FedAdam) is an error, not silently ignored.

    Defaults: FedAvg lr=1; FedAvgM lr=1, momentum=0.9; adaptive lr=0.01, beta1=0.9, beta2=0.99,
    tau=1e-3 (Reddi et al. tune lr and tau per task; these are their usual starting points).
    """
    try:
        cls = _CLASSES[ServerOptName(name)]
    except ValueError:
        raise bad_field("server.optimizer", name, f"must be one of {[n.value for n in ServerOptName]}") from None
    return cls(**{k: v for k, v in hp.items() if v is not None})
