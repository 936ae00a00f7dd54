"""Whose memory is the peak of a big simulated round: the server's, or the simulation's?

``python benchmarks/secagg_memory.py --clients 10000 --dim 10000 --json PATH`` runs the same round
as ``python -m secagg.bench`` (sparse graph, the secure (k, t), 10% dropout over stages 1-4) and, at
each stage's close, records the process's resident set (VmRSS, VmHWM) and the bytes the
``ServerParty`` holds: its own state, walked object by object (dicts, lists, tuples, bytes, ints,
slotted messages, numpy buffers, each counted once), plus the messages it has just returned and
that are not yet sent. The round's public setup (``RoundConfig`` and its neighbour graph) is counted
apart: every party holds one. What is left of the peak is the simulation: n ``ClientParty`` objects
in one process, and the interpreter with its libraries (the RSS before the round starts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

from secagg import server as server_module
from secagg.config import GraphKind, Mode, RoundConfig
from secagg.simulate import DropoutSchedule, ProtocolStage, Transcript, simulate
from secagg.tools.bench import choose_round

_LEAVES = (bytes, bytearray, int, float, str, bool, type(None))


def deep_bytes(root, skip: set[int]) -> int:
    """Bytes of ``root`` and everything it reaches through containers and instance fields, each
    object once (``skip`` holds ids already counted or left out, and is extended)."""
    total, stack = 0, [root]
    while stack:
        o = stack.pop()
        if id(o) in skip:
            continue
        skip.add(id(o))
        if isinstance(o, (type, types.ModuleType, types.FunctionType, types.MethodType)):
            continue
        if isinstance(o, np.ndarray):  # its buffer when it owns one, else the object it views
            total += sys.getsizeof(o)
            if o.base is not None:
                stack.append(o.base)
            continue
        total += sys.getsizeof(o)
        if isinstance(o, _LEAVES):
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        else:
            for cls in type(o).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(o, name):
                        stack.append(getattr(o, name))
            if hasattr(o, "__dict__"):
                stack.append(o.__dict__)
    return total


def summary(stages: list[dict], rss_before: int) -> dict[str, int]:
    """The server's peak over the stage closes (its state before a close, or after it with the
    messages it returned), and at the close with the largest RSS what is left for the simulation.
    RSS is read before each walk: the walk's own bookkeeping (a set of every object's id) would
    otherwise count; the run's true peak is ``python -m secagg.bench``'s."""
    server = [max(s["server_state_bytes_before_close"], s["server_state_bytes_after_close"] + s["server_outgoing_bytes"])
              for s in stages]
    top = max(range(len(stages)), key=lambda i: stages[i]["rss_at_close"])
    return {"server_peak_bytes": max(server), "rss_at_close_max_bytes": stages[top]["rss_at_close"],
            "largest_close": stages[top]["stage"],
            "simulation_bytes_at_largest_close": stages[top]["rss_at_close"] - rss_before - server[top]}


def rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/secagg_memory.py", description=__doc__)
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=10_000)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)
    n, d = a.clients, a.dim
    k, t, _ = choose_round(n, graph=GraphKind.SPARSE, mode=Mode.SEMI_HONEST, dropout=a.dropout, corrupt=0.05,
                           k=None, threshold=None)
    cfg = RoundConfig.new(client_ids=range(n), dim=d, bits=32, threshold=t, graph=GraphKind.SPARSE, k=k,
                          min_survivors=max(2, int(n * (1 - a.dropout)) - 1))
    schedule = DropoutSchedule.random(cfg.client_ids, fraction=a.dropout, rng=np.random.default_rng(a.seed),
                                      stages=(ProtocolStage.SHARES, ProtocolStage.MASKED_INPUT, ProtocolStage.UNMASK))
    setup_bytes = deep_bytes(cfg, set())
    before = rss()
    stages, real_close = [], server_module.ServerParty.close_stage
    t_walk = [0.0]

    def close(server):
        stage = server.stage.value
        at_close = rss()
        t0 = time.perf_counter()
        held_before = deep_bytes(server, {id(cfg)})
        t_walk[0] += time.perf_counter() - t0
        out = real_close(server)
        t0 = time.perf_counter()
        skip = {id(cfg)}
        held = deep_bytes(server, skip)
        outgoing = deep_bytes(out, skip)  # not counting what the state already holds
        t_walk[0] += time.perf_counter() - t0
        stages.append({"stage": stage, "rss_at_close": at_close["VmRSS"], "peak_rss_so_far": at_close["VmHWM"],
                       "server_state_bytes_before_close": held_before, "server_state_bytes_after_close": held,
                       "server_outgoing_bytes": outgoing})
        return out

    server_module.ServerParty.close_stage = close
    try:
        res = simulate(cfg, lambda u: np.random.default_rng([a.seed, u]).integers(0, 2**32, size=d, dtype=np.uint64)
                       .astype(np.uint32), dropouts=schedule, transcript=Transcript.NONE)
    finally:
        server_module.ServerParty.close_stage = real_close
    after = rss()
    out = {
        "command": "python benchmarks/secagg_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "clients": n, "dim": d, "k": cfg.k, "threshold": t, "survivors": len(res.survivors),
        "aborted": None if res.aborted is None else str(res.aborted),
        "rss_before_round_bytes": before["VmRSS"], "n_times_d_words_bytes": n * d * 4,
        "round_setup_bytes": setup_bytes, "stages": stages,
        "peak_rss_with_walks_bytes": after["VmHWM"],
        "walk_seconds": round(t_walk[0], 2), "load_average": list(os.getloadavg()),
        **summary(stages, before["VmRSS"]),
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    mib = 2**20
    print(f"largest RSS at a stage close {out['rss_at_close_max_bytes'] / mib:.0f} MiB (n*d words "
          f"{out['n_times_d_words_bytes'] / mib:.0f}); before the round {out['rss_before_round_bytes'] / mib:.0f}; "
          f"server at most {out['server_peak_bytes'] / mib:.0f}; round setup {setup_bytes / mib:.1f}; there the "
          f"simulation (n clients, messages in flight) {out['simulation_bytes_at_largest_close'] / mib:.0f}")
    for s in stages:
        print(f"  {s['stage']:<20} RSS {s['rss_at_close'] / mib:6.0f}  server state {s['server_state_bytes_before_close'] / mib:6.1f}"
              f" -> {s['server_state_bytes_after_close'] / mib:6.1f} + outgoing {s['server_outgoing_bytes'] / mib:6.1f} MiB")
    print(f"wrote {a.json}")
    return 0 if res.aborted is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
