"""One secure, private aggregation of update vectors, for people with their own training loop.

``secure_aggregate(updates, plan=...)`` does what one round of ``fl_core.run`` does after local
training: clip and encode each client's vector (``fl_core.secure.inputs``, with the distributed
discrete Gaussian noise of a ``dp.DDGPlan``), run the SecAgg / SecAgg+ state machines with the
simulated dropouts you give, and decode the mean over the clients that survived. It returns that
mean, the survivors and the privacy event of the release; compose the events with a
``dp.Accountant(unit="client")`` (or a ``dp.BudgetTracker``) across your rounds.

No torch: numpy arrays in, numpy arrays out.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dp.distributed import DDGPlan
from dp.events import DistributedDiscreteGaussianEvent
from secagg.config import GraphKind
from secagg.simulate import ProtocolStage

from fl_core.errors import bad_field
from fl_core.secure.round import RoundAborted, RoundOutcome, SecureRoundSpec, secure_mean

__all__ = ["SecureAggregate", "secure_aggregate", "RoundAborted"]


@dataclass(frozen=True)
class SecureAggregate:
    """What one secure aggregation released.

    ``mean``: the mean update over ``survivors`` (float32; with a plan, noised); ``survivors``: the
    ids whose updates it covers; ``event``: the privacy event of this release (``plan.event``;
    None without a plan); ``outcome``: the round's details (k, threshold, message digests, bytes
    per client, seconds)."""

    mean: np.ndarray
    survivors: tuple[int, ...]
    event: DistributedDiscreteGaussianEvent | None
    outcome: RoundOutcome


def _as_updates(updates) -> dict[int, np.ndarray]:
    if isinstance(updates, Mapping):
        items = list(updates.items())
    elif isinstance(updates, Sequence) and not isinstance(updates, (str, bytes)) or isinstance(updates, np.ndarray):
        items = list(enumerate(updates))
    else:
        raise bad_field("updates", type(updates).__name__, "must map client ids to vectors, or be a list of vectors")
    if len(items) < 2:
        raise bad_field("updates", f"{len(items)} clients", "secure aggregation needs at least 2 clients")
    out = {}
    for u, v in items:
        if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or not 0 <= u < 2**32:
            raise bad_field("updates", u, "client ids must be ints in [0, 2^32)")
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1 or not a.size or not np.isfinite(a).all():
            raise bad_field(f"updates[{u}]", f"shape {a.shape}", "must be a non-empty 1-D vector of finite numbers")
        out[int(u)] = a
    dims = {len(a) for a in out.values()}
    if len(dims) != 1:
        raise bad_field("updates", sorted(dims), "all vectors must have the same length")
    return out


def _dropout(dropout) -> dict[ProtocolStage, float]:
    probs = dict(dropout) if isinstance(dropout, Mapping) else {ProtocolStage.MASKED_INPUT: dropout}
    out = {}
    for stage, p in probs.items():
        try:
            stage = ProtocolStage[stage.upper()] if isinstance(stage, str) else ProtocolStage(stage)
        except (KeyError, ValueError):
            raise bad_field("dropout", stage, f"stages are {[s.name.lower() for s in ProtocolStage]}") from None
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise bad_field(f"dropout[{stage.name.lower()}]", p, "must be a probability in [0, 1)")
        out[stage] = float(p)
    return out


def secure_aggregate(updates, *, plan: DDGPlan | None = None, clip: float = 10.0, dropout=0.0,
                     min_survivors: int | None = None, graph: str = "complete", bits: int = 32,
                     corrupt: float = 0.05, round_number: int = 0, seed: int | None = None) -> SecureAggregate:
    """Securely aggregate one round of client update vectors and return their (private) mean.

    ``updates``: ``{client_id: vector}`` or a list of vectors (ids 0, 1, ...), all of one length.
    ``plan``: the DP plan, ``dp.DDGConfig(l2_clip=..., epsilon=..., delta=..., dim=len(vector),
    num_clients=..., min_survivors=..., rounds=...).plan()``; each vector is clipped to its
    ``l2_clip`` and noised inside secure aggregation, and the mean is uniform over the survivors.
    Without a plan: no DP, vectors clipped to ``clip`` and fixed-point encoded.
    ``dropout``: the probability that a client drops (simulated) before sending its masked input,
    or ``{stage: probability}`` for the stages ``keys``, ``shares``, ``masked_input``,
    ``consistency``, ``unmask``. ``min_survivors``: abort below this many (default: the plan's, or
    half the clients); ``graph``: ``"complete"`` (SecAgg) or ``"sparse"`` (SecAgg+); ``bits``: the
    modulus 2^bits without a plan; ``corrupt``: the corrupt fraction the SecAgg+ (k, t) rule
    tolerates. ``seed``: None draws every secret and the noise from os.urandom; an int makes the
    round reproducible (tests only, never in production), with ``round_number`` telling rounds apart.

    Raises ``RoundAborted`` when too few clients survive: nothing is released, but with a plan the
    noise shares were committed, so charge ``plan.event`` for the round as ``fl_core.run`` does.
    """
    ups = _as_updates(updates)
    n, dim = len(ups), len(next(iter(ups.values())))
    if plan is not None and not isinstance(plan, DDGPlan):
        raise bad_field("plan", type(plan).__name__, "must be a dp.DDGPlan (dp.DDGConfig(...).plan()) or None")
    if plan is not None and plan.config.dim != dim:
        raise bad_field("plan", f"dim {plan.config.dim}", f"the updates have length {dim}")
    if plan is not None and n > plan.config.num_clients:
        raise bad_field("updates", f"{n} clients", f"the plan was made for at most {plan.config.num_clients}")
    floor = plan.config.min_survivors if plan is not None else max(2, math.ceil(n / 2))
    if min_survivors is None:
        min_survivors = min(floor, n)
    elif isinstance(min_survivors, bool) or not isinstance(min_survivors, int) or not 2 <= min_survivors <= n \
            or (plan is not None and min_survivors < plan.config.min_survivors):
        raise bad_field("min_survivors", min_survivors, f"must be an int in [{max(2, floor if plan else 2)}, {n}]"
                        + (" (the plan's noise is calibrated for its min_survivors)" if plan else ""))
    try:
        kind = GraphKind(graph)
    except ValueError:
        raise bad_field("graph", graph, f"must be one of {[g.value for g in GraphKind]}") from None
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_field("seed", seed, "must be an int or None")
    spec = SecureRoundSpec(enabled=True, graph=kind, bits=plan.bits if plan else bits, min_survivors=min_survivors,
                           corrupt=corrupt, dropout=_dropout(dropout), update_clip=clip, max_clients=n, example_cap=1)
    if seed is None:
        round_seed, rng = os.urandom(32), np.random.default_rng()
    else:
        round_seed = hashlib.sha256(b"fl_core/secure_aggregate|%d|%d" % (seed, round_number)).digest()
        rng = np.random.default_rng([seed, round_number])
    outcome = secure_mean(ups, {u: 1 for u in ups}, spec=spec, ddg=plan, round_seed=round_seed, rng=rng,
                          secure_randomness=seed is None)
    return SecureAggregate(mean=outcome.mean_update, survivors=outcome.survivors,
                           event=plan.event if plan is not None else None, outcome=outcome)
