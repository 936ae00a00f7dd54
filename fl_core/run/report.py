"""What a finished run leaves behind: privacy.json (every guarantee with what it rests on),
plots.png, model.pt, summary.json, and the final line a person reads."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fl_core.config import DPMode, RunConfig
from fl_core.run import rundir


def _local_training(cfg: RunConfig) -> dict:
    """Which backend trained the clients and where DP-SGD's sampling and noise came from."""
    noise = None
    if cfg.dp.mode is DPMode.SAMPLE:
        noise = ("a torch.Generator per client and round (Poisson sampling; noise from seed + 1) seeded with "
                 "63 bits from os.urandom (the OS CSPRNG); the generator itself is not a CSPRNG, as in Opacus "
                 "without secure_mode" if cfg.secure_randomness
                 else "a torch.Generator per client and round seeded from (run seed, round, client): "
                 "reproducible, NOT for production")
    return {"backend": cfg.local.backend.value, "dp_sgd_noise_generator": noise}


def privacy_record(cfg: RunConfig, privacy, metrics: list[dict]) -> dict:
    """privacy.json: what every run states, then what its privacy plan (``fl_core.run.privacy``) adds."""
    dp = cfg.dp
    rec: dict = {
        "mode": dp.mode.value,
        "noise_source": ("os.urandom (CSPRNG) for DP noise and protocol secrets" if cfg.secure_randomness
                         else "derived from the run seed: reproducible, NOT for production"),
        "local_training": _local_training(cfg),
        "rounds_run": len(metrics),
        "rounds_planned": cfg.rounds,
        "secure_aggregation": {
            "enabled": cfg.secagg.enabled, "graph": cfg.secagg.graph.value, "bits": cfg.secagg.bits,
            "min_survivors": None, "tolerated_corrupt_fraction": cfg.secagg.corrupt,
            "k_per_round": sorted({m.get("k") for m in metrics if m.get("k") is not None}),
            "threshold_per_round": sorted({m.get("threshold") for m in metrics if m.get("threshold") is not None}),
            "mode": "semi-honest",
        },
        "mechanisms": [],
    }
    own = privacy.describe(metrics)
    rec["secure_aggregation"].update(own.pop("secure_aggregation", {}))
    rec["mechanisms"].extend(own.pop("mechanisms", []))
    rec.update(own)
    return rec


def plot(metrics: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [m["round"] for m in metrics]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(rounds, [m["accuracy"] for m in metrics], marker=".")
    ax[0].set_xlabel("round"), ax[0].set_ylabel("test accuracy"), ax[0].grid(alpha=0.3)
    eps = [m["epsilon"] for m in metrics]
    if any(e is not None for e in eps):
        ax[1].plot(rounds, [e if e is not None else math.nan for e in eps], marker=".", color="C3")
        ax[1].set_ylabel("epsilon so far")
    else:
        ax[1].text(0.5, 0.5, "no differential privacy", ha="center", va="center", transform=ax[1].transAxes)
    ax[1].set_xlabel("round"), ax[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class RunSummary:
    """What ``fl_core.run`` returns: where the run is, how far it got and the privacy it spent."""

    out_dir: Path
    rounds_run: int
    final_accuracy: float
    epsilon: float | None
    delta: float | None
    unit: str | None
    stopped_by_budget: bool
    metrics: list[dict]


def write_outputs(cfg, out: Path, *, model, data, metrics, privacy, personalization, stopped_by_budget,
                  log) -> RunSummary:
    torch.save(model.state_dict(), out / rundir.MODEL)
    rec = privacy_record(cfg, privacy, metrics)
    if personalization is not None:
        rec_p = personalization.as_dict()
        (out / rundir.PERSONALIZATION).write_text(json.dumps(rec_p, indent=1) + "\n")
    (out / rundir.PRIVACY).write_text(json.dumps(rec, indent=1, default=float) + "\n")
    if metrics:
        plot(metrics, out / rundir.PLOTS)
    final_acc = metrics[-1]["accuracy"] if metrics else float("nan")
    summary = RunSummary(out_dir=out, rounds_run=len(metrics), final_accuracy=final_acc,
                         epsilon=rec.get("epsilon"), delta=rec.get("delta"), unit=rec.get("unit_of_privacy"),
                         stopped_by_budget=stopped_by_budget, metrics=metrics)
    (out / rundir.SUMMARY).write_text(json.dumps({
        "rounds_run": summary.rounds_run, "final_accuracy": final_acc, "epsilon": summary.epsilon,
        "delta": summary.delta, "unit_of_privacy": summary.unit, "stopped_by_budget": stopped_by_budget,
        "personalization": None if personalization is None else {
            k: v for k, v in personalization.as_dict().items() if not k.endswith("_acc")},
    }, indent=1) + "\n")
    if summary.epsilon is None:
        log(f"final test accuracy {final_acc:.4f} after {summary.rounds_run} rounds; no differential privacy")
    else:
        log(f"final test accuracy {final_acc:.4f} after {summary.rounds_run} rounds; "
            f"epsilon = {summary.epsilon:.3f} at delta = {summary.delta:g} (unit of privacy: one "
            f"{summary.unit}; accountant: tightest of RDP and PRV)"
            + ("; stopped at the epsilon budget" if stopped_by_budget else ""))
    if personalization is not None:
        p = personalization
        log(f"personalization: mean accuracy global {p.mean_global:.4f} -> personalized {p.mean_personal:.4f}; "
            f"worst 10% {p.worst10_global:.4f} -> {p.worst10_personal:.4f}")
    log(f"outputs in {out}: metrics.jsonl, privacy.json, plots.png, model.pt, config.resolved.toml")
    return summary
