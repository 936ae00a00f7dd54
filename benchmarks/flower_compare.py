"""Our secure round vs Flower's SecAgg+ (SecAggPlusWorkflow + secaggplus_mod), side by side.

In one process (default): both protocols driven through the same in-process Flower Grid
(``fl_core.tools.flower_grid.InProcessGrid``), same n, d, neighbourhood, threshold and dropouts
(clients that go silent after sharing keys, before their masked input: the only dropout Flower's
workflow survives), at each ``--d`` (default 10^5 and 10^6). Clients hold a fixed float update (no
training) that each side quantizes its own way. Rows per d:
- ours (Flower's FedAvg on ``SecureGrid``, nodes ``ClientApp(mods=[secagg_mod])``) at k
  neighbours and threshold t (default 16 and 7), without and with DP (epsilon 8);
- our bare protocol (``secagg.simulate``, no Flower objects) at the same (k, t), for the overhead;
- Flower at num_shares = k + 1 (its neighbourhood counts the client itself), threshold = t.
Times are the protocol's own (messages handed over as fresh records, no serialization); up to
``--serialized-max-d``, one more run per row sends every message through Flower's serialization
both ways (``flower_grid.transmit``), as on the engine, for that time and the bytes per client.

With ``--engine``: on a local Deployment Engine (SuperLink + SuperNodes on 127.0.0.1), at each
``--engine-d``: examples/flower/fixed_update (ours) vs examples/flower/baseline (Flower's SecAgg+),
same nodes, complete graph, same threshold, the same fixed update, no dropout; seconds per round
and bytes per node (the run's network traffic from ``flwr list`` over the nodes). With
``--engine-digits``: the digits example app as shipped (training, DP at epsilon 8, 2 rounds).
Writes JSON (default benchmarks/results/flower_compare.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402

from fl_core.secure import flower as ours  # noqa: E402
from fl_core.tools.flower_grid import InProcessGrid  # noqa: E402
from secagg.config import GraphKind, RoundConfig  # noqa: E402
from secagg.graph import choose_k_t  # noqa: E402
from secagg.simulate import DropoutSchedule, Transcript, simulate  # noqa: E402

EXAMPLES = 100  # every client's example count (its FedAvg weight)


def deltas(n: int, d: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 0.01, d).astype(np.float32) for i in range(n)}


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "runs_s": times}


def per_client_bytes(grid: InProcessGrid, survivors) -> dict:  # zero unless the grid serializes
    up = [grid.received_bytes[100 + u] for u in survivors]
    down = [grid.sent_bytes[100 + u] for u in survivors]
    return {"upload_bytes_per_client": int(statistics.median(up)), "download_bytes_per_client": int(statistics.median(down))}


# ---------------------------------------------------------------------------- ours over Flower objects


def ours_inprocess(n, d, dropped, k, t, *, dp: bool, repeats: int, serialize: bool) -> dict:
    """Flower's FedAvg on ``SecureGrid``, nodes a plain ``ClientApp(mods=[secagg_mod])``."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp.strategy import FedAvg

    delta = deltas(n, d)
    app = ClientApp(mods=[ours.secagg_mod])

    @app.train()
    def train(msg, context):
        u = context.node_config["partition-id"]
        (arr,) = msg.content["arrays"].to_numpy_ndarrays()
        return Message(RecordDict({"arrays": ArrayRecord([arr + delta[u]]),
                                   "metrics": MetricRecord({"num-examples": EXAMPLES})}), reply_to=msg)

    # InProcessGrid delivers in push_messages, so when the pulls start every live reply is there and
    # only the silent nodes' are missing: a short timeout ends the step then (Flower's workflow on the
    # same grid gets its replies from one pull and never waits for the silent ones either)
    settings = ours.SecureSettings(timeout=0.01, poll_interval=0.01, bits=32, min_survivors=0.6,
                                   graph=GraphKind.SPARSE if k < n - 1 else GraphKind.COMPLETE,
                                   k=k, threshold=(t - 0.5) / k, epsilon=8.0 if dp else None, l2_clip=10.0,
                                   example_cap=EXAMPLES)
    start = ArrayRecord([np.zeros(d, dtype=np.float32)])
    nodes = {100 + i: {"partition-id": i} for i in range(n)}
    silent = {2: {100 + u for u in dropped}}  # calls: 0 setup, 1 keys, 2 shares (masked input); no hello (semi-honest)
    times = []
    for _ in range(repeats):
        grid = InProcessGrid(app, nodes, silent_from=silent, serialize=serialize)
        sg = ours.SecureGrid(grid, settings, log=lambda m: None)
        res = FedAvg(fraction_evaluate=0.0, min_available_nodes=n, min_train_nodes=n).start(
            grid=sg, initial_arrays=start, num_rounds=1)
        rec = sg.rounds[0]
        if rec.aborted:
            raise RuntimeError(rec.aborted)
        times.append(rec.seconds - rec.hello_seconds)
    survivors = rec.survivors
    got = res.arrays.to_numpy_ndarrays()[0]
    want = np.mean([delta[u] for u in survivors], axis=0)
    return {"system": "ours", "k": rec.k, "t": rec.threshold, "input": "ddg epsilon=8" if dp else "fixed point",
            "survivors": len(survivors), **summarize(times), **per_client_bytes(grid, survivors),
            "max_abs_error": float(np.max(np.abs(got - want))) if not dp else None,
            "note": "time of the round (setup, keys, shares, unmask); semi-honest, so no hello"}


def ours_bare(n, d, dropped, k, t, *, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    words = {u: rng.integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32) for u in range(n)}
    graph = GraphKind.SPARSE if k < n - 1 else GraphKind.COMPLETE
    times = []
    for _ in range(repeats):
        cfg = RoundConfig.new(client_ids=range(n), dim=d, bits=32, threshold=t, min_survivors=int(0.6 * n),
                              graph=graph, k=k if graph is GraphKind.SPARSE else None)
        t0 = time.perf_counter()
        res = simulate(cfg, words, dropouts=DropoutSchedule.at(MASKED_INPUT=set(dropped)), transcript=Transcript.NONE)
        times.append(time.perf_counter() - t0)
    return {"system": "ours, bare protocol (secagg.simulate)", "k": k, "t": t, "survivors": len(res.survivors),
            **summarize(times), "upload_bytes_per_client": max(res.masked_input_bytes.values())}


# ---------------------------------------------------------------------------- Flower's SecAgg+


def flower_inprocess(n, d, dropped, num_shares, threshold, *, repeats: int, serialize: bool) -> dict:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    delta = deltas(n, d)

    class Client(NumPyClient):
        def __init__(self, u):
            self.u = u

        def fit(self, parameters, config):
            return [parameters[0] + delta[self.u]], EXAMPLES, {}

    app = ClientApp(client_fn=lambda context: Client(int(context.node_config["partition-id"])).to_client(),
                    mods=[secaggplus_mod])
    nodes = {100 + i: {"partition-id": i} for i in range(n)}
    silent = {2: {100 + u for u in dropped}}  # calls: 0 setup, 1 share keys, 2 collect masked vectors
    times = []
    for _ in range(repeats):
        grid = InProcessGrid(app, nodes, silent_from=silent, serialize=serialize)
        cm = SimpleClientManager()
        for nid in nodes:
            cm.register(GridClientProxy(nid, grid, 1))
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n)
        ctx = LegacyContext(Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=cm)
        ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 1, Key.START_TIME: 0.0})
        ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters([np.zeros(d, dtype=np.float32)]), True)
        workflow = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold, timeout=1.0)
        t0 = time.perf_counter()
        workflow(grid, ctx)
        times.append(time.perf_counter() - t0)
    survivors = [u for u in range(n) if u not in set(dropped)]
    got = compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], True)
    from flwr.common import parameters_to_ndarrays
    got = parameters_to_ndarrays(got)[0]
    want = np.mean([delta[u] for u in survivors], axis=0)
    return {"system": "flower secaggplus", "num_shares": num_shares, "reconstruction_threshold": threshold,
            "input": "flower quantization (clip 8, 2^22 levels, mod 2^32)", "survivors": len(survivors),
            **summarize(times), **per_client_bytes(grid, survivors),
            "max_abs_error": float(np.max(np.abs(got - want)))}


# ---------------------------------------------------------------------------- engine


def _traffic_per_node(run, n: int) -> int | None:
    t = (run.info or {}).get("network-traffic")
    return None if not t else int(t["total-bytes"] / n)


def engine(n: int, dims: list[int], timeout: float, flower_fast_poll: bool = True) -> dict:
    """Both apps on one local deployment (n SuperNodes), each d once: examples/flower/fixed_update
    (ours: FedAvg on SecureGrid, secagg_mod) and examples/flower/baseline (Flower's
    SecAggPlusWorkflow + secaggplus_mod), same n, complete graph (num_shares = n), same
    threshold, same fixed update, no dropout. Ours pulls replies every secagg-poll-interval (0.1 s);
    Flower's grid every 3 s; with ``flower_fast_poll`` Flower's workflow runs once more on a grid
    that pulls every 0.1 s, to show how much of the difference that is."""
    from fl_core.tools.deployment import LocalDeployment

    t = n - 1  # ours: k = n - 1 neighbours, t of them; Flower: num_shares = n (itself included), threshold t
    rows = []
    with tempfile.TemporaryDirectory() as td, LocalDeployment(num_nodes=n) as dep:
        for d in dims:
            res_file = Path(td) / f"ours-{d}.json"
            run = dep.run(ROOT / "examples" / "flower" / "fixed_update",
                          {"dim": d, "min-nodes": n, "secagg-timeout": timeout, "secagg-threshold": t / (n - 1),
                           "out": str(res_file)}, timeout=900)
            out = json.loads(res_file.read_text()) if res_file.exists() else {}
            r = out.get("rounds", [{}])[0]
            rows.append({"system": "ours (SecureGrid + secagg_mod)", "d": d, "status": run.status,
                         "round_seconds": None if "seconds" not in r else r["seconds"] - r["hello_seconds"],
                         "round_with_hello_seconds": r.get("seconds"), "poll_interval_s": 0.1,
                         "hello_seconds": r.get("hello_seconds"), "step_round_trip_seconds": r.get("step_seconds"),
                         "k": r.get("k"), "t": r.get("threshold"), "survivors": len(r.get("survivors", [])),
                         "max_abs_error": out.get("max_abs_error"),
                         "protocol_upload_bytes_per_node": r.get("upload_bytes_per_client"),
                         "bytes_per_node": _traffic_per_node(run, n),
                         "run_network_traffic": (run.info or {}).get("network-traffic"),
                         "flwr_run_seconds": run.seconds})
            print(json.dumps(rows[-1]), flush=True)
            for poll, system in ((3.0, "flower (SecAggPlusWorkflow + secaggplus_mod)"),
                                 (0.1, "flower, its grid pulling every 0.1 s (not Flower's behaviour)")):
                if poll < 3.0 and not flower_fast_poll:
                    continue
                flower_file = Path(td) / f"flower-{d}-{poll}.json"
                run = dep.run(ROOT / "examples" / "flower" / "baseline",
                              {"dim": d, "num-shares": n, "threshold": t, "min-nodes": n, "timeout": timeout,
                               "poll-interval": poll, "out": str(flower_file)}, timeout=900)
                f = json.loads(flower_file.read_text()) if flower_file.exists() else {}
                rows.append({"system": system, "d": d, "status": run.status, "poll_interval_s": poll,
                             "round_seconds": f.get("round_seconds"), "num_shares": n, "reconstruction_threshold": t,
                             "bytes_per_node": _traffic_per_node(run, n),
                             "run_network_traffic": (run.info or {}).get("network-traffic"),
                             "flwr_run_seconds": run.seconds})
                print(json.dumps(rows[-1]), flush=True)
    return {"n": n, "dropout": 0, "rows": rows, "leftover_processes": dep.leftovers}


def engine_digits(n: int, rounds: int, epsilon: float, timeout: float) -> dict:
    """The example app as shipped (digits, training, DDG at ``epsilon``) under ``flwr run``."""
    from fl_core.tools.deployment import LocalDeployment

    with tempfile.TemporaryDirectory() as td, LocalDeployment(num_nodes=n) as dep:
        res_file = Path(td) / "digits.json"
        run = dep.run(ROOT / "examples" / "flower", {"num-server-rounds": rounds, "dp-epsilon": epsilon, "min-nodes": n,
                                                     "secagg-timeout": timeout, "result-file": str(res_file)},
                      timeout=1200)
        d = json.loads(res_file.read_text()) if res_file.exists() else {}
    return {"status": run.status, "nodes": n, "epsilon_budget": epsilon, "epsilon_spent": d.get("epsilon"),
            "delta": d.get("delta"), "flwr_run_seconds": run.seconds,
            "rounds": [{k: r[k] for k in ("round", "survivors", "k", "threshold", "seconds", "epsilon",
                                          "upload_bytes_per_client")} for r in d.get("rounds", [])],
            "server_eval": d.get("server_eval"),
            "run_network_traffic": (run.info or {}).get("network-traffic")}


def inprocess(n: int, d: int, dropped: list[int], k: int, t: int, repeats: int, serialized: bool) -> dict:
    """The in-process rows at one d, run round robin so a change in the machine's load hits every
    row alike; with ``serialized``, one more run per row through Flower's serialization (its time
    and the bytes per client)."""
    specs = [(ours_inprocess, (n, d, dropped, k, t), {"dp": False}),
             (ours_inprocess, (n, d, dropped, k, t), {"dp": True}),
             (ours_bare, (n, d, dropped, k, t), {}),
             (flower_inprocess, (n, d, dropped, k + 1, t), {})]
    runs: list[list[dict]] = [[] for _ in specs]
    for _ in range(repeats):
        for i, (fn, a, kw) in enumerate(specs):
            runs[i].append(fn(*a, repeats=1, **kw, **({} if fn is ours_bare else {"serialize": False})))
    rows = []
    for i, (fn, a, kw) in enumerate(specs):
        row = dict(runs[i][0])
        row.update(summarize([r["median_s"] for r in runs[i]]))
        if serialized and fn is not ours_bare:
            ser = fn(*a, repeats=1, serialize=True, **kw)
            row.update({"with_flower_serialization_s": ser["median_s"],
                        "upload_bytes_per_client": ser["upload_bytes_per_client"],
                        "download_bytes_per_client": ser["download_bytes_per_client"]})
        rows.append(row)
        print(json.dumps({key: v for key, v in row.items() if key != "runs_s"}), flush=True)
    out = {"n": n, "d": d, "k": k, "t": t, "dropped": len(dropped), "repeats": repeats,
           "dropout": "silent after sharing keys, before the masked input", "rows": rows,
           "speedup_same_neighbourhood": rows[3]["median_s"] / rows[0]["median_s"],
           "speedup_same_neighbourhood_with_dp": rows[3]["median_s"] / rows[1]["median_s"]}
    if serialized:
        out["speedup_with_flower_serialization"] = (rows[3]["with_flower_serialization_s"]
                                                    / rows[0]["with_flower_serialization_s"])
    print(json.dumps({key: v for key, v in out.items() if key.startswith("speedup")}), flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--d", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--k", type=int, default=16, help="our neighbours (Flower: num_shares = k + 1)")
    ap.add_argument("--t", type=int, default=7, help="the threshold, both sides")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, nargs="+", default=[3, 1], help="repeats per --d value")
    ap.add_argument("--serialized-max-d", type=int, default=100_000,
                    help="the extra run through Flower's serialization only up to this d")
    ap.add_argument("--engine", action="store_true", help="also compare on a local Deployment Engine")
    ap.add_argument("--engine-nodes", type=int, default=4)
    ap.add_argument("--engine-d", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--engine-timeout", type=float, default=300.0)
    ap.add_argument("--engine-no-flower-fast-poll", action="store_true",
                    help="skip the extra row of Flower's workflow on a grid pulling every 0.1 s")
    ap.add_argument("--engine-digits", action="store_true", help="also run the digits example app on the engine")
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flower_compare.json")
    args = ap.parse_args(argv)
    n = args.n
    dropped = list(range(0, n, max(1, round(1 / args.dropout))))[:round(args.dropout * n)] if args.dropout else []
    report = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                          "note": "a shared 2-core machine; other jobs ran at the same time"},
              "flwr": __import__("flwr").__version__, "command": " ".join(sys.argv)}
    if not args.skip_inprocess:
        repeats = (args.repeats + [args.repeats[-1]] * len(args.d))[:len(args.d)]
        report["inprocess"] = [inprocess(n, d, dropped, args.k, args.t, r, d <= args.serialized_max_d)
                               for d, r in zip(args.d, repeats)]
        report["machine"]["load_avg_after_inprocess"] = os.getloadavg()
    if args.engine:
        report["engine"] = engine(args.engine_nodes, args.engine_d, args.engine_timeout,
                                  flower_fast_poll=not args.engine_no_flower_fast_poll)
    if args.engine_digits:
        report["engine_digits"] = engine_digits(args.engine_nodes, 2, 8.0, args.engine_timeout)
        print(json.dumps(report["engine_digits"]), flush=True)
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
