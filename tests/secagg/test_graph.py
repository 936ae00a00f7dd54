"""Neighbour graphs: Harary structure, reproducible permutation, vectors, and the (k, t) rule."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import graph
from secagg.errors import ConfigError, LocalProtocolError
from secagg.graph import (
    NeighbourGraph,
    choose_k_t,
    classic_threshold,
    complete_graph,
    failure_bounds,
    harary_graph,
    harary_permutation,
)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "graph.json").read_text())
SEED = bytes(range(32))


# ------------------------------------------------------------------ an independent reference


def _rotl(v: int, c: int) -> int:
    return ((v << c) | (v >> (32 - c))) & 0xFFFFFFFF


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439 section 2.3, written out in plain Python."""
    const = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    init = const + list(np.frombuffer(key, "<u4").tolist()) + [counter] + list(np.frombuffer(nonce, "<u4").tolist())
    s = list(init)

    def qr(a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)  # noqa: E702
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)  # noqa: E702
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)  # noqa: E702
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)  # noqa: E702

    for _ in range(10):
        qr(0, 4, 8, 12), qr(1, 5, 9, 13), qr(2, 6, 10, 14), qr(3, 7, 11, 15)
        qr(0, 5, 10, 15), qr(1, 6, 11, 12), qr(2, 7, 8, 13), qr(3, 4, 9, 14)
    return b"".join(((a + b) & 0xFFFFFFFF).to_bytes(4, "little") for a, b in zip(s, init))


def reference_words(seed: bytes):
    key = hashlib.sha256(b"secagg/graph/harary-permutation/v1" + seed).digest()
    for counter in itertools.count():
        block = chacha20_block(key, counter, bytes(12))
        for i in range(0, 64, 4):
            yield int.from_bytes(block[i:i + 4], "little")


def reference_permutation(ids, seed: bytes) -> list[int]:
    """The shuffle exactly as docs/graph.md states it."""
    a, words = sorted(ids), reference_words(seed)
    for i in range(len(a) - 1, 0, -1):
        m = i + 1
        while (w := next(words)) >= 2**32 - (2**32 % m):
            pass
        j = w % m
        a[i], a[j] = a[j], a[i]
    return a


def reference_neighbours(ring: list[int], k: int) -> dict[int, list[int]]:
    n = len(ring)
    return {ring[p]: sorted(ring[(p + s) % n] for s in range(-(k // 2), k // 2 + 1) if s) for p in range(n)}


def test_reference_chacha20_against_rfc8439_and_cryptography():
    # RFC 8439 section 2.3.2: key 00..1f, nonce 000000090000004a00000000, block counter 1.
    key, nonce = bytes(range(32)), bytes.fromhex("000000090000004a00000000")
    block = chacha20_block(key, 1, nonce)
    assert block[:16].hex() == "10f1e7e4d13b5915500fdd1fa32071c4"
    enc = Cipher(algorithms.ChaCha20(key, (1).to_bytes(4, "little") + nonce), mode=None).encryptor()
    assert enc.update(bytes(64)) == block


# ------------------------------------------------------------------ known-answer vectors


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["label"])
def test_known_answer_vectors(vec):
    seed, ids, k = bytes.fromhex(vec["seed"]), vec["ids"], vec["k"]
    assert harary_permutation(ids, seed=seed) == tuple(vec["permutation"])
    g = harary_graph(ids, k=k, seed=seed)
    assert g.is_complete == vec["complete"]
    assert list(g.ids) == vec["sorted_ids"] == sorted(ids)
    assert [list(g.neighbours(u)) for u in g.ids] == vec["neighbours"]


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["label"])
def test_vectors_follow_the_written_spec(vec):
    seed, ids, k = bytes.fromhex(vec["seed"]), vec["ids"], vec["k"]
    assert hashlib.sha256(b"secagg/graph/harary-permutation/v1" + seed).hexdigest() == vec["chacha20_key"]
    words = reference_words(seed)
    assert [next(words) for _ in range(8)] == vec["first_keystream_words"]
    ring = reference_permutation(ids, seed)
    assert ring == vec["permutation"]
    if vec["complete"]:
        expected = [[v for v in sorted(ids) if v != u] for u in sorted(ids)]
    else:
        nb = reference_neighbours(ring, k)
        expected = [nb[u] for u in sorted(ids)]
    assert vec["neighbours"] == expected


def test_shuffle_rejection_sampling(monkeypatch):
    # ids [0, 1, 2]. i=2, m=3: 2**32 mod 3 = 1, so words >= 2**32 - 1 are rejected; the next word 4
    # gives j = 4 mod 3 = 1: [0, 2, 1]. i=1, m=2: word 6 gives j = 0: [2, 0, 1].
    # Without rejection the first word would give j = (2**32 - 1) mod 3 = 0 instead.
    monkeypatch.setattr(graph, "_keystream_words", lambda seed: iter([2**32 - 1, 4, 6]))
    assert harary_permutation([2, 0, 1], seed=SEED) == (2, 0, 1)


def test_shuffle_is_uniform():
    """All 24 orders of 4 ids are equally likely over seeds.

    8,000 seeds (SHA-256 of the index); chi-square with 23 degrees of freedom against the critical
    value for p = 1e-6. Fixed seeds make the outcome deterministic; a biased shuffle (e.g. j drawn
    from [0, n) at every step) fails it.
    """
    chi2 = pytest.importorskip("scipy.stats").chi2
    draws = 8_000
    counts = collections.Counter(
        harary_permutation(range(4), seed=hashlib.sha256(i.to_bytes(4, "big")).digest()) for i in range(draws))
    assert len(counts) == 24
    expected = draws / 24
    assert sum((c - expected) ** 2 / expected for c in counts.values()) < chi2.isf(1e-6, 23)


def test_neighbourhood_is_hypergeometric():
    """The model behind choose_k_t: a client's neighbours are a uniform k-subset of the others.

    n = 50, k = 6, corrupt = ids 1..10: |N(0) & corrupt| should follow Hypergeometric(49, 10, 6).
    3,000 fixed seeds; chi-square over {0, 1, 2, >=3} (3 degrees of freedom) at p = 1e-6.
    """
    stats = pytest.importorskip("scipy.stats")
    draws, corrupt = 3000, set(range(1, 11))
    counts = [0] * 4
    for i in range(draws):
        g = harary_graph(range(50), k=6, seed=hashlib.sha256(b"nb" + i.to_bytes(4, "big")).digest())
        counts[min(3, len(corrupt.intersection(g.neighbours(0))))] += 1
    pmf = stats.hypergeom.pmf([0, 1, 2], 49, 10, 6)
    probs = list(pmf) + [1 - pmf.sum()]
    stat = sum((c - draws * p) ** 2 / (draws * p) for c, p in zip(counts, probs))
    assert stat < stats.chi2.isf(1e-6, 3)


# ------------------------------------------------------------------ structure


def is_connected(g: NeighbourGraph) -> bool:
    seen, todo = {g.ids[0]}, [g.ids[0]]
    while todo:
        for v in g.neighbours(todo.pop()):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == g.n


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=st.binary(min_size=32, max_size=32))
def test_harary_graph_is_k_regular_and_symmetric(data, seed):
    n = data.draw(st.integers(4, 60), label="n")
    k = 2 * data.draw(st.integers(1, (n - 2) // 2), label="k/2")
    ids = data.draw(st.lists(st.integers(0, 2**32 - 2), min_size=n, max_size=n, unique=True), label="ids")
    g = harary_graph(ids, k=k, seed=seed)
    assert g.ids == tuple(sorted(ids)) and g.degree == k and not g.is_complete
    edges = set()
    for u in g.ids:
        nb = g.neighbours(u)
        assert len(nb) == k and len(set(nb)) == k and u not in nb and list(nb) == sorted(nb)
        for v in nb:
            assert u in g.neighbours(v)  # symmetry
            edges.add(frozenset((u, v)))
    assert len(edges) == n * k // 2
    assert is_connected(g)


def test_determinism_and_seed_dependence():
    ids = list(range(100, 150))
    a = harary_graph(ids, k=6, seed=SEED)
    assert a == harary_graph(list(reversed(ids)), k=6, seed=SEED)  # order of ids does not matter
    assert hash(a) == hash(harary_graph(ids, k=6, seed=bytearray(SEED)))
    other = harary_graph(ids, k=6, seed=bytes(31) + b"\x01")
    assert other.ring != a.ring and other != a  # equal with probability 1/50! per seed pair
    assert [a.neighbours(u) for u in ids] != [other.neighbours(u) for u in ids]


def test_complete_graph_and_fallback():
    g = complete_graph([5, 3, 9, 1])
    assert g.ids == (1, 3, 5, 9) and g.degree == 3 and g.is_complete
    assert g.neighbours(5) == (1, 3, 9)
    for n, k in [(5, 4), (5, 6), (6, 5), (6, 100), (2, 1), (3, 2)]:
        h = harary_graph(range(n), k=k, seed=SEED)
        assert h == complete_graph(range(n)) and h.is_complete and h.degree == n - 1
    assert complete_graph([7]).neighbours(7) == ()


@pytest.mark.parametrize("k", [3, 5, 1, 0, -2, 2.0, True, None])
def test_harary_rejects_bad_k(k):
    with pytest.raises(ConfigError, match="k"):
        harary_graph(range(20), k=k, seed=SEED)


@pytest.mark.parametrize("seed", [bytes(31), bytes(33), b"", "x" * 32, None])
def test_harary_rejects_bad_seed(seed):
    with pytest.raises(ConfigError, match="seed"):
        harary_graph(range(20), k=4, seed=seed)


@pytest.mark.parametrize("ids", [[], [1, 1, 2], [-1, 2], [0, 2**32 - 1], [1.0, 2], [True, 2]])
def test_rejects_bad_ids(ids):
    with pytest.raises(ConfigError, match="ids|id"):
        complete_graph(ids)
    with pytest.raises(ConfigError):
        harary_graph(ids, k=2, seed=SEED)


def test_unknown_client_names_it():
    for g in (complete_graph(range(5)), harary_graph(range(10), k=4, seed=SEED)):
        with pytest.raises(LocalProtocolError, match="client 77 "):
            g.neighbours(77)
        with pytest.raises(LocalProtocolError, match="'a'"):
            g.neighbours("a")
        assert 77 not in g and 3 in g


def test_neighbour_graph_validates_its_fields():
    with pytest.raises(ConfigError, match="sorted"):
        NeighbourGraph(ids=(2, 1, 3), degree=2)
    with pytest.raises(ConfigError, match="permutation"):
        NeighbourGraph(ids=tuple(range(6)), degree=2, ring=(0, 1, 2, 3, 4, 4))
    with pytest.raises(ConfigError, match="even"):
        NeighbourGraph(ids=tuple(range(6)), degree=3, ring=tuple(range(6)))
    with pytest.raises(ConfigError, match="ring"):
        NeighbourGraph(ids=tuple(range(6)), degree=5, ring=tuple(range(6)))
    with pytest.raises(ConfigError, match="degree"):
        NeighbourGraph(ids=tuple(range(6)), degree=6)
    g = NeighbourGraph(ids=tuple(range(6)), degree=2, ring=(3, 1, 4, 0, 5, 2))
    assert g.neighbours(0) == (4, 5) and g.neighbours(2) == (3, 5)  # ring ends wrap around


# ------------------------------------------------------------------ the (k, t) rule


def oracle(n: int, k: int, t, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(security, correctness) log2 failure bounds of docs/graph.md, from scipy and exact integers.

    ``t`` may be an array of thresholds; S1 and C are hypergeometric tails, S2 the two-window bound.
    """
    hypergeom = pytest.importorskip("scipy.stats").hypergeom
    t = np.asarray(t)
    s1 = math.log2(n) + hypergeom.logsf(t - 1, n - 1, min(c, n - 1), k) / math.log(2)
    b = min(c + d, n)
    if k < n - 1 and b >= k:
        s2 = math.log2(math.comb(n, 2) * math.comb(b, k)) - math.log2(math.comb(n, k))
    else:
        s2 = -math.inf
    cor = math.log2(n) + hypergeom.logsf(k - t, n - 1, min(d, n - 1), k) / math.log(2)
    return np.logaddexp2(s1, s2), cor


def feasible(n, k, t, c, d, sigma=40, eta=30) -> np.ndarray:
    sec, cor = oracle(n, k, t, c, d)
    return (sec <= -sigma) & (cor <= -eta)


# (n, corrupt, dropout, c = ceil(corrupt*n), d = ceil(dropout*n)); the counts are worked by hand.
CASES = [
    (1000, 0.05, 0.05, 50, 50),
    (300, 0.10, 0.05, 30, 15),
    (5000, 0.02, 0.10, 100, 500),
    (20000, 0.10, 0.10, 2000, 2000),
    (150, 0.20, 0.20, 30, 30),
]


@pytest.mark.parametrize("n, corrupt, dropout, c, d", CASES)
def test_choose_k_t_meets_conditions_and_k_minus_2_does_not(n, corrupt, dropout, c, d):
    k, t = choose_k_t(n, dropout=dropout, corrupt=corrupt)
    assert k % 2 == 0 and 2 <= k <= n - 2 and 1 <= t <= k
    assert feasible(n, k, t, c, d)
    for smaller in range(2, k, 2):  # every smaller even degree fails for every threshold
        assert not feasible(n, smaller, np.arange(1, smaller + 1), c, d).any(), smaller


@pytest.mark.parametrize("n, corrupt, dropout, c, d", CASES)
def test_failure_bounds_match_scipy(n, corrupt, dropout, c, d):
    k, t = choose_k_t(n, dropout=dropout, corrupt=corrupt)
    for kk, tt in [(k, t), (k, 1), (k, k), (max(2, k - 4), max(1, t - 3))]:
        got = failure_bounds(n, k=kk, t=tt, dropout=dropout, corrupt=corrupt)
        sec, cor = oracle(n, kk, tt, c, d)
        assert got.security_log2 == pytest.approx(sec, abs=1e-6, rel=1e-9)
        assert got.correctness_log2 == pytest.approx(cor, abs=1e-6, rel=1e-9)
        assert got.security_log2 == pytest.approx(float(np.logaddexp2(got.shamir_log2, got.disconnect_log2)))


def test_reference_point_of_bell_et_al():
    # Published figure: n = 1000, 5% corrupt, 5% dropout, sigma = 40, eta = 30 -> k ~ 30, t ~ 17.
    k, t = choose_k_t(1000, dropout=0.05, corrupt=0.05, sigma=40, eta=30)
    assert 0.8 * 30 <= k <= 1.2 * 30 and 0.8 * 17 <= t <= 1.2 * 17


def test_k_is_monotone_in_dropout_and_corrupt():
    fractions = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3]
    for n in (200, 1000):
        grid = [[choose_k_t(n, dropout=d, corrupt=c)[0] for d in fractions] for c in fractions]
        for row in grid:
            assert row == sorted(row)  # more dropout never lowers k
        for col in zip(*grid):
            assert list(col) == sorted(col)  # more corruption never lowers k


def test_stricter_sigma_or_eta_never_lowers_k():
    ks = [choose_k_t(1000, dropout=0.05, corrupt=0.05, sigma=s)[0] for s in (20, 40, 80, 128)]
    assert ks == sorted(ks) and ks[0] < ks[-1]
    ks = [choose_k_t(1000, dropout=0.05, corrupt=0.05, eta=e)[0] for e in (10, 30, 60)]
    assert ks == sorted(ks)


def test_small_n_falls_back_to_complete_graph():
    # n = 5, c = ceil(0.25) = 1, d = 1. k = 2: security needs t >= 2 (one corrupt neighbour has
    # probability 1/2), correctness needs t <= 1 -> no t. Complete graph: t in [c+1, n-1-d] = [2, 3],
    # midpoint rounded up = 3.
    assert choose_k_t(5, dropout=0.05, corrupt=0.05) == (4, 3) == (4, classic_threshold(5, dropout=0.05, corrupt=0.05))
    # n = 7, c = ceil(2.1) = 3, d = ceil(0.7) = 1: k = 2 or 4 cannot satisfy both; complete: [4, 5] -> 5.
    assert choose_k_t(7, dropout=0.1, corrupt=0.3) == (6, 5)
    k, t = choose_k_t(7, dropout=0.1, corrupt=0.3)
    bounds = failure_bounds(7, k=k, t=t, dropout=0.1, corrupt=0.3)
    assert bounds.security_log2 == -math.inf and bounds.correctness_log2 == -math.inf


def test_classic_threshold_known_answers():
    # c = 5, d = 5: t in [6, 94], midpoint rounded up (6 + 94 + 1) // 2 = 50.
    assert classic_threshold(100, dropout=0.05, corrupt=0.05) == 50
    # c = 1, d = 2: [2, 7] -> 5.
    assert classic_threshold(10, dropout=0.2, corrupt=0.1) == 5
    # 0.07 * 100 is 7.000000000000001 in floats; the rule reads the decimal: d = 7, [1, 92] -> 47.
    assert classic_threshold(100, dropout=0.07, corrupt=0.0) == 47


def test_impossible_requirements_explain_the_failing_condition():
    with pytest.raises(ConfigError) as err:
        choose_k_t(10, dropout=0.5, corrupt=0.5)
    msg = str(err.value)
    for part in ("n=10", "c=5", "d=5", "t >= c+1 = 6", "t <= n-1-d = 4"):
        assert part in msg, (part, msg)
    # c = 9 of n = 10: security needs t >= 10 but a client has only 9 neighbours.
    with pytest.raises(ConfigError, match="t >= c\\+1 = 10"):
        classic_threshold(10, dropout=0.0, corrupt=0.9)
    assert classic_threshold(10, dropout=0.0, corrupt=0.8) == 9  # c = 8: [9, 9]


@pytest.mark.parametrize("kwargs, match", [
    (dict(dropout=-0.1), "dropout"), (dict(dropout=1.0), "dropout"), (dict(dropout=math.nan), "dropout"),
    (dict(corrupt="0.1"), "corrupt"), (dict(corrupt=True), "corrupt"), (dict(corrupt=None), "corrupt"),
    (dict(n=1), "n="), (dict(n=2.0), "n="), (dict(n=True), "n="),
    (dict(sigma=0), "sigma"), (dict(eta=-1.0), "eta"), (dict(sigma=math.inf), "sigma"),
])
def test_choose_k_t_rejects_bad_arguments(kwargs, match):
    args = dict(n=1000, dropout=0.05, corrupt=0.05) | kwargs
    with pytest.raises(ConfigError, match=match):
        choose_k_t(args.pop("n"), **args)


def test_failure_bounds_rejects_bad_k_and_t():
    for k, t in [(3, 1), (0, 1), (1000, 1), (34, 0), (34, 35)]:
        with pytest.raises(ConfigError):
            failure_bounds(1000, k=k, t=t, dropout=0.05, corrupt=0.05)
    assert failure_bounds(6, k=5, t=2, dropout=0.0, corrupt=0.0).security_log2 == -math.inf
