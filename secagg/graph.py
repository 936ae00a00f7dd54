"""Neighbour graphs that every party derives identically, and the SecAgg+ (k, t) rule.

Classic SecAgg (Bonawitz et al., CCS 2017) uses the complete graph: every client masks with and
shares to all others. SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020, ePrint 2020/704) uses a k-regular graph
with k = O(log n): a Harary graph H(n, k) -- a ring where each client is joined to the k/2 nearest
on each side -- laid over a pseudorandom permutation of the clients derived from the session id.

The permutation is specified exactly (``harary_permutation``) so another implementation can
reproduce it bit for bit; ``choose_k_t`` implements the rule written out in docs/graph.md.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from .errors import ConfigError, LocalProtocolError

__all__ = [
    "MAX_CLIENT_ID",
    "SEED_BYTES",
    "PERMUTATION_DOMAIN",
    "NeighbourGraph",
    "complete_graph",
    "harary_permutation",
    "harary_graph",
    "FailureBounds",
    "KTChoice",
    "failure_bounds",
    "choose_k_t",
    "classic_threshold",
    "beacon_seed",
    "chain_seed",
]

#: Client ids are uint32 with 2**32 - 1 excluded, so the Shamir x-coordinate id + 1 is a nonzero uint32.
MAX_CLIENT_ID = 2**32 - 2
SEED_BYTES = 32
#: Domain-separation prefix hashed with the session id into the ChaCha20 key of the permutation.
PERMUTATION_DOMAIN = b"secagg/graph/harary-permutation/v1"
_LN2 = math.log(2.0)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sorted_ids(ids: Iterable[int]) -> tuple[int, ...]:
    ids = tuple(ids)
    bad = [i for i in ids if not _is_int(i) or not 0 <= i <= MAX_CLIENT_ID]
    if bad:
        raise ConfigError(f"client ids must be ints in [0, {MAX_CLIENT_ID}], bad: {bad[:10]}")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"client ids must be distinct, repeated: {dup[:10]}")
    if not ids:
        raise ConfigError("a neighbour graph needs at least one client id, got none")
    return tuple(sorted(ids))


@dataclass(frozen=True)
class NeighbourGraph:
    """A k-regular neighbour graph on sorted client ids.

    Stored compactly: the complete graph is just its ids (``degree == n - 1``, empty ``ring``);
    a Harary graph is the ids in ring order (``ring``) and the even ``degree`` k, the neighbours of
    ring[i] being ring[i +- 1 .. i +- k/2] (mod n). Build one with ``complete_graph`` or
    ``harary_graph``.
    """

    ids: tuple[int, ...]
    degree: int
    ring: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        ids = tuple(self.ids)
        if _sorted_ids(ids) != ids:
            raise ConfigError(f"ids must be sorted, got {ids[:10]}...")
        n, k, ring = len(ids), self.degree, tuple(self.ring)
        if not _is_int(k) or not 0 <= k <= n - 1:
            raise ConfigError(f"degree must be an int in [0, n-1={n - 1}], got degree={k!r}")
        if k == n - 1:
            if ring:
                raise ConfigError("the complete graph has no ring order; pass ring=()")
        elif k < 2 or k % 2:
            raise ConfigError(f"a Harary graph needs an even degree k >= 2 (or k = n-1), got k={k}")
        elif tuple(sorted(ring)) != ids:
            raise ConfigError("ring must be a permutation of ids")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "ring", ring)
        object.__setattr__(self, "_position", {u: i for i, u in enumerate(ring)})

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def is_complete(self) -> bool:
        return self.degree == self.n - 1

    def __contains__(self, u: object) -> bool:
        i = bisect.bisect_left(self.ids, u) if _is_int(u) else len(self.ids)
        return i < len(self.ids) and self.ids[i] == u

    def neighbours(self, u: int) -> tuple[int, ...]:
        """The sorted neighbours of client ``u`` (never u itself)."""
        if u not in self:
            raise LocalProtocolError(f"client {u!r} is not in this neighbour graph (n={self.n})")
        if self.is_complete:
            i = bisect.bisect_left(self.ids, u)
            return self.ids[:i] + self.ids[i + 1:]
        n, p, half = self.n, self._position[u], self.degree // 2
        return tuple(sorted(self.ring[(p + s) % n] for d in range(1, half + 1) for s in (d, -d)))


    def components(self, members: Iterable[int]) -> list[tuple[int, ...]]:
        """The connected components (sorted id tuples) of the graph induced on ``members``.

        The server learns the sum over each component of the survivors' graph, so it must be one
        component. On the Harary ring two members are joined iff their ring distance is at most
        k/2, so an edge never spans a gap of more than k/2 positions without a member: the members
        fall apart exactly at those gaps, and with fewer than two such gaps they form one path.
        O(m log m) for m members, no edge list.
        """
        members = sorted(set(members))
        bad = [u for u in members if u not in self]
        if bad:
            raise LocalProtocolError(f"clients {bad[:10]} are not in this neighbour graph (n={self.n})")
        if not members:
            return []
        if self.is_complete:
            return [tuple(members)]
        n, half = self.n, self.degree // 2
        pos = sorted(self._position[u] for u in members)
        cuts = [i for i in range(len(pos)) if (pos[(i + 1) % len(pos)] - pos[i]) % n > half]
        if len(cuts) < 2:
            return [tuple(members)]
        arcs = []
        for a, b in zip(cuts, cuts[1:] + [cuts[0] + len(pos)]):
            arcs.append(tuple(sorted(self.ring[pos[j % len(pos)]] for j in range(a + 1, b + 1))))
        return sorted(arcs)


def complete_graph(ids: Iterable[int]) -> NeighbourGraph:
    """Every client is a neighbour of every other (classic SecAgg)."""
    ids = _sorted_ids(ids)
    return NeighbourGraph(ids=ids, degree=len(ids) - 1)


def _check_seed(seed: object) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        length = len(seed) if isinstance(seed, (bytes, bytearray)) else "?"
        raise ConfigError(f"seed (the session id) must be {SEED_BYTES} bytes, got "
                          f"{type(seed).__name__} of length {length}")
    return bytes(seed)


def _keystream_words(seed: bytes) -> Iterator[int]:
    """Little-endian uint32 words of ChaCha20(key = SHA-256(domain || seed), counter 0, nonce 0)."""
    key = hashlib.sha256(PERMUTATION_DOMAIN + seed).digest()
    # cryptography's 16-byte ChaCha20 nonce is the RFC 8439 block counter (32-bit LE) || 96-bit nonce.
    enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    size = 64  # one ChaCha20 block first, then doubling chunks: cheap for small n, fast for large n
    while True:
        yield from np.frombuffer(enc.update(bytes(size)), dtype="<u4").tolist()
        size = min(2 * size, 1 << 16)


def harary_permutation(ids: Iterable[int], *, seed: bytes) -> tuple[int, ...]:
    """The ring order of the clients: a Fisher-Yates shuffle of the sorted ids driven by the seed.

    Spec: a = sorted ids; for i = n-1 down to 1, draw j uniform in [0, i] and swap a[i], a[j].
    j is drawn from the next keystream word w (uint32, little-endian) by rejection: with
    m = i + 1, words w >= 2**32 - (2**32 mod m) are skipped, then j = w mod m; so every j is
    equally likely and the shuffle is exactly uniform given a uniform keystream.
    """
    a = list(_sorted_ids(ids))
    words = _keystream_words(_check_seed(seed))
    for i in range(len(a) - 1, 0, -1):
        m = i + 1
        limit = 2**32 - (2**32 % m)
        w = next(words)
        while w >= limit:
            w = next(words)
        j = w % m
        a[i], a[j] = a[j], a[i]
    return tuple(a)


def harary_graph(ids: Iterable[int], *, k: int, seed: bytes) -> NeighbourGraph:
    """SecAgg+ graph: H(n, k) over ``harary_permutation(ids, seed=seed)``; k >= n-1 is complete."""
    ids = _sorted_ids(ids)
    n = len(ids)
    if not _is_int(k):
        raise ConfigError(f"k must be an int, got k={k!r}")
    seed = _check_seed(seed)
    if k >= n - 1 and k >= 1:
        return complete_graph(ids)
    if k < 2 or k % 2:
        raise ConfigError(f"k must be even and >= 2 (each client has k/2 neighbours on each side "
                          f"of the ring), got k={k}")
    return NeighbourGraph(ids=ids, degree=k, ring=harary_permutation(ids, seed=seed))


# ------------------------------------------------------------------------------- the (k, t) rule


def _fraction(value: object, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a fraction in [0, 1), got {name}={value!r}")
    if not 0 <= value < 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1), got {name}={value!r}")
    return Fraction(repr(float(value)))  # the decimal the caller wrote: 0.29 means 29/100


def _bad_count(fraction: Fraction, n: int) -> int:
    """At most ceil(fraction * n) clients: rounding up never assumes fewer bad clients."""
    return math.ceil(fraction * n)


def _log_hypergeom_tail(population: int, bad: int, draws: int) -> np.ndarray:
    """ln P[X >= t] for t = 0..draws+1, X ~ Hypergeometric(population, bad, draws), exact formula.

    The pmf is built from its closed form at the lowest support point and the term ratio
    P(j+1)/P(j) = (bad-j)(draws-j) / ((j+1)(population-bad-draws+j+1)), summed in log space.
    """
    good = population - bad
    lo, hi = max(0, draws - good), min(draws, bad)
    log_comb = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # noqa: E731
    base = log_comb(bad, lo) + log_comb(good, draws - lo) - log_comb(population, draws)
    j = np.arange(lo, hi, dtype=np.float64)
    steps = np.log(bad - j) + np.log(draws - j) - np.log(j + 1) - np.log(good - draws + j + 1)
    log_pmf = base + np.concatenate(([0.0], np.cumsum(steps)))
    tail = np.full(draws + 2, -np.inf)
    tail[lo:hi + 1] = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    tail[:lo] = tail[lo]
    return np.minimum(tail, 0.0)


@dataclass(frozen=True)
class FailureBounds:
    """log2 of the union bounds of docs/graph.md for one (n, k, t, dropout, corrupt).

    ``shamir_log2``: some client has >= t corrupt neighbours (S1). ``disconnect_log2``: the
    graph of honest survivors falls apart (S2; -inf for the complete graph). ``security_log2``:
    log2 of their sum. ``correctness_log2``: some client has more than k - t dropped neighbours (C).
    """

    shamir_log2: float
    disconnect_log2: float
    security_log2: float
    correctness_log2: float


def _counts(n: object, dropout: object, corrupt: object) -> tuple[int, int, int]:
    if not _is_int(n) or n < 2:
        raise ConfigError(f"n must be an int >= 2, got n={n!r}")
    d = _bad_count(_fraction(dropout, "dropout"), n)
    c = _bad_count(_fraction(corrupt, "corrupt"), n)
    return n, c, d


def _bounds_all_t(n: int, k: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S1, S2, C) log2 bounds for t = 0..k+1 (S2 does not depend on t)."""
    log2n = math.log2(n)
    s1 = log2n + _log_hypergeom_tail(n - 1, min(c, n - 1), k) / _LN2
    half, removed = k // 2, min(c + d, n)
    if k >= n - 1 or removed < 2 * half:
        s2 = -math.inf  # the complete graph minus any clients stays connected
    else:  # C(n, 2) pairs of disjoint windows of k/2 ring positions, all 2*(k/2) removed
        log_comb = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # noqa: E731
        s2 = (log_comb(n, 2) + log_comb(removed, 2 * half) - log_comb(n, 2 * half)) / _LN2
    dropped_tail = log2n + _log_hypergeom_tail(n - 1, min(d, n - 1), k) / _LN2  # index u: >= u dropped
    t = np.arange(k + 2)
    correctness = dropped_tail[np.clip(k - t + 1, 0, k + 1)]
    return s1, np.full(k + 2, s2), correctness


def _security_index(k: int, t: np.ndarray | int, active: bool):
    """Which S1 tail bounds security at threshold t: t corrupt neighbours (semi-honest), or
    2t - k (active: the server also withholds and splits lists, so 2t > k + c is needed and
    c = 2t - k - 1 corrupt neighbours are tolerated)."""
    return np.clip(2 * np.asarray(t) - k, 0, k + 1) if active else np.asarray(t)


def failure_bounds(n: int, *, k: int, t: int, dropout: float, corrupt: float,
                   active: bool = False) -> FailureBounds:
    """The failure bounds of docs/graph.md at (n, k, t); k = n-1 means the complete graph.
    With ``active`` the Shamir bound is that of the active-server rule (docs/graph.md section 6):
    some client has 2t - k or more corrupt neighbours."""
    n, c, d = _counts(n, dropout, corrupt)
    if not _is_int(k) or not (k == n - 1 or (2 <= k <= n - 2 and k % 2 == 0)):
        raise ConfigError(f"k must be even in [2, n-2] or n-1={n - 1}, got k={k!r}")
    if not _is_int(t) or not 1 <= t <= k:
        raise ConfigError(f"t must be an int in [1, k={k}], got t={t!r}")
    s1, s2, cor = _bounds_all_t(n, k, c, d)
    sh = float(s1[int(_security_index(k, t, active))])
    return FailureBounds(sh, float(s2[t]), float(np.logaddexp2(sh, s2[t])), float(cor[t]))


def _t_range(n: int, k: int, c: int, d: int, sigma: float, eta: float, active: bool) -> tuple[int, int]:
    """[lo, hi]: thresholds meeting security (t >= lo) and correctness (t <= hi); empty if lo > hi.
    t >= 2 always: with t = 1 every share is the secret."""
    s1, s2, cor = _bounds_all_t(n, k, c, d)
    t = np.arange(k + 2)
    secure = (np.logaddexp2(s1[_security_index(k, t, active)], s2) <= -sigma) & (t >= 2) & (t <= k)
    correct = (cor <= -eta) & (t >= 2) & (t <= k)
    lo = int(t[secure][0]) if secure.any() else k + 1
    hi = int(t[correct][-1]) if correct.any() else 0
    return lo, hi


class KTChoice(tuple):
    """``(k, t)`` as chosen by ``choose_k_t`` (it unpacks as a pair), with what the choice assumes:
    ``corrupt_neighbours`` is the c of the rule (pass it to ``RoundConfig(max_corrupt_neighbours=)``
    in active mode), ``bounds`` the failure bounds at (k, t)."""

    def __new__(cls, k: int, t: int, *, corrupt_neighbours: int, bounds: FailureBounds, active: bool):
        obj = super().__new__(cls, (k, t))
        obj.k, obj.t, obj.corrupt_neighbours, obj.bounds, obj.active = k, t, corrupt_neighbours, bounds, active
        return obj

    def __getnewargs_ex__(self):
        return (self.k, self.t), {"corrupt_neighbours": self.corrupt_neighbours, "bounds": self.bounds,
                                  "active": self.active}


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {name}={value!r}")
    return float(value)


def _complete_range(n: int, c: int, d: int, active: bool) -> tuple[int, int]:
    # With k = n-1 every other client is a neighbour: t >= c+1 hides (active: 2t > n-1+c, the
    # neighbourhood form of Bonawitz et al.'s active bound), t <= n-1-d recovers; t >= 2 always.
    lo = (n - 1 + c) // 2 + 1 if active else c + 1
    return max(lo, 2), n - 1 - d


def _midpoint_or_raise(n: int, c: int, d: int, dropout: object, corrupt: object, active: bool = False) -> int:
    lo, hi = _complete_range(n, c, d, active)
    if lo > hi:
        need = (f"2t > n-1+c = {n - 1 + c} (active-server bound)" if active
                else f"t >= c+1 = {c + 1} (fewer than t corrupt neighbours) and t >= 2")
        raise ConfigError(
            f"no threshold works for n={n}, corrupt={corrupt!r} (c={c} clients), dropout={dropout!r} "
            f"(d={d} clients), even with the complete graph (k=n-1={n - 1}): security needs "
            f"{need}, correctness needs t <= n-1-d = {hi} (t live neighbours after d dropouts)")
    return (lo + hi + 1) // 2


def classic_threshold(n: int, *, dropout: float, corrupt: float, active: bool = False) -> int:
    """Shamir threshold for the complete graph (classic SecAgg).

    Every client holds shares of every other, so the conditions are exact: t > c corrupt clients
    (security; in active mode 2t > n - 1 + c) and t <= n - 1 - d (correctness after d dropouts),
    and t >= 2. The midpoint of that range is returned (rounded up), leaving equal slack against
    underestimating either fraction.
    """
    n, c, d = _counts(n, dropout, corrupt)
    return _midpoint_or_raise(n, c, d, dropout, corrupt, active)


def choose_k_t(n: int, *, dropout: float, corrupt: float, sigma: float = 40,
               eta: float = 30, active: bool = False, grind_log2: float = 0.0) -> KTChoice:
    """The smallest even k (and a threshold t) meeting the SecAgg+ conditions of docs/graph.md.

    Security fails with probability <= 2**-sigma (no client has t corrupt neighbours -- with
    ``active``, 2t - k or more, so that 2t > k + c holds for the c it does have -- and the honest
    survivors stay connected); correctness fails with probability <= 2**-eta (every client keeps t
    live neighbours). t is the midpoint (rounded up) of the thresholds that work at that k, and
    t >= 2. ``grind_log2``: log2 of the graphs an adversary may try (session ids or seeds it can
    grind, docs/graph.md section 7), added to sigma. If no k <= n-2 works, the complete graph
    (k = n-1) is returned with ``classic_threshold``. Unpacks as ``(k, t)``; see ``KTChoice``.
    """
    n, c, d = _counts(n, dropout, corrupt)
    sigma, eta = _positive(sigma, "sigma"), _positive(eta, "eta")
    if isinstance(grind_log2, bool) or not isinstance(grind_log2, (int, float)) or not 0 <= grind_log2 < 1e6:
        raise ConfigError(f"grind_log2 must be a number >= 0, got grind_log2={grind_log2!r}")
    sigma += float(grind_log2)
    k = t = None
    if c + d < n - 1:  # otherwise every neighbour is corrupt or dropped: no sparse k can work
        for kk in range(2, n - 1, 2):
            lo, hi = _t_range(n, kk, c, d, sigma, eta, active)
            if lo <= hi:
                k, t = kk, (lo + hi + 1) // 2
                break
    if k is None:
        k, t = n - 1, _midpoint_or_raise(n, c, d, dropout, corrupt, active)
    tolerated = 2 * t - k - 1 if active else t - 1
    return KTChoice(k, t, corrupt_neighbours=tolerated, active=active,
                    bounds=failure_bounds(n, k=k, t=t, dropout=dropout, corrupt=corrupt, active=active))


# ------------------------------------------------------------------------------- graph seeds

#: Domain-separation labels of the deployment-supplied graph seeds (docs/graph.md section 7).
BEACON_SEED_LABEL = b"secagg/v2/graph-seed/beacon"
CHAIN_SEED_LABEL = b"secagg/v2/graph-seed/chain"


def _seed_input(value: object, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or not 16 <= len(value) <= 1024:
        raise ConfigError(f"{name} must be 16..1024 bytes, got {type(value).__name__} of length "
                          f"{len(value) if isinstance(value, (bytes, bytearray)) else '?'}")
    return bytes(value)


def beacon_seed(beacon: bytes, *, round_number: int) -> bytes:
    """A graph seed from a public randomness beacon value published after the round's cohort was
    fixed (e.g. a drand round): SHA-256(label || round (8 B BE) || len (4 B BE) || beacon). The
    server cannot grind it: it does not choose the beacon output."""
    if not _is_int(round_number) or not 0 <= round_number < 2**64:
        raise ConfigError(f"round_number must be an int in [0, 2**64), got {round_number!r}")
    b = _seed_input(beacon, "beacon")
    return hashlib.sha256(BEACON_SEED_LABEL + round_number.to_bytes(8, "big") + len(b).to_bytes(4, "big") + b).digest()


def chain_seed(previous_round_digest: bytes, *, round_number: int) -> bytes:
    """A graph seed from the previous round's digest (a hash chain every client can recompute):
    SHA-256(label || round (8 B BE) || previous digest (32)). It fixes the graph before the server
    sees this round's messages; the server can still influence it through the previous round's
    parameters, so prefer a beacon where one exists (docs/graph.md section 7)."""
    if not _is_int(round_number) or not 0 <= round_number < 2**64:
        raise ConfigError(f"round_number must be an int in [0, 2**64), got {round_number!r}")
    prev = _seed_input(previous_round_digest, "previous_round_digest")
    if len(prev) != 32:
        raise ConfigError(f"previous_round_digest must be 32 bytes, got {len(prev)}")
    return hashlib.sha256(CHAIN_SEED_LABEL + round_number.to_bytes(8, "big") + prev).digest()
