"""``python -m dp.bench``: DP-SGD throughput, sampler speed, distributed vs central DP error.

Subcommands (each prints a table and writes ``benchmarks/results/dp_<name>.json`` and a PNG):

- ``sgd``: training samples/s of a small CNN (2 conv + 1 linear, 28x28x1 inputs, 10 classes)
  without DP and with Opacus in each per-sample-gradient mode. ``--device cuda`` runs it on a GPU.
  One torch thread by default (``--threads``). Smaller: ``--steps``, ``--batch-size``, ``--modes``.
- ``sampler``: samples/s of the discrete Gaussian and Skellam samplers beside numpy's normal, and
  the time to noise (and fully encode) a d-vector against the time to expand one secagg mask;
  DP-SGD's keystream noise (``dp.noise.secure_gaussian``, what ``train_dp_sgd`` adds) against
  torch.normal (Opacus' default) and torch's four-draw secure_mode construction.
  Smaller: ``--size``, ``--repeats``.
- ``distributed``: MSE of the decoded DDG sum vs the central Gaussian sum at the same (epsilon,
  delta), one release, no client sampling. Each mechanism is calibrated with its own analysis:
  the DDG with the RDP bound of Kairouz-Liu-Steinke (the only one it has), the Gaussian with our
  ``--central-accountant`` (RDP by default, the same analysis, so the gap is the mechanism's;
  the PRV-calibrated central MSE is reported beside it). Smaller: ``--clients``, ``--dim``,
  ``--bits``, ``--epsilon``. One point:
  ``python -m dp.bench distributed --clients 100 --dim 100000 --bits 16 --epsilon 3 --delta 1e-5
  --json PATH`` (top-level keys mse_distributed, mse_central, bits, clients, dim, epsilon).
- ``xnoise``: excess-noise removal. Noise MSE of the decoded DDG sum over the actual survivors
  with removal (``mse_xnoise``), with the min-survivors calibration alone (``mse_min_survivors``)
  and with noise calibrated for the actual survivors (``mse_ideal``), plus the extra round time
  and bytes of the seeds in a secagg round (``extra_round_seconds``, ``extra_bytes``). One point:
  ``python -m dp.bench xnoise --clients 100 --dim 10000 --planned-dropout 0.3
  --actual-dropout 0.05 --json PATH``.
- ``all``: sgd, sampler and distributed with their defaults (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path("benchmarks/results")


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "numpy": np.__version__,
            "cpus": os.cpu_count(), "platform": platform.platform()}


def _write(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


def _table(rows: list[dict[str, Any]], cols: Sequence[str]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- (a) DP-SGD throughput ----------------------------------------------------------------------


def _cnn():
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def bench_sgd(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from dp.opacus_adapter import GradSampleMode, train_dp_sgd

    torch.manual_seed(args.seed)
    if args.threads:
        # One thread by default: on a small shared CPU, OpenMP threads that spin against other
        # processes made plain training 4x slower in our runs, which distorts every ratio.
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n = args.batch_size * args.steps
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    data = TensorDataset(x, y)
    rows = []
    for mode in args.modes:
        if mode == "plain":
            model = _cnn().to(device)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            xb, yb = x[: args.batch_size].to(device), y[: args.batch_size].to(device)

            def steps(k: int) -> None:
                for _ in range(k):
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(xb), yb).backward()
                    opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            steps(2)  # warm-up
            t0 = time.perf_counter()
            steps(args.steps)
            seconds, examples = time.perf_counter() - t0, args.steps * args.batch_size
        else:
            def dp(k: int):
                return train_dp_sgd(_cnn(), data, steps=k, batch_size=args.batch_size,
                                    max_grad_norm=1.0, noise_multiplier=1.0, lr=0.05,
                                    grad_sample_mode=GradSampleMode(mode), device=device,
                                    seed=args.seed)
            dp(2)  # warm-up (and any one-off compilation)
            t0 = time.perf_counter()
            result = dp(args.steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds, examples = time.perf_counter() - t0, result.examples
        rows.append({"mode": mode, "samples_per_s": examples / seconds, "seconds": seconds,
                     "examples": examples})
    plain = next((r["samples_per_s"] for r in rows if r["mode"] == "plain"), None)
    for r in rows:
        r["vs_plain"] = r["samples_per_s"] / plain if plain else None
    _table(rows, ["mode", "samples_per_s", "vs_plain", "seconds", "examples"])
    return {"bench": "sgd", "device": str(device), "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "steps": args.steps, "model": "cnn(conv16-conv32-linear), 28x28x1, 10 classes",
            "torch": torch.__version__, "machine": _machine(), "rows": rows}


def plot_sgd(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    rows = payload["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([r["mode"] for r in rows], [r["samples_per_s"] for r in rows], color="tab:blue")
    ax.set_ylabel("training samples / s")
    ax.set_title(f"DP-SGD small CNN, batch {payload['batch_size']}, {payload['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# --- (b) sampler throughput ---------------------------------------------------------------------


def bench_sampler(args: argparse.Namespace) -> dict[str, Any]:
    from secagg.hazmat import prg

    from dp.distributed import DDGConfig, encode_client
    from dp.noise import NoiseGenerator, discrete_gaussian, skellam

    size, reps = args.size, args.repeats
    gen = NoiseGenerator(bytes(32))
    rng = np.random.default_rng(args.seed)
    rows = [{"sampler": "numpy standard_normal (float)", "sigma": 1.0,
             "seconds": _best_time(lambda: rng.standard_normal(size), reps)}]
    for s in args.sigmas:
        rows.append({"sampler": "discrete_gaussian", "sigma": s,
                     "seconds": _best_time(lambda s=s: discrete_gaussian(size, s, gen=gen), reps)})
    for s in args.sigmas:
        rows.append({"sampler": "skellam", "sigma": s,
                     "seconds": _best_time(lambda s=s: skellam(size, s * s / 2, gen=gen), reps)})
    rows += _dp_sgd_noise_rows(size, reps, gen)
    mask = _best_time(lambda: prg.expand(bytes(32), size, 16), reps)
    rows.append({"sampler": "secagg mask expand (1 PRG, 16 bits)", "sigma": None, "seconds": mask})
    plan = DDGConfig(l2_clip=1.0, bits=16, dim=size, num_clients=100, min_survivors=100,
                     noise_multiplier=1.0).plan()
    x = rng.standard_normal(size)
    enc = _best_time(lambda: encode_client(x, plan=plan, rotation_seed=bytes(32), gen=gen), reps)
    rows.append({"sampler": "DDG encode_client (clip, rotate, round, noise)",
                 "sigma": plan.client_sigma, "seconds": enc})
    for r in rows:
        r["samples_per_s"] = size / r["seconds"]
    _table(rows, ["sampler", "sigma", "seconds", "samples_per_s"])
    dg = next(r["seconds"] for r in rows if r["sampler"] == "discrete_gaussian"
              and r["sigma"] == max(args.sigmas))
    print(f"noise / one mask: {dg / mask:.3g}; a client expands k+1 >= 2 masks")
    return {"bench": "sampler", "size": size, "repeats": reps, "machine": _machine(),
            "noise_over_one_mask": dg / mask, "rows": rows}


def _dp_sgd_noise_rows(size: int, reps: int, gen: Any) -> list[dict[str, Any]]:
    """DP-SGD noise for ``size`` coordinates: ours (keystream, sum of 4) vs torch.normal."""
    import torch

    from dp.noise import secure_gaussian

    tgen = torch.Generator().manual_seed(0)

    def torch_four() -> Any:
        out = torch.zeros(size)
        for _ in range(4):
            out += torch.normal(0.0, 1.0, size=(size,), generator=tgen)
        return out / 2

    return [
        {"sampler": "torch.normal float32 (Opacus default)", "sigma": 1.0,
         "seconds": _best_time(lambda: torch.normal(0.0, 1.0, size=(size,), generator=tgen),
                               reps)},
        {"sampler": "torch.normal x4 (Opacus secure_mode construction)", "sigma": 1.0,
         "seconds": _best_time(torch_four, reps)},
        {"sampler": "secure_gaussian (keystream, sum of 4; DP-SGD default)", "sigma": 1.0,
         "seconds": _best_time(lambda: secure_gaussian(size, 1.0, gen=gen), reps)},
    ]


def plot_sampler(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    rows = payload["rows"]
    named = ("discrete_gaussian", "skellam")
    labels = [f"{r['sampler']} s={r['sigma']:.3g}" if r["sampler"] in named else r["sampler"]
              for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh(labels, [r["samples_per_s"] / 1e6 for r in rows], color="tab:green")
    ax.set_xlabel("million samples (coordinates) / s")
    ax.set_title(f"samplers, d = {payload['size']:,}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# --- (c) distributed vs central -----------------------------------------------------------------


def _client_updates(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Norms from 0.5 to 1.5 times the clip (a third get clipped) around a shared direction."""
    x = rng.standard_normal((n, dim)) + rng.standard_normal(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= rng.uniform(0.5, 1.5, (n, 1))
    return x


def bench_distributed(args: argparse.Namespace) -> dict[str, Any]:
    from dp.calibration import calibrate_noise_multiplier
    from dp.distributed import DDGConfig, clip_l2, decode_sum, encode_client, modular_sum
    from dp.errors import DPConfigError
    from dp.noise import NoiseGenerator

    n, dim, c, delta = args.clients, args.dim, 1.0, args.delta
    rng = np.random.default_rng(args.seed)
    x = _client_updates(n, dim, rng)
    true_sum = np.sum([clip_l2(row, c) for row in x], axis=0)
    rotation_seed = rng.bytes(32)
    points = []
    for eps in args.epsilon:
        z = {kind: calibrate_noise_multiplier(target_epsilon=eps, delta=delta, sampling_rate=1.0,
                                              steps=1, accountant=kind, rtol=1e-6)
             for kind in ("rdp", "prv")}
        noise = rng.standard_normal(dim)
        mse_central = {k: float(np.mean((z[k] * c * noise) ** 2)) for k in z}  # (sum + noise) - sum
        for bits in args.bits:
            point: dict[str, Any] = {
                "bits": bits, "clients": n, "dim": dim, "epsilon": eps, "delta": delta,
                "central_accountant": args.central_accountant,
                "mse_central": mse_central[args.central_accountant],
                "mse_central_rdp": mse_central["rdp"], "mse_central_prv": mse_central["prv"],
                "sigma_central_rdp": z["rdp"] * c, "sigma_central_prv": z["prv"] * c}
            t0 = time.perf_counter()
            try:
                plan = DDGConfig(l2_clip=c, bits=bits, dim=dim, num_clients=n, min_survivors=n,
                                 epsilon=eps, delta=delta, k_stddevs=args.k_stddevs).plan()
            except DPConfigError as exc:
                point.update(mse_distributed=None, ratio=None, refused=str(exc))
                points.append(point)
                continue
            words = [encode_client(x[i], plan=plan, rotation_seed=rotation_seed,
                                   gen=NoiseGenerator(rng.bytes(32))) for i in range(n)]
            est = decode_sum(modular_sum(words, bits=bits), plan=plan, rotation_seed=rotation_seed)
            mse = float(np.mean((est - true_sum) ** 2))
            point.update(mse_distributed=mse, ratio=mse / point["mse_central"],
                         gamma=plan.gamma, client_sigma=plan.client_sigma,
                         sigma_distributed=plan.central_sigma,
                         l2_sensitivity_real=plan.l2_sensitivity * plan.gamma,
                         seconds=time.perf_counter() - t0)
            points.append(point)
            print(f"eps={eps:g} bits={bits}: mse_distributed={mse:.5g} "
                  f"mse_central={point['mse_central']:.5g} ratio={point['ratio']:.4f}",
                  file=sys.stderr)
    _table(points, ["epsilon", "bits", "mse_distributed", "mse_central", "ratio",
                    "mse_central_prv", "sigma_distributed"])
    payload = {"bench": "distributed", "clients": n, "dim": dim, "delta": delta, "l2_clip": c,
               "k_stddevs": args.k_stddevs, "central_accountant": args.central_accountant,
               "seed": args.seed, "machine": _machine(), "points": points}
    if len(points) == 1:
        payload.update(points[0])
    return payload


def plot_distributed(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    pts = payload["points"]
    eps = sorted({p["epsilon"] for p in pts})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    central = {p["epsilon"]: p for p in pts}
    ax.plot(eps, [central[e]["mse_central_rdp"] for e in eps], "k-", lw=2,
            label="central Gaussian (RDP)")
    ax.plot(eps, [central[e]["mse_central_prv"] for e in eps], "k--", lw=1.5,
            label="central Gaussian (PRV)")
    for bits in sorted({p["bits"] for p in pts}):
        got = [(p["epsilon"], p["mse_distributed"]) for p in pts
               if p["bits"] == bits and p["mse_distributed"] is not None]
        if got:
            ax.plot(*zip(*sorted(got)), "o-", ms=3, label=f"DDG {bits} bits")
    ax.set_yscale("log")
    ax.set_xlabel("epsilon (delta = %g)" % payload["delta"])
    ax.set_ylabel("MSE of the sum, per coordinate")
    ax.set_title(f"distributed DG vs central, n = {payload['clients']}, d = {payload['dim']:,}, "
                 f"k = {payload['k_stddevs']:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# --- (d) excess-noise removal -------------------------------------------------------------------


def bench_xnoise(args: argparse.Namespace) -> dict[str, Any]:
    """MSE with and without removal and the protocol's extra cost, at one (n, d, P, A) point."""
    from dp.distributed import DDGConfig, clip_l2, decode_sum, encode_client, modular_sum
    from dp.noise import NoiseGenerator
    from dp import xnoise
    from secagg.excess import excess_owners

    n, dim = args.clients, args.dim
    m = n - int(math.floor(args.planned_dropout * n + 1e-9))
    s = n - int(round(args.actual_dropout * n))
    if not 2 <= m <= s <= n:
        raise SystemExit(f"need 2 <= min_survivors={m} <= survivors={s} <= clients={n}")
    rng = np.random.default_rng(args.seed)
    x = _client_updates(s, dim, rng)
    true_sum = np.sum([clip_l2(row, 1.0) for row in x], axis=0)

    def plan_for(min_survivors: int):
        return DDGConfig(l2_clip=1.0, bits=args.bits, dim=dim, num_clients=n,
                         min_survivors=min_survivors, epsilon=args.epsilon,
                         delta=args.delta).plan()

    planned, ideal = plan_for(m), plan_for(s)
    mse: dict[str, list[float]] = {"xnoise": [], "min_survivors": [], "ideal": []}
    remove_seconds = 0.0
    for _ in range(args.repeats):
        rot = rng.bytes(32)
        seeds = [rng.bytes(32) for _ in range(s)]
        gens = [NoiseGenerator(rng.bytes(32)) for _ in range(s)]
        words = [xnoise.encode_client(x[i], plan=planned, rotation_seed=rot, noise_seed=seeds[i],
                                      gen=gens[i]) for i in range(s)]
        total = modular_sum(words, bits=args.bits)
        t0 = time.perf_counter()
        excess = excess_owners(tuple(range(s)), min_survivors=m)
        cleaned = xnoise.remove_excess(total, plan=planned, seeds={u: seeds[u] for u in excess})
        remove_seconds += time.perf_counter() - t0
        for key, agg, plan in (("xnoise", cleaned, planned), ("min_survivors", total, planned)):
            est = decode_sum(agg, plan=plan, rotation_seed=rot)
            mse[key].append(float(np.mean((est - true_sum) ** 2)))
        words = [encode_client(x[i], plan=ideal, rotation_seed=rot, gen=gens[i])
                 for i in range(s)]
        est = decode_sum(modular_sum(words, bits=args.bits), plan=ideal, rotation_seed=rot)
        mse["ideal"].append(float(np.mean((est - true_sum) ** 2)))
    means = {k: float(np.mean(v)) for k, v in mse.items()}
    left = xnoise.noise_left(planned, survivors=s, removed=s - m)
    payload: dict[str, Any] = {
        "bench": "xnoise", "clients": n, "dim": dim, "bits": args.bits, "epsilon": args.epsilon,
        "delta": args.delta, "planned_dropout": args.planned_dropout,
        "actual_dropout": args.actual_dropout, "min_survivors": m, "survivors": s,
        "repeats": args.repeats, "seed": args.seed,
        "mse_xnoise": means["xnoise"], "mse_min_survivors": means["min_survivors"],
        "mse_ideal": means["ideal"], "ratio_xnoise_ideal": means["xnoise"] / means["ideal"],
        "ratio_min_survivors_ideal": means["min_survivors"] / means["ideal"],
        "nominal_variance_xnoise": left.variance,
        "nominal_variance_min_survivors": s * (planned.gamma * planned.client_sigma) ** 2,
        "nominal_variance_ideal": ideal.central_sigma ** 2,
        "server_remove_seconds": remove_seconds / args.repeats,
        "machine": _machine(), "load_average": list(os.getloadavg())}
    payload.update(_xnoise_protocol_cost(n, dim, m, s, args))
    payload["extra_round_seconds"] += payload["server_remove_seconds"]
    _table([payload], ["clients", "dim", "min_survivors", "survivors", "mse_xnoise",
                       "mse_min_survivors", "mse_ideal", "ratio_xnoise_ideal",
                       "extra_round_seconds", "extra_bytes"])
    return payload


def _xnoise_protocol_cost(n: int, dim: int, m: int, s: int,
                          args: argparse.Namespace) -> dict[str, Any]:
    """One secagg round with and without the noise seeds (the same dropouts): time and bytes."""
    from secagg.config import RoundConfig
    from secagg.simulate import DropoutSchedule, Transcript, simulate

    rng = np.random.default_rng(args.seed + 1)
    bits = args.bits
    inputs = {u: rng.integers(0, 2**bits, size=dim, dtype=np.uint64).astype(np.uint32)
              for u in range(n)}
    drops = DropoutSchedule.at(MASKED_INPUT=set(range(s, n)))
    out: dict[str, Any] = {}
    for excess in (False, True):
        cfg = RoundConfig.new(client_ids=range(n), dim=dim, bits=bits, threshold=n // 2 + 1,
                              min_survivors=m, excess_noise=excess)
        seeds = {u: rng.bytes(32) for u in range(n)} if excess else None
        res = simulate(cfg, inputs, dropouts=drops, transcript=Transcript.NONE, noise_seeds=seeds)
        out[excess] = (res.round_seconds,
                       sum(st.upload_bytes + st.download_bytes for st in res.stages.values()))
    return {"round_seconds": out[False][0], "round_bytes": out[False][1],
            "extra_round_seconds": out[True][0] - out[False][0],
            "extra_bytes": out[True][1] - out[False][1],
            "extra_bytes_per_client": (out[True][1] - out[False][1]) / n}


def plot_xnoise(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    keys = ["mse_min_survivors", "mse_xnoise", "mse_ideal"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(["min-survivors", "with removal", "ideal"], [payload[k] for k in keys])
    ax.set_ylabel("noise MSE of the sum, per coordinate")
    ax.set_title(f"n = {payload['clients']}, d = {payload['dim']:,}, planned "
                 f"{payload['planned_dropout']:.0%}, actual {payload['actual_dropout']:.0%}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# --- CLI ----------------------------------------------------------------------------------------

_BENCHES = {
    "sgd": (bench_sgd, plot_sgd),
    "sampler": (bench_sampler, plot_sampler),
    "distributed": (bench_distributed, plot_distributed),
    "xnoise": (bench_xnoise, plot_xnoise),
}
_IN_ALL = ("sgd", "sampler", "distributed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dp.bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", type=Path, help="where to write the JSON results")
        sp.add_argument("--png", type=Path, help="where to write the plot")
        sp.add_argument("--no-png", action="store_true", help="skip the plot")
        sp.add_argument("--seed", type=int, default=0)

    sp = sub.add_parser("sgd", help="DP-SGD samples/s: plain vs Opacus engines")
    common(sp)
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0 = torch's default)")
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    sp.add_argument("--modes", nargs="+", default=["plain", "hooks", "ghost", "functorch", "ew"],
                    choices=["plain", "hooks", "ghost", "functorch", "ew"])

    sp = sub.add_parser("sampler", help="discrete Gaussian / Skellam samples/s vs numpy normal")
    common(sp)
    sp.add_argument("--size", type=int, default=1_000_000)
    sp.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 30.0, 1000.0])
    sp.add_argument("--repeats", type=int, default=3)

    sp = sub.add_parser("distributed",
                        help="MSE of DDG vs central Gaussian at the same (eps, delta)")
    common(sp)
    sp.add_argument("--clients", type=int, default=100)
    sp.add_argument("--dim", type=int, default=100_000)
    sp.add_argument("--bits", type=int, nargs="+", default=[12, 14, 16, 18, 20])
    sp.add_argument("--epsilon", type=float, nargs="+",
                    default=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    sp.add_argument("--delta", type=float, default=1e-5)
    sp.add_argument("--k-stddevs", type=float, default=4.0)
    sp.add_argument("--central-accountant", choices=["rdp", "prv"], default="rdp")

    sp = sub.add_parser("xnoise", help="noise MSE with excess-noise removal vs without vs ideal")
    common(sp)
    sp.add_argument("--clients", type=int, default=100)
    sp.add_argument("--dim", type=int, default=10_000)
    sp.add_argument("--planned-dropout", type=float, default=0.3)
    sp.add_argument("--actual-dropout", type=float, default=0.05)
    sp.add_argument("--bits", type=int, default=20)
    sp.add_argument("--epsilon", type=float, default=3.0)
    sp.add_argument("--delta", type=float, default=1e-5)
    sp.add_argument("--repeats", type=int, default=3)

    sp = sub.add_parser("all", help="run sgd, sampler and distributed with their defaults")
    sp.add_argument("--seed", type=int, default=0)
    return p


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    run, plot = _BENCHES[name]
    payload = run(args)
    _write(payload, getattr(args, "json", None) or RESULTS / f"dp_{name}.json")
    sweep = name not in ("distributed", "xnoise") or len(payload.get("points", ())) > 1
    png = getattr(args, "png", None) or (RESULTS / f"dp_{name}.png" if sweep else None)
    if png is not None and not getattr(args, "no_png", False):
        plot(payload, png)
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "all":
        for name in _IN_ALL:
            sub_args = _parser().parse_args([name, "--seed", str(args.seed)])
            print(f"== {name}")
            _run(name, sub_args)
        return 0
    _run(args.command, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
