"""Test helpers: round setup and an independent oracle of what a round must produce."""

from __future__ import annotations

import numpy as np

from secagg.config import GraphKind, Mode, RoundConfig
from secagg.hazmat.sign import SigningKey
from secagg.simulate import DropoutSchedule, ProtocolStage


def make_round(n, *, dim=16, bits=32, t=None, k=None, graph=GraphKind.COMPLETE, min_survivors=None,
               active=False, seed=0, ids=None, insecure=False, c=0):
    ids = list(range(n)) if ids is None else ids
    keys = {u: SigningKey.generate() for u in ids} if active else None
    if graph is GraphKind.COMPLETE:
        k_eff = n - 1
    else:
        k_eff = min(k, n - 1)
    t = t if t is not None else max(1, k_eff // 2 + 1)
    cfg = RoundConfig.new(client_ids=ids, dim=dim, bits=bits, threshold=t,
                          min_survivors=min_survivors if min_survivors is not None else 2,
                          graph=graph, k=k if graph is GraphKind.SPARSE else None,
                          verify_keys={u: keys[u].public for u in ids} if active else None,
                          session_id=bytes([seed % 256]) * 32, max_corrupt_neighbours=c,
                          insecure_weak_threshold=insecure)
    rng = np.random.default_rng(seed)
    dtype = np.uint32 if bits <= 32 else np.uint64
    inputs = {u: rng.integers(0, 2**bits, size=dim, dtype=np.uint64).astype(dtype) for u in ids}
    return cfg, inputs, keys


def _connected(members, N) -> bool:
    """Plain BFS over the induced subgraph (independent of graph.components)."""
    members = set(members)
    if not members:
        return True
    start = next(iter(members))
    seen, todo = {start}, [start]
    while todo:
        u = todo.pop()
        for v in N[u] & members:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == members


def expected_outcome(cfg: RoundConfig, schedule: DropoutSchedule):
    """Independent statement of the protocol's semantics: the survivor set whose sum the server
    must output, or None when the round must abort. Written from DESIGN.md, not from server.py."""
    t, m = cfg.threshold, cfg.min_survivors
    N = {u: set(cfg.neighbours(u)) for u in cfg.client_ids}
    alive = lambda s: set(cfg.client_ids) - schedule.gone_by(s)  # noqa: E731
    u1 = alive(ProtocolStage.KEYS)
    if len(u1) < m:
        return None
    # a client shares only if at least t neighbours advertised keys
    u2 = {u for u in alive(ProtocolStage.SHARES) & u1 if len(N[u] & u1) >= t}
    if len(u2) < m:
        return None
    # a client masks only if at least t neighbours sent it shares
    u3 = {u for u in alive(ProtocolStage.MASKED_INPUT) & u2 if len(N[u] & u2) >= t}
    if len(u3) < m:
        return None
    if any(len(N[u] & u3) < t for u in u2):
        return None  # some mask could never be removed: abort before any share is revealed
    if not _connected(u3, N):
        return None  # each component's sum would be revealed
    responders = u3
    if cfg.mode is Mode.ACTIVE:
        signers = alive(ProtocolStage.CONSISTENCY) & u3
        if len(signers) < m:
            return None
        # a client reveals only after t of its own neighbours signed the list
        responders = {u for u in signers if len(N[u] & signers) >= t}
        if any(len(N[u] & responders) < t for u in u2):
            return None
    responders = alive(ProtocolStage.UNMASK) & responders
    if any(len(N[u] & responders) < t for u in u2):
        return None
    return tuple(sorted(u3))
