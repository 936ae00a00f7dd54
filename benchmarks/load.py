"""Load test of one SecAgg+ round: time per stage and peak memory, with the server in its own process.

    python benchmarks/load.py --clients 1000 --dim 100000 --json benchmarks/results/load_n1000_d100000.json
    python benchmarks/load.py --clients 100 --dim 10000000 --json benchmarks/results/load_n100_d10000000.json
    python benchmarks/load.py --scaling 250,500,1000 --dim 100000 --json benchmarks/results/load_scaling_d100000.json

Why a separate process: the server's peak RSS and its tracemalloc peak then count the server alone
(its running sum, the message it is handling, its O(n*k) metadata), not the n simulated clients.
Messages cross a pipe as bytes (the wire encoding), one at a time; pipe time is reported apart and
is in neither the client nor the server seconds; nor is generating the inputs. Inputs are generated lazily per client and
dropped after masking, so the driver never holds n*d words. (k, t) come from
``secagg.graph.choose_k_t`` for the given dropout and corrupt fractions; dropouts are drawn at random
stages (seeded). The sum is checked against the plain sum of the survivors' inputs, regenerated.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np

from secagg import wire
from secagg.tools.bench import keystream_bytes_per_second
from secagg.client import ClientParty
from secagg.config import GraphKind, RoundConfig
from secagg.errors import AbortedError
from secagg.graph import choose_k_t
from secagg.messages import ConsistencyRequest, ForwardedShares, KeysBroadcast, UnmaskRequest
from secagg.server import ServerParty
from secagg.simulate import DropoutSchedule, ProtocolStage

REPLY_STAGE = {KeysBroadcast: ProtocolStage.SHARES, ForwardedShares: ProtocolStage.MASKED_INPUT,
               ConsistencyRequest: ProtocolStage.CONSISTENCY, UnmaskRequest: ProtocolStage.UNMASK}


def _rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the process's own address space; ru_maxrss would
    also count the parent's RSS at fork time in a spawned child (Linux keeps it across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _server_process(conn, fields: dict, trace: bool) -> None:
    """The server: bytes in over the pipe, encoded replies out, with its own time and memory.
    tracemalloc (``trace``) counts every Python and numpy allocation; it slows the server's pure-Python
    Shamir arithmetic several times, so the runs that report times leave it off."""
    fields = dict(fields, graph=GraphKind(fields["graph"]))
    server = ServerParty(RoundConfig(**fields))
    if trace:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    while True:
        op = conn.recv()
        if op == "stop":
            conn.send({"peak_rss_bytes": _rss_bytes(),
                       "aggregate": None if server.result is None else server.result.aggregate.tobytes(),
                       "survivors": None if server.result is None else server.result.survivors})
            return
        if op == "mark":  # memory the server holds now, and its peak since the last mark
            cur, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            conn.send({"traced_now_bytes": cur - base if trace else None,
                       "traced_peak_bytes": peak - base if trace else None, "peak_rss_bytes": _rss_bytes()})
            continue
        data = conn.recv_bytes() if op == "receive" else None
        t0 = time.perf_counter()
        try:
            out = server.receive(data) if op == "receive" else server.close_stage()
            replies = [wire.encode(m) for m in out]
        except AbortedError as e:
            conn.send(("aborted", str(e), time.perf_counter() - t0, "aborted"))
            continue
        except Exception as e:  # noqa: BLE001 - report it instead of leaving the driver waiting
            conn.send(("error", f"{type(e).__name__}: {e}", time.perf_counter() - t0, server.stage.value))
            continue
        del data
        conn.send(("ok", replies, time.perf_counter() - t0, server.stage.value))


def run(*, clients: int, dim: int, bits: int = 32, dropout: float = 0.05, corrupt: float = 0.05,
        seed: int = 0, trace: bool = False) -> dict:
    n = clients
    k, t = choose_k_t(n, dropout=max(dropout, 1e-3), corrupt=corrupt)
    cfg = RoundConfig.new(client_ids=range(n), dim=dim, bits=bits, threshold=t,
                          min_survivors=max(2, int(n * (1 - 2 * dropout))), graph=GraphKind.SPARSE, k=k,
                          session_id=np.random.default_rng(seed).bytes(32))
    dtype = wire.word_dtype(bits)

    def make_input(u: int) -> np.ndarray:
        return np.random.default_rng([seed, u]).integers(0, 2**bits, size=dim, dtype=dtype)

    schedule = DropoutSchedule.random(cfg.client_ids, fraction=dropout, rng=np.random.default_rng(seed),
                                      stages=(ProtocolStage.SHARES, ProtocolStage.MASKED_INPUT, ProtocolStage.UNMASK))
    ks_speed = keystream_bytes_per_second(64 << 20)
    load_before = os.getloadavg()

    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    fields = {"session_id": cfg.session_id, "client_ids": cfg.client_ids, "dim": dim, "bits": bits, "threshold": t,
              "min_survivors": cfg.min_survivors, "graph": cfg.graph.value, "k": k}
    proc = ctx.Process(target=_server_process, args=(child_conn, fields, trace))
    proc.start()
    clients_ = {u: ClientParty(cfg, u) for u in cfg.client_ids}
    client_s: dict[str, float] = defaultdict(float)
    input_s = 0.0
    server_s: dict[str, float] = defaultdict(float)
    pipe_s: dict[str, float] = defaultdict(float)
    memory: dict[str, dict] = {}
    aborted = None
    done = False

    def call(op: str, stage: ProtocolStage, data: bytes | None = None) -> list[bytes]:
        nonlocal aborted
        t0 = time.perf_counter()
        conn.send(op)
        if data is not None:
            conn.send_bytes(data)
        nonlocal done
        status, payload, dt, server_stage = conn.recv()
        server_s[stage.name] += dt
        pipe_s[stage.name] += time.perf_counter() - t0 - dt
        done = server_stage in ("done", "aborted")
        if status == "error":
            raise RuntimeError(f"server process: {payload}")
        if status == "aborted":
            aborted = payload
            return []
        return payload

    def mark(name: str) -> None:
        conn.send("mark")
        memory[name] = conn.recv()

    mark("startup")  # the server process has imported everything; not counted in any stage
    wall0 = last = time.perf_counter()
    stage_wall = {}
    stage = ProtocolStage.KEYS
    pending: list[bytes] = []
    for u in cfg.client_ids:
        if u in schedule.gone_by(stage):
            continue
        t0 = time.perf_counter()
        data = wire.encode(clients_[u].start())
        client_s[stage.name] += time.perf_counter() - t0
        pending += call("receive", stage, data)
    while not done:
        if not pending:
            pending = call("close", stage)
            if aborted is not None or not pending:
                break
        mark(stage.name)
        stage_wall[stage.name] = time.perf_counter() - last
        last = time.perf_counter()
        outgoing, pending = pending, []
        msgs = [wire.decode(b) for b in outgoing]
        stage = REPLY_STAGE[type(msgs[0])]
        gone = schedule.gone_by(stage)
        for m, raw in zip(msgs, outgoing):
            if m.receiver in gone:
                continue
            c = clients_[m.receiver]
            if stage is ProtocolStage.MASKED_INPUT:
                t0 = time.perf_counter()
                c.set_input(make_input(m.receiver))  # generated now, dropped once masked
                input_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                data = wire.encode(c.receive(raw))
            except AbortedError:
                continue
            finally:
                client_s[stage.name] += time.perf_counter() - t0
            pending += call("receive", stage, data)
        del outgoing, msgs
    mark(stage.name)
    stage_wall[stage.name] = time.perf_counter() - last
    wall = time.perf_counter() - wall0
    conn.send("stop")
    final = conn.recv()
    proc.join()

    exact = None
    if final["aggregate"] is not None:
        expect = np.zeros(dim, dtype=dtype)
        for u in final["survivors"]:
            expect += make_input(u)
        if bits not in (32, 64):
            expect &= dtype.type((1 << bits) - 1)
        exact = bool(np.array_equal(expect, np.frombuffer(final["aggregate"], dtype=dtype)))
    word = np.dtype(dtype).itemsize
    return {
        "clients": n, "dim": dim, "bits": bits, "graph": "sparse (SecAgg+)", "k": k, "threshold": t,
        "dropout": dropout, "corrupt": corrupt, "min_survivors": cfg.min_survivors, "seed": seed,
        "mode": "semi-honest", "exact": exact, "aborted": aborted,
        "survivors": None if final["survivors"] is None else len(final["survivors"]),
        "wall_seconds": round(wall, 2), "input_generation_seconds": round(input_s, 2),
        "stages": {s.name.lower(): {"client_seconds_total": round(client_s[s.name], 3),
                                    "client_seconds_per_client": round(client_s[s.name] / n, 5),
                                    "server_seconds": round(server_s[s.name], 3),
                                    "pipe_seconds": round(pipe_s[s.name], 3),
                                    "wall_seconds": round(stage_wall.get(s.name, 0.0), 3),
                                    "server_traced_peak_bytes": memory.get(s.name, {}).get("traced_peak_bytes"),
                                    "server_traced_after_bytes": memory.get(s.name, {}).get("traced_now_bytes")}
                   for s in ProtocolStage if s.name in client_s or s.name in server_s},
        "server_peak_rss_bytes": final["peak_rss_bytes"],
        "server_traced_peak_bytes": max(m["traced_peak_bytes"] for k_, m in memory.items() if k_ != "startup")
        if trace else None, "tracemalloc": trace,
        "server_rss_after_startup_bytes": memory["startup"]["peak_rss_bytes"],
        "driver_and_clients_peak_rss_bytes": _rss_bytes(),
        "one_vector_bytes": dim * word, "n_times_d_bytes": n * dim * word,
        "keystream_bytes_per_second": round(ks_speed), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "note": "2 CPU cores shared with other jobs running at the same time; timings are what was measured then",
    }


def print_table(r: dict) -> None:
    mib = 2**20
    print(f"n={r['clients']} d={r['dim']} bits={r['bits']} k={r['k']} t={r['threshold']} survivors={r['survivors']} "
          f"exact={r['exact']} aborted={r['aborted']} wall={r['wall_seconds']} s "
          f"(of which generating inputs {r['input_generation_seconds']} s)")
    print(f"{'stage':<14}{'clients s':>11}{'per client':>12}{'server s':>10}{'pipe s':>9}{'srv peak MiB':>14}")
    for name, s in r["stages"].items():
        peak = s["server_traced_peak_bytes"] or 0
        print(f"{name:<14}{s['client_seconds_total']:>11.2f}{s['client_seconds_per_client']:>12.4f}"
              f"{s['server_seconds']:>10.2f}{s['pipe_seconds']:>9.2f}{peak / mib:>14.1f}")
    traced = "off" if r["server_traced_peak_bytes"] is None else f"{r['server_traced_peak_bytes'] / mib:.1f} MiB"
    print(f"server peak RSS {r['server_peak_rss_bytes'] / mib:.0f} MiB (after start-up "
          f"{r['server_rss_after_startup_bytes'] / mib:.0f}), traced peak {traced}; "
          f"one vector {r['one_vector_bytes'] / mib:.1f} MiB, n*d {r['n_times_d_bytes'] / mib:.0f} MiB; "
          f"driver+clients peak RSS {r['driver_and_clients_peak_rss_bytes'] / mib:.0f} MiB; "
          f"keystream {r['keystream_bytes_per_second'] / 1e9:.2f} GB/s; load {r['loadavg_before']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--dim", type=int, default=100_000)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--corrupt", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scaling", type=str, default=None, help="comma-separated client counts at fixed --dim")
    p.add_argument("--tracemalloc", action="store_true", help="trace the server's allocations (slows it; on with --scaling)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.scaling:
        runs = []
        for n in (int(x) for x in a.scaling.split(",")):
            runs.append(run(clients=n, dim=a.dim, bits=a.bits, dropout=a.dropout, corrupt=a.corrupt, seed=a.seed,
                            trace=True))
            print_table(runs[-1])
        out = {"dim": a.dim, "runs": runs, "summary": [
            {"clients": r["clients"], "k": r["k"], "n_times_k": r["clients"] * r["k"],
             "server_traced_peak_bytes": r["server_traced_peak_bytes"], "server_peak_rss_bytes": r["server_peak_rss_bytes"],
             "n_times_d_bytes": r["n_times_d_bytes"]} for r in runs]}
        ok = all(r["exact"] for r in runs)
    else:
        out = run(clients=a.clients, dim=a.dim, bits=a.bits, dropout=a.dropout, corrupt=a.corrupt, seed=a.seed,
                  trace=a.tracemalloc)
        print_table(out)
        ok = bool(out["exact"])
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
