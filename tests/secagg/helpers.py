"""Test helpers: round setup and an independent oracle of what a round must produce."""

from __future__ import annotations

import numpy as np

from secagg.config import GraphKind, Mode, RoundConfig
from secagg.hazmat.sign import SigningKey
from secagg.simulate import DropoutSchedule, ProtocolStage


def make_round(n, *, dim=16, bits=32, t=None, k=None, graph=GraphKind.COMPLETE, min_survivors=None,
               active=False, seed=0, ids=None):
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
                          session_id=bytes([seed % 256]) * 32)
    rng = np.random.default_rng(seed)
    dtype = np.uint32 if bits <= 32 else np.uint64
    inputs = {u: rng.integers(0, 2**bits, size=dim, dtype=np.uint64).astype(dtype) for u in ids}
    return cfg, inputs, keys


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
    responders = u3
    if cfg.mode is Mode.ACTIVE:
        responders = alive(ProtocolStage.CONSISTENCY) & u3
        if len(responders) < max(m, t):
            return None
    responders = alive(ProtocolStage.UNMASK) & responders
    if any(len(N[u] & responders) < t for u in u2):
        return None
    return tuple(sorted(u3))
