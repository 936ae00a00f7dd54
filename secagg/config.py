"""The public configuration of one aggregation round; every party holds the same one."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from .errors import ConfigError
from .graph import NeighbourGraph, complete_graph, harary_graph

SESSION_ID_BYTES = 32
MAX_CLIENT_ID = 2**32 - 2  # Shamir x-coordinate is id + 1, a nonzero uint32


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
    are signed and stage 3 (signed survivor lists) runs. ``excess_noise`` makes every client
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
        if problems:
            raise ConfigError("invalid RoundConfig: " + "; ".join(problems))
        object.__setattr__(self, "session_id", bytes(self.session_id))
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
        if not isinstance(t, int) or not 1 <= t <= k:
            raise ConfigError(f"threshold must be in [1, k={k}] (shares are held by the k neighbours), got t={t!r}")
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

    @classmethod
    def new(cls, *, client_ids, dim: int, bits: int, threshold: int, min_survivors: int,
            graph: GraphKind = GraphKind.COMPLETE, k: int | None = None,
            verify_keys: Mapping[int, bytes] | None = None, session_id: bytes | None = None,
            excess_noise: bool = False) -> "RoundConfig":
        """A configuration with a fresh random session id (or the one given)."""
        return cls(session_id=os.urandom(SESSION_ID_BYTES) if session_id is None else session_id,
                   client_ids=tuple(client_ids), dim=dim, bits=bits, threshold=threshold,
                   min_survivors=min_survivors, graph=graph, k=k, verify_keys=verify_keys,
                   excess_noise=excess_noise)

    @property
    def n(self) -> int:
        return len(self.client_ids)

    @property
    def mode(self) -> Mode:
        return Mode.SEMI_HONEST if self.verify_keys is None else Mode.ACTIVE

    @cached_property
    def neighbour_graph(self) -> NeighbourGraph:
        if self.graph is GraphKind.COMPLETE or self.k >= self.n - 1:
            return complete_graph(self.client_ids)
        return harary_graph(self.client_ids, k=self.k, seed=self.session_id)

    def neighbours(self, u: int) -> tuple[int, ...]:
        return self.neighbour_graph.neighbours(u)
