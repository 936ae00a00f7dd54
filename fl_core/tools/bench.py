"""`python -m fl_core.bench cohort --clients K --batch B --json PATH`: the cohort trainer against
Opacus client after client, in one run. `python -m fl_core.bench backends --config FILE --json PATH`:
a run config trained by both backends over several seeds (accuracy and epsilon side by side).

Both paths train the same model from the same start on the same data (K clients, each with
``--examples`` random examples of the model's input shape), for the same number of DP-SGD steps,
with the same per-client seeds: the Opacus path (``dp.opacus_adapter.train_dp_sgd``, what
``fl_core.learn.client.local_train`` runs) draws the same Poisson batches and noise as the cohort, so
both process the same examples and ``max_update_difference`` checks that they computed the same
updates. Throughput is examples processed (sum of the Poisson batch sizes) per second of wall
time, setup included (the simulator pays it too). ``--opacus-clients M`` times Opacus on the first
M clients only: client after client, its throughput does not depend on K. ``--mode plain`` times
non-private training instead (``local_train`` without DP, CPU only). ``probe`` / ``cohort_path``:
what a run with ``local.backend = "cohort"`` trains with (``fl_core.learn.probe``) and its speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

INPUT_SHAPES = {"cnn28": (1, 28, 28), "mlp": (64,)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _client_seed(base: int, k: int) -> torch.Generator:
    return torch.Generator().manual_seed(base * 1_000_003 + k)


def _opacus_path(model, datasets, *, args, device, gens):
    """Train the clients one after the other as the reference backend does; (seconds, examples, updates)."""
    from dp.opacus_adapter import train_dp_sgd
    from fl_core.learn.client import local_train

    updates, examples = [], 0
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for (x, y), g in zip(datasets, gens):
        if args.mode == "plain":
            res = local_train(_copy(model), (x, y), steps=args.steps, batch_size=args.batch, lr=args.lr,
                              generator=g)
            examples += args.steps * args.batch  # full minibatches (examples >= batch)
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=g))  # as local_train derives it
            res = train_dp_sgd(model, torch.utils.data.TensorDataset(x, y), max_grad_norm=args.clip,
                               noise_multiplier=args.noise, batch_size=args.batch, steps=args.steps, lr=args.lr,
                               device=None if device.type == "cpu" else device, seed=seed)
            examples += res.examples
        updates.append(np.asarray(res.update))
    _sync(device)
    return time.perf_counter() - t0, examples, updates, time.process_time() - c0


def _copy(model):
    import copy
    return copy.deepcopy(model)


def _cohort_path(model, datasets, *, args, device, gens):
    from fl_core.learn.client import SampleDP
    from fl_core.learn.cohort import train_cohort

    dp = None if args.mode == "plain" else SampleDP(max_grad_norm=args.clip, noise_multiplier=args.noise)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train_cohort(model, datasets, steps=args.steps, batch_size=args.batch, lr=args.lr, dp=dp,
                       generators=gens, device=device, chunk_size=args.chunk_size)
    _sync(device)
    return time.perf_counter() - t0, sum(res.sampled_examples), res, time.process_time() - c0


def bench_cohort(args: argparse.Namespace) -> dict:
    from fl_core.learn.models import build_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    if args.mode == "plain" and device.type != "cpu":
        raise SystemExit("error: --mode plain runs on CPU only (local_train has no device option)")
    model = build_model(args.model, in_features=64, seed=args.seed)
    rng = torch.Generator().manual_seed(args.seed)
    shape = INPUT_SHAPES[args.model]
    datasets = [(torch.randn(args.examples, *shape, generator=rng), torch.randint(0, 10, (args.examples,), generator=rng))
                for _ in range(args.clients)]
    m = min(args.opacus_clients or args.clients, args.clients)
    load_before = os.getloadavg()

    warm = [_client_seed(args.seed + 1, k) for k in range(2)]  # imports, allocator, first-call costs
    warm_args = argparse.Namespace(**{**vars(args), "steps": 1})
    _opacus_path(model, datasets[:2], args=warm_args, device=device, gens=warm)
    _cohort_path(model, datasets[:2], args=warm_args, device=device,
                 gens=[_client_seed(args.seed + 1, k) for k in range(2)])

    best_o = best_c = None
    for _ in range(args.repeat):  # the two paths alternate, so machine load hits both alike
        o = _opacus_path(model, datasets[:m], args=args, device=device,
                         gens=[_client_seed(args.seed, k) for k in range(m)])
        c = _cohort_path(model, datasets, args=args, device=device,
                         gens=[_client_seed(args.seed, k) for k in range(args.clients)])
        best_o = o if best_o is None or o[1] / o[0] > best_o[1] / best_o[0] else best_o
        best_c = c if best_c is None or c[1] / c[0] > best_c[1] / best_c[0] else best_c
    o_s, o_n, o_upd, o_cpu = best_o
    c_s, c_n, res, c_cpu = best_c
    from fl_core.learn.client import SampleDP
    from fl_core.learn.probe import pick_backend
    probe = pick_backend(model, datasets[0], clients=args.clients, batch_size=args.batch, lr=args.lr,
                         dp=None if args.mode == "plain" else SampleDP(max_grad_norm=args.clip, noise_multiplier=args.noise),
                         device=args.device, refresh=True)
    diff = max(float(np.abs(a - r.update).max()) for a, r in zip(o_upd, res.results[:m]))
    o_rate, c_rate = o_n / o_s, c_n / c_s
    out = {
        "benchmark": "cohort",
        "command": "python -m fl_core.bench " + " ".join(sys.argv[1:]),
        "mode": "dp-sgd" if args.mode == "dp" else "plain",
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "clients": args.clients, "batch": args.batch, "examples_per_client": args.examples, "steps": args.steps,
        "noise_multiplier": args.noise if args.mode == "dp" else None,
        "max_grad_norm": args.clip if args.mode == "dp" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": args.threads, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "repeats": args.repeat,
        "opacus_client_after_client": {"clients_timed": m, "seconds": round(o_s, 4), "cpu_seconds": round(o_cpu, 4),
                                        "examples": o_n, "samples_per_s": round(o_rate, 1),
                                        "samples_per_cpu_s": round(o_n / o_cpu, 1)},
        "cohort": {"clients": args.clients, "seconds": round(c_s, 4), "cpu_seconds": round(c_cpu, 4), "examples": c_n,
                   "samples_per_s": round(c_rate, 1), "samples_per_cpu_s": round(c_n / c_cpu, 1),
                   "chunk_size": res.chunk_size, "chunks": res.chunks},
        "speedup": round(c_rate / o_rate, 2),
        # what a run with local.backend = "cohort" trains with: the probe's pick, measured above
        "probe": probe.as_dict(),
        "cohort_path": {"backend": probe.backend.value,
                        "samples_per_s": round(c_rate if probe.backend.value == "cohort" else o_rate, 1),
                        "speedup": round(c_rate / o_rate if probe.backend.value == "cohort" else 1.0, 2)},
        "speedup_cpu_time": round((c_n / c_cpu) / (o_n / o_cpu), 2),
        "max_update_difference": diff,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if device.type == "cuda":
        out["cuda_max_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def bench_backends(args: argparse.Namespace) -> dict:
    """One run config trained by each backend over several seeds: accuracy, epsilon, seconds."""
    import dataclasses
    import tempfile

    from fl_core.learn.cohort import Backend
    from fl_core.config import load_config
    from fl_core.run.loop import run

    base = load_config(args.config)
    rows = []
    for seed in args.seeds:
        for backend in Backend:
            cfg = dataclasses.replace(base, seed=seed, local=dataclasses.replace(base.local, backend=backend))
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                s = run(cfg, tmp, progress=False, log=lambda m: None)
                rows.append({"backend": backend.value, "seed": seed, "accuracy": s.final_accuracy,
                             "epsilon": s.epsilon, "rounds": s.rounds_run,
                             "seconds": round(time.perf_counter() - t0, 2)})
            print(f"{backend.value:>7} seed {seed}: accuracy {s.final_accuracy:.4f}  epsilon "
                  f"{'-' if s.epsilon is None else f'{s.epsilon:.4f}'}  {rows[-1]['seconds']} s", flush=True)
    summary = {}
    for backend in Backend:
        mine = [r for r in rows if r["backend"] == backend.value]
        acc = [r["accuracy"] for r in mine]
        summary[backend.value] = {"accuracy_mean": float(np.mean(acc)), "accuracy_sd": float(np.std(acc, ddof=1))
                                  if len(acc) > 1 else None, "epsilons": [r["epsilon"] for r in mine],
                                  "seconds_mean": float(np.mean([r["seconds"] for r in mine]))}
    return {"benchmark": "backends", "command": "python -m fl_core.bench " + " ".join(sys.argv[1:]),
            "config": str(args.config), "secure_randomness": base.secure_randomness, "dp_mode": base.dp.mode.value,
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "runs": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fl_core.bench", description="fl_core benchmarks.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cohort", help="cohort trainer vs Opacus client after client (samples/s)")
    c.add_argument("--clients", type=int, required=True, help="K, clients in the cohort")
    c.add_argument("--batch", type=int, required=True, help="B, per-client (expected) batch size")
    c.add_argument("--json", type=Path, required=True, help="where to write the results")
    c.add_argument("--model", choices=sorted(INPUT_SHAPES), default="cnn28")
    c.add_argument("--examples", type=int, default=None, help="examples per client (default 4 B)")
    c.add_argument("--steps", type=int, default=4, help="local DP-SGD steps per client")
    c.add_argument("--mode", choices=["dp", "plain"], default="dp")
    c.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    c.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    c.add_argument("--opacus-clients", type=int, default=None, help="time Opacus on the first M clients only")
    c.add_argument("--chunk-size", type=int, default=None, help="cohort chunk (default: automatic)")
    c.add_argument("--repeat", type=int, default=1, help="alternate both paths this many times; keep the best")
    c.add_argument("--noise", type=float, default=1.0)
    c.add_argument("--clip", type=float, default=1.0)
    c.add_argument("--lr", type=float, default=0.05)
    c.add_argument("--seed", type=int, default=0)
    bk = sub.add_parser("backends", help="a run config with each training backend over seeds (accuracy, epsilon)")
    bk.add_argument("--config", type=Path, required=True)
    bk.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    bk.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)
    if a.command == "backends":
        out = bench_backends(a)
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
        return 0
    for name in ("clients", "batch", "steps", "threads", "repeat"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    a.examples = a.examples or 4 * a.batch
    if a.mode == "plain" and a.examples < a.batch:
        p.error(f"--mode plain needs --examples >= --batch, got {a.examples} < {a.batch}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure-RNG and hook notes
        out = bench_cohort(a)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2) + "\n")
    o, c = out["opacus_client_after_client"], out["cohort"]
    print(f"{out['model']} K={a.clients} B={a.batch} on {out['device']}, {a.threads} threads: "
          f"Opacus {o['samples_per_s']:.0f} samples/s, cohort {c['samples_per_s']:.0f} samples/s "
          f"(x{out['speedup']}; per CPU second x{out['speedup_cpu_time']}), chunk {c['chunk_size']}, "
          f"max update difference {out['max_update_difference']:.2e}; the cohort path picks "
          f"{out['cohort_path']['backend']} (probe {out['probe']['seconds']:.1f} s): x{out['cohort_path']['speedup']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
