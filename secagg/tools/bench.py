"""`python -m secagg.bench`: time one full round against the floor measured in the same run.

The floor is what the round cannot avoid: the mask keystream every party must expand and add
(AES-256-CTR, the protocol's PRG, measured through ``secagg.masking.add_masks`` into a d-word
accumulator with the k + 1 seeds a client adds, exactly as the round does, and through the same
loop with 64 KiB to 1 MiB of keystream per call: the floor takes the fastest, so it is the best
single-core chunking, not only the round's 256 KiB) plus the X25519 agreements, at this machine's
speed measured now: best of several repeats, on one core and on all of them (``--workers``). AES-128-CTR through the same loop shows what the cipher choice costs.
Input generation is excluded (inputs are produced lazily and never timed); everything else
(Shamir, AEAD, signatures, encoding of messages, adding masks) is in ``round_seconds``, wall-clock.
In active mode (k, t) and ``max_corrupt_neighbours`` come from ``choose_k_t(..., active=True)``,
and the cost of the masked-input signature (hash of the d words and Ed25519, client and server
side) is measured apart and reported as ``masked_input_signature``.
Writes a JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import masking, wire
from secagg.client import masked_input_signed_bytes, words_digest
from secagg.config import GraphKind, Mode, RoundConfig
from secagg.errors import ConfigError
from secagg.graph import choose_k_t
from secagg.hazmat import kex, prg
from secagg.hazmat.sign import SigningKey, verify
from secagg.simulate import DropoutSchedule, ProtocolStage, Transcript, simulate

REPEATS = 7            # timed blocks per measurement; the best is taken
BLOCK_SECONDS = 0.12   # length of one timed block


def _best_rate(work_bytes: int, once, repeats: int = REPEATS) -> tuple[float, float]:
    """(best, median) bytes per second of ``once()``, which does ``work_bytes`` of work."""
    t0 = time.perf_counter()
    once()
    calls = max(1, int(BLOCK_SECONDS / max(time.perf_counter() - t0, 1e-6)))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            once()
        rates.append(calls * work_bytes / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


def mask_rate(dim: int, streams: int, bits: int, workers: int, repeats: int = REPEATS) -> tuple[float, float]:
    """(best, median) keystream bytes/s of the round's own mask step: ``streams`` AES-256-CTR seeds
    added into one ``dim``-word accumulator by ``masking.add_masks`` on ``workers`` threads."""
    acc = np.zeros(dim, dtype=wire.word_dtype(bits))
    seeds = [os.urandom(prg.SEED_BYTES) for _ in range(streams)]
    return _best_rate(streams * dim * acc.itemsize,
                      lambda: masking.add_masks(acc, plus=seeds, bits=bits, workers=workers), repeats)


def cipher_rate(key_bytes: int, dim: int, streams: int, repeats: int = REPEATS,
                chunk_words: int = prg.CHUNK_WORDS) -> float:
    """Best keystream-and-add bytes/s of AES-CTR with a ``key_bytes`` key, one core, in the same
    chunked loop as prg.add_masks (``chunk_words`` words of keystream per call, added into that
    chunk of a ``dim``-word accumulator): only the cipher, or the chunk, differs."""
    chunk = min(chunk_words, dim)
    acc = np.zeros(dim, dtype="<u4")
    zeros, buf = bytes(chunk * 4), bytearray(chunk * 4 + 15)
    words = np.frombuffer(buf, dtype="<u4", count=chunk)

    def once():
        encs = [Cipher(algorithms.AES(os.urandom(key_bytes)), modes.CTR(bytes(16))).encryptor()
                for _ in range(streams)]
        for start in range(0, dim, chunk):
            n = min(chunk, dim - start)
            part = acc[start:start + n]
            src, w = (zeros, words) if n == chunk else (zeros[:n * 4], words[:n])
            for enc in encs:
                enc.update_into(src, buf)
                np.add(part, w, out=part)

    return _best_rate(streams * dim * 4, once, repeats)[0]


#: Chunk sizes (words) the floor also tries, so it is the fastest single-core chunking of the
#: keystream-and-add, not just the one the round uses (prg.CHUNK_WORDS, 256 KiB).
FLOOR_CHUNKS = (1 << 14, 1 << 15, 1 << 17, 1 << 18)


def x25519_seconds(workers: int = 1, reps: int = 400) -> float:
    """Best wall seconds per X25519 agreement with ``workers`` threads agreeing at once, made as
    the round makes it: the party's private key parsed once (as every client and the server do),
    the peer's public key parsed from its 32 bytes each time. (Parsing the private key each time
    as well costs as much again: the floor would be too high.)"""
    pairs = [(kex.private_key(kex.KeyPair.generate().private), kex.KeyPair.generate().public)
             for _ in range(workers)]

    def run(i: int) -> None:
        sk, pk = pairs[i]
        for _ in range(reps):
            kex.agree(sk, pk)

    best = float("inf")
    for _ in range(3):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = min(best, (time.perf_counter() - t0) / (reps * workers))
    return best


def floor_work(cfg: RoundConfig, stage_survivors: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(keystream bytes, key agreements) the round needed, given who survived each stage."""
    word = prg.word_bytes(cfg.bits)
    u1 = set(stage_survivors.get(ProtocolStage.KEYS.collecting.value, ()))
    u2 = set(stage_survivors.get(ProtocolStage.SHARES.collecting.value, ()))
    u3 = set(stage_survivors.get(ProtocolStage.MASKED_INPUT.collecting.value, ()))
    masks = agreements = 0
    for u in u1:  # share keys with every live neighbour
        agreements += len(set(cfg.neighbours(u)) & u1)
    for u in u3:  # pairwise masks with the neighbours that shared, plus the self mask
        held = len(set(cfg.neighbours(u)) & u2)
        masks += held + 1
        agreements += held
    masks += len(u3)  # server removes each survivor's self mask
    for v in u2 - u3:  # and each dropped client's pairwise masks with its live neighbours
        live = len(set(cfg.neighbours(v)) & u3)
        masks += live
        agreements += live
    return masks * cfg.dim * word, agreements


def choose_round(n: int, *, graph: GraphKind, mode: Mode, dropout: float, corrupt: float,
                 k: int | None, threshold: int | None) -> tuple[int | None, int, int]:
    """(k, t, c): the given k and t, else the secure rule for the graph and mode; c is the corrupt
    neighbours active mode tolerates (``max_corrupt_neighbours``): the rule's when the rule picked
    (k, t), else the most that 2t > k + c allows; 0 in semi-honest mode."""
    if graph is GraphKind.COMPLETE:
        k_auto, t_auto = None, threshold if threshold is not None else n // 2 + 1
    elif k is None or threshold is None:
        choice = choose_k_t(n, dropout=max(dropout, 1e-3), corrupt=corrupt, active=mode is Mode.ACTIVE)
        if k is None and threshold is None and mode is Mode.ACTIVE:
            return choice.k, choice.t, choice.corrupt_neighbours
        k_auto, t_auto = choice
        k, threshold = (k if k is not None else k_auto), (threshold if threshold is not None else t_auto)
    if mode is not Mode.ACTIVE:
        return k, threshold, 0
    degree = n - 1 if k is None else min(k, n - 1)
    return k, threshold, max(0, min(2 * threshold - degree - 1, degree - 1))


def signature_cost(dim: int, bits: int, repeats: int = 5) -> dict:
    """Seconds one masked-input signature costs (active mode): the client hashes its d words and
    signs (``masked_input_signed_bytes`` + Ed25519), the server hashes and verifies each masked
    input it accepts. Best of ``repeats``; the words are random, the digest a fixed dummy."""
    words = np.random.default_rng(0).integers(0, 2**bits, size=dim, dtype=np.uint64).astype(wire.word_dtype(bits))
    key, digest = SigningKey.generate(), bytes(32)
    signed = masked_input_signed_bytes(digest, 1, words, bits)
    sig = key.sign(signed)

    def best(once) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        return min(times)
    return {"dim": dim, "bits": bits,
            "hash_seconds": best(lambda: words_digest(words, bits)),
            "client_sign_seconds": best(lambda: key.sign(masked_input_signed_bytes(digest, 1, words, bits))),
            "server_verify_seconds": best(lambda: verify(key.public, sig, masked_input_signed_bytes(
                digest, 1, words, bits)))}


def run(*, clients: int, dim: int, dropout: float, graph: str, k: int | None, threshold: int | None,
        bits: int, corrupt: float, seed: int, mode: str = "semi-honest", workers: int | None = None,
        repeats: int = REPEATS) -> dict:
    n = clients
    kind, mode_ = GraphKind(graph), Mode(mode)
    workers = masking.current_workers(workers)
    k, t, c = choose_round(n, graph=kind, mode=mode_, dropout=dropout, corrupt=corrupt, k=k, threshold=threshold)
    signing = {u: SigningKey.generate() for u in range(n)} if mode_ is Mode.ACTIVE else None
    min_survivors = max(2, int(n * (1 - dropout)) - 1)
    cfg = RoundConfig.new(client_ids=range(n), dim=dim, bits=bits, threshold=t, min_survivors=min_survivors,
                          graph=kind, k=k, max_corrupt_neighbours=c,
                          verify_keys=None if signing is None else {u: s.public for u, s in signing.items()})
    dtype = wire.word_dtype(bits)

    def make_input(u: int) -> np.ndarray:
        return np.random.default_rng([seed, u]).integers(0, 2**bits, size=dim, dtype=np.uint64).astype(dtype)

    # dropouts spread over stages 1..4 (before keys a client simply is not in the round)
    schedule = DropoutSchedule.random(cfg.client_ids, fraction=dropout, rng=np.random.default_rng(seed),
                                      stages=(ProtocolStage.SHARES, ProtocolStage.MASKED_INPUT, ProtocolStage.UNMASK))
    streams = (cfg.k or n - 1) + 1
    rate_1, rate_1_median = mask_rate(dim, streams, bits, 1, repeats)
    # the same keystream-and-add in other chunk sizes (32-bit words): the floor takes the fastest
    sweep = {c * 4 // 1024: cipher_rate(32, dim, streams, repeats, c) for c in FLOOR_CHUNKS
             if bits <= 32 and c < dim}
    round_rate_1 = rate_1
    rate_1 = max([rate_1, *sweep.values()])
    rate_n = max(rate_1, mask_rate(dim, streams, bits, workers, repeats)[0]) if workers > 1 else rate_1
    aes256, aes128 = cipher_rate(32, dim, streams, repeats), cipher_rate(16, dim, streams, repeats)
    kex_1 = x25519_seconds(1)
    # X25519 in `cryptography` holds the GIL: threads may not help, so the all-core floor takes the faster
    kex_n = min(kex_1, x25519_seconds(workers)) if workers > 1 else kex_1
    signatures = signature_cost(dim, bits, repeats=min(repeats, 5)) if mode_ is Mode.ACTIVE else None
    res = simulate(cfg, make_input, dropouts=schedule, transcript=Transcript.NONE, signing_keys=signing,
                   workers=workers)
    exact = False
    if res.aggregate is not None:
        expect = np.zeros(dim, dtype=dtype)
        for u in res.survivors:
            expect += make_input(u)
        if bits not in (32, 64):
            expect &= dtype.type((1 << bits) - 1)
        exact = bool(np.array_equal(expect, res.aggregate))
    ks_bytes, agreements = floor_work(cfg, res.stage_survivors)
    floor_1 = ks_bytes / rate_1 + agreements * kex_1
    floor_n = ks_bytes / rate_n + agreements * kex_n
    floor_128 = ks_bytes / (rate_1 * aes128 / aes256) + agreements * kex_1
    stages = {s.key: {"client_seconds": round(st.client_seconds, 4),
                      "server_seconds": round(st.server_seconds, 4),
                      "seconds": round(st.client_seconds + st.server_seconds, 4),
                      "upload_bytes": st.upload_bytes, "download_bytes": st.download_bytes}
              for s, st in res.stages.items()}
    if signatures is not None:  # what signing y_u adds to this round: every sender signs, the server verifies
        senders = len(res.stage_survivors.get(ProtocolStage.MASKED_INPUT.collecting.value, ()))
        signatures["masked_inputs"] = senders
        signatures["round_server_seconds"] = senders * signatures["server_verify_seconds"]
        signatures["share_of_round"] = (signatures["client_sign_seconds"] + signatures["round_server_seconds"]) \
            / res.round_seconds
    return {
        "clients": n, "dim": dim, "dropout": dropout, "graph": kind.value, "mode": mode_.value,
        "k": cfg.k, "threshold": t, "max_corrupt_neighbours": c, "min_survivors": min_survivors, "bits": bits,
        "corrupt": corrupt, "masked_input_signature": signatures,
        "workers": workers, "repeats": repeats,
        "exact": exact, "aborted": None if res.aborted is None else str(res.aborted),
        "survivors": len(res.survivors),
        "round_seconds": res.round_seconds,
        "client_seconds": statistics.median(res.client_seconds.values()),
        "server_seconds": res.server_seconds,
        "floor_seconds": floor_1, "ratio_to_floor": res.round_seconds / floor_1,
        "floor_all_core_seconds": floor_n, "ratio_to_all_core_floor": res.round_seconds / floor_n,
        "floor_aes128_seconds": floor_128,
        "keystream_bytes": ks_bytes, "key_agreements": agreements,
        "keystream_bytes_per_second": rate_1, "keystream_bytes_per_second_median": rate_1_median,
        "keystream_bytes_per_second_round_chunk": round_rate_1, "round_chunk_kib": prg.CHUNK_WORDS * 4 // 1024,
        "keystream_bytes_per_second_by_chunk_kib": sweep,
        "keystream_bytes_per_second_all_core": rate_n,
        "aes256_ctr_bytes_per_second": aes256, "aes128_ctr_bytes_per_second": aes128,
        "aes256_cost_vs_aes128": aes128 / aes256,
        "x25519_seconds": kex_1, "x25519_seconds_all_core": kex_n,
        "upload_bytes_per_client": max(res.masked_input_bytes.values()),
        "upload_limit_bytes": dim * bits / 8 + 1024,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "n_times_d_words_bytes": n * dim * np.dtype(dtype).itemsize,
        "stages": stages, "load_average": list(os.getloadavg()),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def print_table(r: dict) -> None:
    rows = [("clients", r["clients"]), ("dim", r["dim"]),
            ("graph / k / t / mode", f"{r['graph']} / {r['k']} / {r['threshold']} / {r['mode']}"
             + (f" (c = {r['max_corrupt_neighbours']})" if r["mode"] == Mode.ACTIVE.value else "")),
            ("dropout", r["dropout"]), ("survivors", r["survivors"]), ("exact", r["exact"]),
            ("workers", r["workers"]),
            ("round seconds", f"{r['round_seconds']:.3f}"),
            ("floor s (1 core / all)", f"{r['floor_seconds']:.3f} / {r['floor_all_core_seconds']:.3f}"),
            ("round / floor (1 core / all)", f"{r['ratio_to_floor']:.2f} / {r['ratio_to_all_core_floor']:.2f}"),
            ("floor s if AES-128", f"{r['floor_aes128_seconds']:.3f}"),
            ("client seconds (median)", f"{r['client_seconds']:.4f}"), ("server seconds", f"{r['server_seconds']:.3f}"),
            ("mask GB/s (1 core best/median, all)", f"{r['keystream_bytes_per_second'] / 1e9:.2f} / "
             f"{r['keystream_bytes_per_second_median'] / 1e9:.2f}, {r['keystream_bytes_per_second_all_core'] / 1e9:.2f}"),
            ("mask GB/s 1 core by chunk KiB", ", ".join(
                f"{k}: {v / 1e9:.2f}" for k, v in sorted({r['round_chunk_kib']: r['keystream_bytes_per_second_round_chunk'],
                                                       **r['keystream_bytes_per_second_by_chunk_kib']}.items()))),
            ("AES-256 / AES-128 CTR GB/s", f"{r['aes256_ctr_bytes_per_second'] / 1e9:.2f} / "
             f"{r['aes128_ctr_bytes_per_second'] / 1e9:.2f} (AES-256 costs {r['aes256_cost_vs_aes128']:.2f}x)"),
            ("X25519 us (1 core / all)", f"{r['x25519_seconds'] * 1e6:.1f} / {r['x25519_seconds_all_core'] * 1e6:.1f}"),
            ("upload bytes / client", f"{r['upload_bytes_per_client']} (limit {r['upload_limit_bytes']:.0f})"),
            ("peak RSS MiB", f"{r['peak_rss_bytes'] / 2**20:.0f} (n*d words: {r['n_times_d_words_bytes'] / 2**20:.0f})"),
            ("load average", " ".join(f"{x:.2f}" for x in r["load_average"]))]
    sig = r.get("masked_input_signature")
    if sig:
        rows.insert(-1, ("masked-input signature ms", f"sign {sig['client_sign_seconds'] * 1e3:.2f} (hash "
                         f"{sig['hash_seconds'] * 1e3:.2f}), verify {sig['server_verify_seconds'] * 1e3:.2f}; "
                         f"server {sig['round_server_seconds']:.3f} s for {sig['masked_inputs']} inputs, "
                         f"{100 * sig['share_of_round']:.1f}% of the round"))
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")
    print(f"{'stage':<14}{'seconds':>9}{'clients s':>11}{'server s':>10}{'up bytes':>14}{'down bytes':>14}")
    for name, s in r["stages"].items():
        print(f"{name:<14}{s['seconds']:>9.3f}{s['client_seconds']:>11.3f}{s['server_seconds']:>10.3f}"
              f"{s['upload_bytes']:>14}{s['download_bytes']:>14}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secagg.bench", description=__doc__)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--dim", type=int, default=100_000)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--graph", choices=[g.value for g in GraphKind], default="sparse")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.SEMI_HONEST.value,
                   help="active: signed keys and the consistency round (the active (k, t) rule)")
    p.add_argument("--k", type=int, default=None, help="neighbour degree (default: the secure rule)")
    p.add_argument("--threshold", type=int, default=None, help="Shamir threshold (default: the secure rule)")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--corrupt", type=float, default=0.05, help="tolerated corrupt fraction for the (k, t) rule")
    p.add_argument("--workers", type=int, default=None, help="threads for masks and clients (default: all cores)")
    p.add_argument("--repeats", type=int, default=REPEATS, help="timed blocks per floor measurement (best taken)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error(f"--repeats must be >= 1, got {a.repeats}")
    try:
        r = run(clients=a.clients, dim=a.dim, dropout=a.dropout, graph=a.graph, k=a.k, threshold=a.threshold,
                bits=a.bits, corrupt=a.corrupt, seed=a.seed, mode=a.mode, workers=a.workers, repeats=a.repeats)
    except ConfigError as e:
        p.error(str(e))
    r = {"command": "python -m secagg.bench " + " ".join(sys.argv[1:] if argv is None else argv), **r}
    print_table(r)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0 if r["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
