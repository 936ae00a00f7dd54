"""The server's side of the configuration: ``SecureSettings``, read from the Flower run config
(``RUN_CONFIG_KEYS``, the table of docs/flower.md)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from secagg.config import GraphKind
from secagg.errors import ConfigError

from fl_core.secure.inputs import InputKind, InputSpec


def _bad(name: str, value, why: str) -> ConfigError:
    return ConfigError(f"run config {name}={value!r}: {why}")


#: run config key -> (SecureSettings field, meaning); the table of docs/flower.md
RUN_CONFIG_KEYS = {
    "secagg-timeout": ("timeout", "seconds a protocol step waits for replies; a node that misses it is a dropout"),
    "secagg-bits": ("bits", "word width: arithmetic is mod 2^bits; a setup whose sum could wrap is refused"),
    "secagg-min-survivors": ("min_survivors", "fraction of a round's sampled nodes below which it aborts "
                                              "(revealing nothing); the DP noise is calibrated for this many"),
    "secagg-graph": ("graph", '"sparse" (SecAgg+) or "complete" (SecAgg)'),
    "secagg-k": ("k", "neighbours per node; 0: the SecAgg+ rule (secagg.graph.choose_k_t)"),
    "secagg-threshold": ("threshold", "Shamir threshold as a fraction of k; 0: the SecAgg+ rule"),
    "secagg-expected-dropout": ("expected_dropout", "the dropout rate the SecAgg+ rule plans for"),
    "secagg-l2-clip": ("l2_clip", "L2 bound on one node's update (both encodings)"),
    "secagg-example-cap": ("example_cap", "without DP: public bound on a node's example count (its weight)"),
    "secagg-verify-keys": ("verify_keys", '"id:hex,...": the nodes\' Ed25519 keys; turns on the active mode'),
    "secagg-poll-interval": ("poll_interval", "seconds between the server's pulls for replies within a step "
                                              "(Flower's own Grid.send_and_receive pulls every 3 s)"),
    "secagg-test-dim": ("test_dim", "test only: > 0 sends known words of this length instead of training"),
    "secagg-test-seed": ("test_seed", "test only: the seed of those words"),
    "dp-epsilon": ("epsilon", "client-level epsilon over dp-rounds rounds (distributed discrete Gaussian); "
                              "0: no DP (fixed point, example-weighted mean)"),
    "dp-delta": ("delta", "client-level delta"),
    "dp-rounds": ("dp_rounds", "rounds the budget covers; default: num-server-rounds"),
}


@dataclass(frozen=True)
class SecureSettings:
    """How ``SecureGrid`` runs each secure round. Run-config names in ``RUN_CONFIG_KEYS``.

    ``epsilon`` None means no DP (fixed-point encoding, example-weighted mean); else client-level
    distributed discrete Gaussian noise for (epsilon, delta) over ``dp_rounds`` rounds.
    ``threshold`` and ``k`` None: the SecAgg+ rule picks them for ``expected_dropout``.
    ``verify_keys`` (client id -> Ed25519 public key) turns on the active-server mode.
    ``test_dim`` > 0: test-only words."""

    timeout: float = 30.0
    bits: int = 32
    min_survivors: float = 0.6
    graph: GraphKind = GraphKind.SPARSE
    k: int | None = None
    threshold: float | None = None
    expected_dropout: float = 0.1
    l2_clip: float = 0.5
    example_cap: int = 10_000
    epsilon: float | None = None
    delta: float = 1e-5
    dp_rounds: int = 1
    verify_keys: Mapping[int, bytes] | None = None
    test_dim: int = 0
    test_seed: int = 0
    poll_interval: float = 0.1

    def __post_init__(self) -> None:
        for name in ("bits", "example_cap", "dp_rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(name, v, "must be a positive int")
        for name in ("timeout", "l2_clip", "delta", "poll_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise _bad(name, v, "must be a positive number")
        if not 0 < self.min_survivors <= 1:
            raise _bad("min_survivors", self.min_survivors, "is a fraction of the round's nodes in (0, 1]")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise _bad("threshold", self.threshold, "is a fraction of k in (0, 1]")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise _bad("k", self.k, "must be a positive int (or None for the SecAgg+ rule)")
        if not 0 <= self.expected_dropout < 1:
            raise _bad("expected_dropout", self.expected_dropout, "must be in [0, 1)")
        if self.epsilon is not None and not self.epsilon > 0:
            raise _bad("epsilon", self.epsilon, "must be positive (or None for no DP)")
        if not isinstance(self.graph, GraphKind):
            raise _bad("graph", self.graph, "must be a GraphKind")
        if isinstance(self.test_dim, bool) or not isinstance(self.test_dim, int) or self.test_dim < 0:
            raise _bad("test_dim", self.test_dim, "must be an int >= 0")

    @classmethod
    def from_run_config(cls, rc: Mapping) -> SecureSettings:
        """From a Flower run config: only the ``secagg-``/``dp-`` keys of ``RUN_CONFIG_KEYS`` (an
        unknown key with one of those prefixes is an error, so a typo is not silently ignored);
        ``dp-rounds`` defaults to ``num-server-rounds``. ``dp-epsilon = 0`` means no DP,
        ``secagg-k = 0`` / ``secagg-threshold = 0`` the SecAgg+ rule."""
        unknown = sorted(k for k in rc if k.startswith(("secagg-", "dp-")) and k not in RUN_CONFIG_KEYS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], RUN_CONFIG_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _bad(unknown[0], rc[unknown[0]], f"unknown key{hint}; known: {sorted(RUN_CONFIG_KEYS)}")
        kw = {}
        if "num-server-rounds" in rc:
            kw["dp_rounds"] = rc["num-server-rounds"]
        for key, (name, _) in RUN_CONFIG_KEYS.items():
            if key not in rc:
                continue
            v = rc[key]
            if name in ("k", "threshold", "epsilon") and not v:
                v = None
            elif name == "graph":
                try:
                    v = GraphKind(v)
                except ValueError:
                    raise _bad(key, v, f"must be one of {[g.value for g in GraphKind]}") from None
            elif name == "verify_keys":
                v = _parse_verify_keys(key, v) if v else None
            elif name in ("min_survivors", "threshold", "expected_dropout", "epsilon", "delta", "l2_clip",
                          "timeout", "poll_interval") and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            kw[name] = v
        return cls(**kw)

    def input_spec(self, *, dim: int, num_clients: int, min_survivors: int) -> InputSpec:
        if self.test_dim:
            return InputSpec(InputKind.WORDS, dim=self.test_dim, bits=self.bits, num_clients=num_clients,
                             min_survivors=min_survivors, test_seed=self.test_seed)
        if self.epsilon is None:
            return InputSpec(InputKind.FIXED_POINT, dim=dim, bits=self.bits, l2_clip=self.l2_clip,
                             num_clients=num_clients, min_survivors=min_survivors, example_cap=self.example_cap)
        return InputSpec(InputKind.DDG, dim=dim, bits=self.bits, l2_clip=self.l2_clip, num_clients=num_clients,
                         min_survivors=min_survivors, epsilon=self.epsilon, delta=self.delta, rounds=self.dp_rounds)


def _parse_verify_keys(key: str, text) -> dict[int, bytes]:
    out = {}
    try:
        for item in str(text).split(","):
            u, pk = item.split(":")
            out[int(u)] = bytes.fromhex(pk.strip())
    except ValueError:
        raise _bad(key, text, 'must read "id:hex,id:hex,..."') from None
    return out


