"""One federated round's secure aggregation: encode the sampled clients' updates, run the secagg
state machines with simulated dropouts, and decode the mean update the server may apply.

The encoding is ``fl_core.secure.inputs.Encoder``, the same one every transport uses:
client-level DP with a ``DDGPlan`` (uniform mean over the survivors; with ``excess_noise`` each
client's noise share comes from a seed it secret-shares in the round, and the server subtracts the
excess survivors' shares, ``dp.xnoise``), else fixed point: with a uniform mean under any DP mode
(no example count leaves a client; ``weighted=False``, the default), weighted by example counts only
without DP (``weighted=True``).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dp.distributed import DDGPlan
from secagg.excess import excess_owners
from secagg import wire
from secagg.config import GraphKind, RoundConfig
from secagg.errors import ConfigError
from secagg.graph import choose_k_t
from secagg.simulate import DropoutSchedule, ProtocolStage, Transcript, simulate

from fl_core.errors import FLError
from fl_core.secure.inputs import Encoder, InputKind, InputSpec


class RoundAborted(FLError):
    """The secure round aborted (too few survivors); the global model is left unchanged."""


@dataclass(frozen=True)
class SecureRoundSpec:
    """Per-run secure-aggregation settings (public)."""

    enabled: bool
    graph: GraphKind
    bits: int
    min_survivors: int               # absolute: the sum always covers at least this many clients
    k: int | None = None
    threshold_fraction: float | None = None
    corrupt: float = 0.05
    dropout: Mapping[ProtocolStage, float] = field(default_factory=dict)
    update_clip: float = 10.0
    max_clients: int = 2             # most clients in one round (the overflow check's n)
    example_cap: int = 1             # public bound on one client's example count (weights)

    def input_spec(self, dim: int, *, weighted: bool) -> InputSpec:
        """The fixed-point encoding of a round without DDG, as a transport would send it: uniform
        mean under any DP mode, weighted by example counts (plus the count word) only without DP."""
        return InputSpec(InputKind.FIXED_POINT, dim=dim, bits=self.bits, l2_clip=self.update_clip,
                         num_clients=self.max_clients, example_cap=self.example_cap, weighted=weighted)


@dataclass
class RoundOutcome:
    mean_update: np.ndarray
    sampled: tuple[int, ...]
    survivors: tuple[int, ...]
    stage_survivors: dict[str, tuple[int, ...]]
    k: int
    threshold: int
    digests: list[tuple[int, int, str]]   # (stage, client, sha256 hex) of every message the server got
    seconds: float
    upload_bytes_per_client: int
    total_examples: int | None = None
    messages: list[tuple[int, int, bytes]] | None = None  # the bytes themselves, with Transcript.FULL
    aggregate: np.ndarray | None = None                   # the words the server unmasked (sum mod 2^bits)
    noise_removed: int = 0                                # excess noise shares subtracted (dp.xnoise)


def rule_dropout(n: int, spec: SecureRoundSpec) -> float:
    """The dropout fraction the SecAgg+ (k, t) rule is given for a round of n clients."""
    p = min(0.9, sum(spec.dropout.values()))
    return max(min(0.9, p + 3 * math.sqrt(p * (1 - p) / n) + (1 / n if p > 0 else 0)), 0.01)


def graph_parameters(n: int, spec: SecureRoundSpec, *, active: bool = False) -> tuple[GraphKind, int, int]:
    """(graph, k, t) for a round of n clients: explicit values, else the SecAgg+ rule.

    The rule counts at most ceil(dropout * n) dropouts; simulated dropouts are Bernoulli per
    client, so the rule is given the rate plus three binomial standard deviations. ``active``:
    the active-server rule (2t > k, secagg.graph.choose_k_t(active=True)); t >= 2 always, which
    secagg.RoundConfig enforces."""
    if spec.graph is GraphKind.COMPLETE or n <= 3:
        k = n - 1
        t = math.ceil(spec.threshold_fraction * k) if spec.threshold_fraction else k // 2 + 1
        return GraphKind.COMPLETE, k, max(2, min(t, k))
    try:
        k_auto, t_auto = choose_k_t(n, dropout=rule_dropout(n, spec), corrupt=spec.corrupt, active=active)
    except ConfigError:
        k_auto, t_auto = n - 1, (n - 1) // 2 + 1
    k = min(spec.k if spec.k is not None else k_auto, n - 1)
    if k < n - 1 and k % 2:
        k -= 1
    t = math.ceil(spec.threshold_fraction * k) if spec.threshold_fraction else min(t_auto, k)
    kind = GraphKind.COMPLETE if k >= n - 1 else GraphKind.SPARSE
    return kind, k, max(2, min(t, k))


def dropout_schedule(ids, probs: Mapping[ProtocolStage, float], rng: np.random.Generator) -> DropoutSchedule:
    """Each client still present drops before stage s with probability probs[s], independently."""
    alive = set(ids)
    before = {}
    for s in ProtocolStage:
        p = probs.get(s, 0.0)
        if p <= 0 or not alive:
            continue
        order = sorted(alive)
        gone = {u for u, r in zip(order, rng.random(len(order))) if r < p}
        if gone:
            before[s] = frozenset(gone)
            alive -= gone
    return DropoutSchedule(before)


def seeded_randbytes(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic byte stream (SHA-256 counter mode) for reproducible test runs only."""
    counter = [0]

    def randbytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + counter[0].to_bytes(8, "big")).digest()
            counter[0] += 1
        return out[:n]
    return randbytes


def secure_mean(updates: Mapping[int, np.ndarray], examples: Mapping[int, int], *, spec: SecureRoundSpec,
                ddg: DDGPlan | None, round_seed: bytes, rng: np.random.Generator,
                secure_randomness: bool, transcript: Transcript = Transcript.DIGEST,
                on_inputs: Callable[[Mapping[int, np.ndarray]], None] | None = None,
                excess_noise: bool = False, weighted: bool = False) -> RoundOutcome:
    """The mean update over the survivors of one secure round: uniform with DDG or without
    ``weighted``; weighted by example counts (sent as one more word) only with ``weighted``, which
    a DP run must never set. Raises RoundAborted when the protocol aborts.

    ``transcript=Transcript.FULL`` also returns the bytes of every message the server received
    (``messages``; the audit keeps them). ``on_inputs`` is called with each client's encoded,
    not yet masked words before the protocol runs (the audit's witness re-derivation)."""
    ids = tuple(sorted(updates))
    n = len(ids)
    t0 = time.perf_counter()
    dim = len(next(iter(updates.values())))
    if n < spec.min_survivors:
        raise RoundAborted(f"only {n} clients sampled, fewer than min_survivors={spec.min_survivors}")
    randbytes = os.urandom if secure_randomness else seeded_randbytes(b"secagg" + round_seed)

    excess_noise = excess_noise and ddg is not None
    noise_seeds = None
    if excess_noise:  # a stream of their own: the protocol's randomness stays as it was
        noise_seeds = {u: os.urandom(32) if secure_randomness else
                       hashlib.sha256(b"xnoise" + round_seed + u.to_bytes(8, "big")).digest() for u in ids}
    enc = Encoder.ddg(ddg) if ddg is not None else spec.input_spec(dim, weighted=weighted).encoder()
    words = {}
    for u in ids:
        rounding_seed = None if secure_randomness else hashlib.sha256(b"noise" + round_seed + u.to_bytes(8, "big")).digest()
        words[u] = enc.encode(updates[u], client_id=u, round_number=0, round_seed=round_seed,
                              num_examples=examples[u] if enc.weighted and ddg is None else None,
                              secret_seed=rounding_seed,
                              noise_seed=None if noise_seeds is None else noise_seeds[u],
                              rng=None if ddg is not None else rng)
    bits, vec_dim = enc.bits, enc.word_dim

    if not spec.enabled:  # plain sum, no protocol: for baselines only
        survivors = ids
        agg = np.zeros(vec_dim, dtype=wire.word_dtype(bits))
        for u in ids:
            agg += words[u]
        if bits not in (32, 64):
            agg &= agg.dtype.type((1 << bits) - 1)
        stage_survivors, digests, k, t, up = {}, [], 0, 0, 0
        messages = None
        revealed = ({u: noise_seeds[u] for u in excess_owners(ids, min_survivors=spec.min_survivors)}
                    if excess_noise else {})
    else:
        kind, k, t = graph_parameters(n, spec)
        session = randbytes(32)
        cfg = RoundConfig(session_id=session, client_ids=ids, dim=vec_dim, bits=bits, threshold=t,
                          min_survivors=spec.min_survivors, graph=kind, k=k if kind is GraphKind.SPARSE else None,
                          excess_noise=excess_noise)
        schedule = dropout_schedule(ids, spec.dropout, rng)
        if on_inputs is not None:
            on_inputs(words)
        res = simulate(cfg, words, dropouts=schedule, transcript=transcript, randbytes=randbytes,
                       noise_seeds=noise_seeds)
        if res.aborted is not None:
            raise RoundAborted(str(res.aborted))
        survivors, agg, stage_survivors = res.survivors, res.aggregate, res.stage_survivors
        messages = res.transcript if transcript is Transcript.FULL else None
        digests = ([(s, u, hashlib.sha256(b).hexdigest()) for s, u, b in messages] if messages is not None
                   else [(s, u, d.hex()) for s, u, d in res.transcript])
        up = max(res.masked_input_bytes.values())
        revealed = res.noise_seeds
    decoded = enc.decode(agg, survivors=len(survivors), round_seed=round_seed, revealed_noise=revealed)
    mean, total_examples = decoded.mean, decoded.total_examples
    return RoundOutcome(mean_update=mean.astype(np.float32), sampled=ids, survivors=tuple(survivors),
                        stage_survivors=stage_survivors, k=k, threshold=t, digests=digests,
                        seconds=time.perf_counter() - t0, upload_bytes_per_client=up,
                        total_examples=total_examples, messages=messages, aggregate=agg,
                        noise_removed=len(revealed))
