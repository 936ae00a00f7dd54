"""`python -m secagg.bench`: time one full round against the PRG floor measured in the same run.

The floor is what the round cannot avoid: the mask keystream bytes every party must expand and
the X25519 agreements, at this machine's speed measured now. Input generation is excluded (inputs
are produced lazily and never timed); everything else (Shamir, AEAD, signatures, encoding of
messages, adding masks) is in ``round_seconds``. Writes a JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import wire
from secagg.config import GraphKind, RoundConfig
from secagg.graph import choose_k_t
from secagg.hazmat import kex, prg
from secagg.simulate import DropoutSchedule, ProtocolStage, Transcript, simulate


def keystream_bytes_per_second(total: int = 256 << 20) -> float:
    """AES-256-CTR keystream speed into a reused buffer, chunked exactly as add_masks does."""
    chunk = prg.CHUNK_WORDS * 4
    zeros, buf = bytes(chunk), bytearray(chunk + 15)
    best = 0.0
    for _ in range(3):
        enc = Cipher(algorithms.AES(bytes(32)), modes.CTR(bytes(16))).encryptor()
        t0 = time.perf_counter()
        for _ in range(total // chunk):
            enc.update_into(zeros, buf)
        best = max(best, total / (time.perf_counter() - t0))
    return best


def x25519_seconds(reps: int = 500) -> float:
    a, b = kex.KeyPair.generate(), kex.KeyPair.generate()
    t0 = time.perf_counter()
    for _ in range(reps):
        kex.agree(a.private, b.public)
    return (time.perf_counter() - t0) / reps


def floor_work(cfg: RoundConfig, stage_survivors: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(keystream bytes, key agreements) the round needed, given who survived each stage."""
    word = prg.word_bytes(cfg.bits)
    u1 = set(stage_survivors.get("collect-keys", ()))
    u2 = set(stage_survivors.get("collect-shares", ()))
    u3 = set(stage_survivors.get("collect-inputs", ()))
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


def run(*, clients: int, dim: int, dropout: float, graph: str, k: int | None, threshold: int | None,
        bits: int, corrupt: float, seed: int) -> dict:
    n = clients
    kind = GraphKind(graph)
    if kind is GraphKind.SPARSE:
        k_auto, t_auto = choose_k_t(n, dropout=max(dropout, 1e-3), corrupt=corrupt)
    else:
        k_auto, t_auto = n - 1, n // 2 + 1
    k = k if k is not None else k_auto
    t = threshold if threshold is not None else t_auto
    min_survivors = max(2, int(n * (1 - dropout)) - 1)
    cfg = RoundConfig.new(client_ids=range(n), dim=dim, bits=bits, threshold=t, min_survivors=min_survivors,
                          graph=kind, k=k if kind is GraphKind.SPARSE else None)
    dtype = wire.word_dtype(bits)

    def make_input(u: int) -> np.ndarray:
        return np.random.default_rng([seed, u]).integers(0, 2**bits, size=dim, dtype=np.uint64).astype(dtype)

    # dropouts spread over stages 1..4 (before keys a client simply is not in the round)
    schedule = DropoutSchedule.random(cfg.client_ids, fraction=dropout, rng=np.random.default_rng(seed),
                                      stages=(ProtocolStage.SHARES, ProtocolStage.MASKED_INPUT, ProtocolStage.UNMASK))
    ks_speed = keystream_bytes_per_second()
    kex_s = x25519_seconds()
    res = simulate(cfg, make_input, dropouts=schedule, transcript=Transcript.NONE)
    exact = False
    if res.aggregate is not None:
        expect = np.zeros(dim, dtype=dtype)
        for u in res.survivors:
            expect += make_input(u)
        if bits not in (32, 64):
            expect &= dtype.type((1 << bits) - 1)
        exact = bool(np.array_equal(expect, res.aggregate))
    ks_bytes, agreements = floor_work(cfg, res.stage_survivors)
    floor = ks_bytes / ks_speed + agreements * kex_s
    stages = {s.name.lower(): {"client_seconds": round(st.client_seconds, 4),
                               "server_seconds": round(st.server_seconds, 4),
                               "upload_bytes": st.upload_bytes, "download_bytes": st.download_bytes}
              for s, st in res.stages.items()}
    return {
        "clients": n, "dim": dim, "dropout": dropout, "graph": kind.value, "k": cfg.k, "threshold": t,
        "min_survivors": min_survivors, "bits": bits, "corrupt": corrupt,
        "exact": exact, "aborted": None if res.aborted is None else str(res.aborted),
        "survivors": len(res.survivors),
        "round_seconds": res.round_seconds,
        "client_seconds": statistics.median(res.client_seconds.values()),
        "server_seconds": res.server_seconds,
        "floor_seconds": floor, "ratio_to_floor": res.round_seconds / floor,
        "keystream_bytes": ks_bytes, "key_agreements": agreements,
        "keystream_bytes_per_second": ks_speed, "x25519_seconds": kex_s,
        "upload_bytes_per_client": max(res.masked_input_bytes.values()),
        "upload_limit_bytes": dim * bits / 8 + 1024,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "n_times_d_words_bytes": n * dim * np.dtype(dtype).itemsize,
        "stages": stages, "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
    }


def print_table(r: dict) -> None:
    rows = [("clients", r["clients"]), ("dim", r["dim"]), ("graph / k / t", f"{r['graph']} / {r['k']} / {r['threshold']}"),
            ("dropout", r["dropout"]), ("survivors", r["survivors"]), ("exact", r["exact"]),
            ("round seconds", f"{r['round_seconds']:.3f}"), ("floor seconds", f"{r['floor_seconds']:.3f}"),
            ("round / floor", f"{r['ratio_to_floor']:.2f}"),
            ("client seconds (median)", f"{r['client_seconds']:.4f}"), ("server seconds", f"{r['server_seconds']:.3f}"),
            ("keystream GB/s", f"{r['keystream_bytes_per_second'] / 1e9:.2f}"),
            ("X25519 us", f"{r['x25519_seconds'] * 1e6:.1f}"),
            ("upload bytes / client", f"{r['upload_bytes_per_client']} (limit {r['upload_limit_bytes']:.0f})"),
            ("peak RSS MiB", f"{r['peak_rss_bytes'] / 2**20:.0f} (n*d words: {r['n_times_d_words_bytes'] / 2**20:.0f})")]
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")
    print(f"{'stage':<14}{'clients s':>11}{'server s':>10}{'up bytes':>14}{'down bytes':>14}")
    for name, s in r["stages"].items():
        print(f"{name:<14}{s['client_seconds']:>11.3f}{s['server_seconds']:>10.3f}{s['upload_bytes']:>14}"
              f"{s['download_bytes']:>14}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secagg.bench", description=__doc__)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--dim", type=int, default=100_000)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--graph", choices=[g.value for g in GraphKind], default="sparse")
    p.add_argument("--k", type=int, default=None, help="neighbour degree (default: the secure rule)")
    p.add_argument("--threshold", type=int, default=None, help="Shamir threshold (default: the secure rule)")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--corrupt", type=float, default=0.05, help="tolerated corrupt fraction for the (k, t) rule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    r = run(clients=a.clients, dim=a.dim, dropout=a.dropout, graph=a.graph, k=a.k, threshold=a.threshold,
            bits=a.bits, corrupt=a.corrupt, seed=a.seed)
    print_table(r)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0 if r["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
