"""The public configuration of one aggregation round; every party holds the same one."""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from .errors import ConfigError
from .graph import NeighbourGraph, complete_graph, harary_graph

SESSION_ID_BYTES = 32
MAX_CLIENT_ID = 2**32 - 2  # Shamir x-coordinate is id + 1, a nonzero uint32
#: The protocol version bound into the round digest (and the wire header).
PROTOCOL_VERSION = 2
ROUND_DIGEST_LABEL = b"secagg/v2/round"
VERIFY_KEYS_LABEL = b"secagg/v2/verify-keys"


class GraphKind(enum.Enum):
    COMPLETE = "complete"  # classic SecAgg (Bonawitz et al. 2017)
    SPARSE = "sparse"      # SecAgg+ Harary graph of degree k (Bell et al. 2020)


class Mode(enum.Enum):
    SEMI_HONEST = "semi-honest"   # server follows the protocol; no stage 3
    ACTIVE = "active"             # server may lie about survivors; stage 3 signatures required


@dataclass(frozen=True)
class RoundConfig:
    """Public per-round parameters.

    ``threshold`` is the Shamir threshold t per neighbourhood: a client that dropped after sharing
    needs t live neighbours holding its shares. ``min_survivors`` is the round-level floor: with
    fewer live clients the server aborts, so a decoded sum always covers at least that many.
    ``verify_keys`` (client id -> Ed25519 public key) turns on the active-server mode: stage-0 keys
    and masked inputs are signed and stage 3 (signed survivor lists) runs. Active mode needs
    2t > k + c, c = ``max_corrupt_neighbours`` (the corrupt clients one neighbourhood may hold; 0:
    the server colludes with no client; ``choose_k_t(..., active=True).corrupt_neighbours``).
    ``graph_seed``: the Harary permutation's seed when the deployment supplies it from a source the
    server does not control (``graph.beacon_seed``, ``graph.chain_seed``); None: the session id.
    ``insecure_weak_threshold`` allows t = 1 and active mode without 2t > k + c: tests only.
    Every field goes into ``round_digest``, which each client computes from its own copy.
    ``excess_noise`` makes every client
    secret-share a noise seed beside b_u; the survivors ``secagg.excess.excess_owners`` names get
    those seeds revealed in stage 4 (``RoundResult.noise_seeds``), so a DP layer can subtract the
    excess noise (Dordis, EuroSys 2024).
    """

    session_id: bytes
    client_ids: tuple[int, ...]
    dim: int
    bits: int
    threshold: int
    min_survivors: int
    graph: GraphKind = GraphKind.COMPLETE
    k: int | None = None
    verify_keys: Mapping[int, bytes] | None = field(default=None, compare=False)
    max_corrupt_neighbours: int = 0
    graph_seed: bytes | None = None
    insecure_weak_threshold: bool = False
    excess_noise: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.session_id, (bytes, bytearray)) or len(self.session_id) != SESSION_ID_BYTES:
            problems.append(f"session_id must be {SESSION_ID_BYTES} bytes, got {self.session_id!r:.80}")
        ids = tuple(self.client_ids)
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            problems.append(f"client_ids has duplicates: {dup[:10]}")
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_CLIENT_ID]
        if bad:
            problems.append(f"client_ids must be ints in [0, {MAX_CLIENT_ID}], bad: {bad[:10]}")
        n = len(ids)
        if n < 2:
            problems.append(f"need at least 2 clients, got n={n}")
        if not isinstance(self.dim, int) or self.dim < 1:
            problems.append(f"dim must be a positive int, got {self.dim!r}")
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 62:
            problems.append(f"bits must be an int in [1, 62], got {self.bits!r}")
        if not isinstance(self.excess_noise, bool):
            problems.append(f"excess_noise must be a bool, got {self.excess_noise!r}")
        if not isinstance(self.graph, GraphKind):
            problems.append(f"graph must be a GraphKind, got {self.graph!r}")
        if self.graph_seed is not None and (not isinstance(self.graph_seed, (bytes, bytearray))
                                            or len(self.graph_seed) != SESSION_ID_BYTES):
            problems.append(f"graph_seed must be None or {SESSION_ID_BYTES} bytes, got {self.graph_seed!r:.80}")
        if not isinstance(self.insecure_weak_threshold, bool):
            problems.append(f"insecure_weak_threshold must be a bool, got {self.insecure_weak_threshold!r}")
        if problems:
            raise ConfigError("invalid RoundConfig: " + "; ".join(problems))
        object.__setattr__(self, "session_id", bytes(self.session_id))
        if self.graph_seed is not None:
            object.__setattr__(self, "graph_seed", bytes(self.graph_seed))
        object.__setattr__(self, "client_ids", tuple(sorted(ids)))
        if self.graph is GraphKind.COMPLETE:
            k = n - 1
            if self.k not in (None, k):
                raise ConfigError(f"k={self.k} given with the complete graph, whose degree is n-1={k}")
        else:
            k = self.k
            if k is None:
                raise ConfigError("k (neighbour degree) is required with the sparse graph")
            if not isinstance(k, int) or k < 2 or (k % 2 and k < n - 1):
                raise ConfigError(f"k must be an even int >= 2 (or >= n-1), got k={k!r}")
            k = min(k, n - 1)
        object.__setattr__(self, "k", k)
        t = self.threshold
        weak = self.insecure_weak_threshold
        if not isinstance(t, int) or isinstance(t, bool) or not (1 if weak else 2) <= t <= k:
            raise ConfigError(f"threshold must be in [2, k={k}] (shares are held by the k neighbours; with t=1 each "
                              f"share is the secret), got t={t!r}")
        c = self.max_corrupt_neighbours
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < k:
            raise ConfigError(f"max_corrupt_neighbours must be an int in [0, k={k}), got {c!r}")
        m = self.min_survivors
        if not isinstance(m, int) or not 2 <= m <= n:
            raise ConfigError(f"min_survivors must be in [2, n={n}] (a sum of one input reveals it), got {m!r}")
        if self.verify_keys is not None:
            missing = [i for i in ids if i not in self.verify_keys]
            if missing:
                raise ConfigError(f"verify_keys lacks clients {missing[:10]}")
            if any(len(self.verify_keys[i]) != 32 for i in ids):
                raise ConfigError("verify_keys values must be 32-byte Ed25519 public keys")
            object.__setattr__(self, "verify_keys", MappingProxyType({i: bytes(self.verify_keys[i]) for i in ids}))
            if not weak and 2 * t <= k + c:
                what = ("Bonawitz et al.'s active bound, neighbourhood form (k = n-1)" if k == n - 1
                        else "the SecAgg+ active bound of docs/graph.md section 6")
                raise ConfigError(
                    f"active mode needs 2t > k + c ({what}): t={t}, k={k}, c=max_corrupt_neighbours={c} gives "
                    f"2t={2 * t} <= {k + c}; a server that withholds shares or splits survivor lists would "
                    f"unmask an input. Use t >= {(k + c) // 2 + 1} or choose_k_t(..., active=True)")

    @classmethod
    def new(cls, *, client_ids, dim: int, bits: int, threshold: int, min_survivors: int,
            graph: GraphKind = GraphKind.COMPLETE, k: int | None = None,
            verify_keys: Mapping[int, bytes] | None = None, session_id: bytes | None = None,
            max_corrupt_neighbours: int = 0, graph_seed: bytes | None = None,
            insecure_weak_threshold: bool = False, excess_noise: bool = False) -> "RoundConfig":
        """A configuration with a fresh random session id (or the one given)."""
        return cls(session_id=os.urandom(SESSION_ID_BYTES) if session_id is None else session_id,
                   client_ids=tuple(client_ids), dim=dim, bits=bits, threshold=threshold,
                   min_survivors=min_survivors, graph=graph, k=k, verify_keys=verify_keys,
                   max_corrupt_neighbours=max_corrupt_neighbours, graph_seed=graph_seed,
                   insecure_weak_threshold=insecure_weak_threshold, excess_noise=excess_noise)

    @property
    def n(self) -> int:
        return len(self.client_ids)

    @property
    def mode(self) -> Mode:
        return Mode.SEMI_HONEST if self.verify_keys is None else Mode.ACTIVE

    @property
    def effective_graph_seed(self) -> bytes:
        """The Harary permutation's seed: ``graph_seed`` if the deployment gave one, else the session id."""
        return self.session_id if self.graph_seed is None else self.graph_seed

    @cached_property
    def neighbour_graph(self) -> NeighbourGraph:
        if self.graph is GraphKind.COMPLETE or self.k >= self.n - 1:
            return complete_graph(self.client_ids)
        return harary_graph(self.client_ids, k=self.k, seed=self.effective_graph_seed)

    @cached_property
    def round_digest(self) -> bytes:
        """SHA-256 over the canonical encoding of every public round parameter (docs/protocol.md,
        "Round digest"). Each client computes it from its own configuration and binds it into its
        signed advertisement, every share ciphertext and every signature, so a server that gives
        one client other parameters (another t, client list, verify key, ...) is caught."""
        return hashlib.sha256(round_digest_encoding(self)).digest()

    def neighbours(self, u: int) -> tuple[int, ...]:
        return self.neighbour_graph.neighbours(u)


def verify_keys_digest(verify_keys: Mapping[int, bytes]) -> bytes:
    """SHA-256(label || count (4 B) || (id (4 B) || key (32 B)) for each id, increasing)."""
    ids = sorted(verify_keys)
    body = b"".join(struct.pack(">I", u) + verify_keys[u] for u in ids)
    return hashlib.sha256(VERIFY_KEYS_LABEL + struct.pack(">I", len(ids)) + body).digest()


_GRAPH_CODE = {GraphKind.COMPLETE: 1, GraphKind.SPARSE: 2}
_MODE_CODE = {Mode.SEMI_HONEST: 1, Mode.ACTIVE: 2}


def round_digest_encoding(cfg: RoundConfig) -> bytes:
    """The bytes the round digest hashes; big-endian integers, ids increasing (docs/protocol.md)."""
    ids = cfg.client_ids
    out = [ROUND_DIGEST_LABEL, bytes([PROTOCOL_VERSION]), cfg.session_id,
           struct.pack(f">I{len(ids)}I", len(ids), *ids),
           struct.pack(">IBII", cfg.dim, cfg.bits, cfg.threshold, cfg.k),
           bytes([_GRAPH_CODE[cfg.graph]]), cfg.effective_graph_seed,
           struct.pack(">I", cfg.min_survivors), bytes([_MODE_CODE[cfg.mode]]),
           struct.pack(">IBB", cfg.max_corrupt_neighbours, int(cfg.insecure_weak_threshold), int(cfg.excess_noise))]
    if cfg.mode is Mode.ACTIVE:
        out.append(verify_keys_digest(cfg.verify_keys))
    return b"".join(out)


@dataclass(frozen=True)
class ClientPolicy:
    """What a client holds itself and checks every round setup against (never taken from the
    server): the deployment's verify keys (its PKI, from node config or a trusted file) and floors.

    ``check`` refuses a setup whose verify key for some client differs from ours (naming the first
    such client), that names a client we have no key for, that is not in active mode while we hold
    keys, that is in active mode while we hold none, or that is weaker than a floor: t, k, min_survivors, bits, max_corrupt_neighbours. A
    server that could hand a client other keys or a lower threshold would otherwise defeat the
    active mode by itself (key swap, or a setup with t = 1)."""

    verify_keys: Mapping[int, bytes] | None = None
    min_threshold: int = 2
    min_k: int = 2
    min_survivors: int = 2
    min_bits: int = 1
    min_corrupt_neighbours: int = 0

    def __post_init__(self) -> None:
        for name in ("min_threshold", "min_k", "min_survivors", "min_bits", "min_corrupt_neighbours"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"ClientPolicy.{name} must be an int >= 0, got {v!r}")
        if self.verify_keys is not None:
            bad = [u for u, pk in self.verify_keys.items() if not isinstance(pk, (bytes, bytearray)) or len(pk) != 32]
            if bad:
                raise ConfigError(f"ClientPolicy.verify_keys: clients {sorted(bad)[:10]} have no 32-byte Ed25519 key")
            object.__setattr__(self, "verify_keys", MappingProxyType({int(u): bytes(pk) for u, pk in self.verify_keys.items()}))

    def check(self, cfg: RoundConfig) -> None:
        """Raise RefusedRequestError naming what is wrong with ``cfg``; return if it may be run."""
        from .errors import RefusedRequestError
        if self.verify_keys is None and cfg.mode is Mode.ACTIVE:
            raise RefusedRequestError("setup refused: it is in active mode but this client holds no verify keys "
                                      "of its own (node config, a trusted file); it never takes them from the setup")
        if self.verify_keys is not None:
            if cfg.mode is not Mode.ACTIVE:
                raise RefusedRequestError("setup refused: this client holds verify keys (active mode) but the "
                                          "setup is semi-honest")
            for u in cfg.client_ids:
                mine = self.verify_keys.get(u)
                if mine is None:
                    raise RefusedRequestError(f"setup refused: client {u} is not in this client's verify keys")
                if cfg.verify_keys[u] != mine:
                    raise RefusedRequestError(f"setup refused: the verify key of client {u} differs from this "
                                              f"client's ({cfg.verify_keys[u].hex()[:16]}… vs {mine.hex()[:16]}…)")
        if cfg.insecure_weak_threshold:
            raise RefusedRequestError("setup refused: it asks for the insecure weak-threshold test setting")
        for name, have, floor in (("threshold t", cfg.threshold, self.min_threshold), ("k", cfg.k, self.min_k),
                                  ("min_survivors", cfg.min_survivors, self.min_survivors),
                                  ("bits", cfg.bits, self.min_bits),
                                  ("max_corrupt_neighbours", cfg.max_corrupt_neighbours, self.min_corrupt_neighbours)):
            if have < floor:
                raise RefusedRequestError(f"setup refused: {name}={have} is below this client's floor {floor}")
