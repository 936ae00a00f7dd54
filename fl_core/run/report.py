"""What a finished run leaves behind: privacy.json (every guarantee with what it rests on),
plots.png, model.pt, summary.json, and the final line a person reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from dp.accounting import Accountant, AccountantKind
from dp.events import UnitOfPrivacy

from fl_core.config import DPMode, RunConfig


def _epsilons(events_owner, delta: float, unit: UnitOfPrivacy) -> dict:
    """ε at δ under both accountants for the composed history of one tracker."""
    history = events_owner.accountant.history
    out = {}
    for kind in (AccountantKind.RDP, AccountantKind.PRV):
        acc = Accountant(kind, unit=unit)
        for event in history:
            acc.compose(event)
        if not history:
            out[kind.value] = 0.0
            continue
        res = acc.get_privacy_spent(delta)
        out[kind.value] = res.epsilon
        if res.note:
            out[f"{kind.value}_note"] = res.note
    out["tightest"] = min(v for k, v in out.items() if k in ("rdp", "prv"))
    return out


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
    if privacy.mode is DPMode.NONE:
        rec["guarantee"] = "none: no differential privacy in this run (secure aggregation only)"
        return rec
    if privacy.mode is DPMode.CLIENT:
        plan = privacy.ddg
        eps = _epsilons(privacy.tracker, dp.delta, UnitOfPrivacy.CLIENT)
        survivors = [m["survivors"] for m in metrics if m["survivors"]]
        rec["secure_aggregation"]["min_survivors"] = plan.config.min_survivors
        rec["mechanisms"].append({
            "name": "distributed discrete Gaussian (Kairouz, Liu, Steinke, ICML 2021)",
            "unit_of_privacy": "client",
            "parameters": {
                "l2_clip": plan.config.l2_clip, "bits": plan.bits, "modulus": plan.modulus,
                "rotation": "randomized Hadamard, public per-round seed", "padded_dim": plan.padded_dim,
                "gamma": plan.gamma, "beta": plan.config.beta, "client_sigma_integer_units": plan.client_sigma,
                "central_noise_std": plan.central_sigma, "l2_sensitivity_integer_units": plan.l2_sensitivity,
                "calibrated_for_survivors": plan.config.min_survivors,
                "client_sampling_rate_accounted": privacy.accounting_rate,
                "sampling": ("Poisson" if cfg.sampling_rate is not None
                             else "fixed-size cohort, accounted without amplification"),
                "releases_charged": sum(e.count for e in privacy.tracker.accountant.history),
            },
            "epsilon": eps, "delta": dp.delta,
            "dropouts": {
                "calibration_assumed_survivors": plan.config.min_survivors,
                "fewest_survivors_seen": min(survivors) if survivors else None,
                "noise_std_at_fewest": plan.noise_std(min(survivors)) if survivors else None,
                "note": "noise per client is calibrated for min_survivors; more survivors only add noise",
            },
        })
        rec["epsilon"], rec["delta"], rec["unit_of_privacy"] = eps["tightest"], dp.delta, "client"
        rec["budget_epsilon"] = privacy.tracker.budget.epsilon if privacy.tracker.budget.epsilon < 1e9 else None
    else:
        per = {}
        # RDP for every client (fast); both accountants for the 3 clients with the largest RDP
        # epsilon, where the worst case lives (PRV takes seconds per history).
        for u in privacy.per_client:
            rdp = privacy.per_client.tracker(u).accountant
            acc = Accountant(AccountantKind.RDP, unit=UnitOfPrivacy.EXAMPLE)
            for event in rdp.history:
                acc.compose(event)
            per[u] = {"rdp": acc.get_epsilon(dp.delta) if rdp.history else 0.0}
        for u in sorted(per, key=lambda k: -per[k]["rdp"])[:3]:
            per[u] = _epsilons(privacy.per_client.tracker(u), dp.delta, UnitOfPrivacy.EXAMPLE)
        per = {str(u): v for u, v in per.items()}
        worst = max((v.get("tightest", v["rdp"]) for v in per.values()), default=0.0)
        rec["mechanisms"].append({
            "name": ("DP-SGD (Abadi et al., CCS 2016) via Opacus, per client" if cfg.local.backend.value == "opacus"
                     else "DP-SGD (Abadi et al., CCS 2016) per client, vectorized over the cohort (fl_core.learn.cohort) "
                     "with Opacus' semantics"),
            "unit_of_privacy": "example",
            "parameters": {"max_grad_norm": dp.l2_clip, "noise_multiplier": privacy.noise_multiplier,
                           "batch_size": cfg.local.batch_size, "local_epochs": cfg.local.epochs,
                           "local_steps": cfg.local.steps, "grad_sample_mode": dp.grad_sample_mode.value,
                           "planned_visits_per_client": privacy.planned_visits},
            "epsilon_worst_client": worst, "delta": dp.delta,
            "epsilon_per_client": per,
        })
        rec["epsilon"], rec["delta"], rec["unit_of_privacy"] = worst, dp.delta, "example"
        budget = privacy.per_client.budget.epsilon
        rec["budget_epsilon"] = budget if budget < 1e9 else None
    rec["accountant_used_for_budget"] = dp.accountant.value
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


def write_outputs(cfg, out: Path, *, model, data, metrics, privacy, personalization, stopped_by_budget, log):
    from fl_core.run.loop import RunSummary

    torch.save(model.state_dict(), out / "model.pt")
    rec = privacy_record(cfg, privacy, metrics)
    if personalization is not None:
        rec_p = personalization.as_dict()
        (out / "personalization.json").write_text(json.dumps(rec_p, indent=1) + "\n")
    (out / "privacy.json").write_text(json.dumps(rec, indent=1, default=float) + "\n")
    if metrics:
        plot(metrics, out / "plots.png")
    final_acc = metrics[-1]["accuracy"] if metrics else float("nan")
    summary = RunSummary(out_dir=out, rounds_run=len(metrics), final_accuracy=final_acc,
                         epsilon=rec.get("epsilon"), delta=rec.get("delta"), unit=rec.get("unit_of_privacy"),
                         stopped_by_budget=stopped_by_budget, metrics=metrics)
    (out / "summary.json").write_text(json.dumps({
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
