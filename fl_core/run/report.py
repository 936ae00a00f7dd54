"""What a finished run leaves behind: privacy.json (every guarantee with what it rests on),
model.pt, summary.json, report.md and plots.png (``fl_core.run.runreport``), and the final line a
person reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dp.accounting import Accountant, AccountantKind
from dp.events import UnitOfPrivacy

from fl_core.config import DPMode, RunConfig
from fl_core.run import rundir


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


def _reported(rec: dict, tracker, tightest: float) -> None:
    """The one ε of the run: what the budget's accountant says (as every round's line and metrics.jsonl
    say it), with the accountant that produced it; the other accountants stay in the mechanism's entry."""
    if not tracker.accountant.history:
        rec["epsilon"], rec["epsilon_accountant"] = 0.0, tracker.accountant.kind.value
        return
    res = tracker.privacy_spent()
    rec["epsilon"], rec["epsilon_accountant"] = res.epsilon, res.accountant.value
    if res.accountant is not res.requested:
        rec["epsilon_accountant_requested"] = res.requested.value
    if res.note:
        rec["epsilon_note"] = res.note
    rec["epsilon_tightest_of_rdp_and_prv"] = tightest


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
        _reported(rec, privacy.tracker, eps["tightest"])
        rec["delta"], rec["unit_of_privacy"] = dp.delta, "client"
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
        worst_id = max(privacy.per_client, key=privacy.per_client.epsilon_so_far, default=None)
        worst = privacy.per_client.epsilon_so_far(worst_id) if worst_id is not None else 0.0
        rec["mechanisms"].append({
            "name": ("DP-SGD (Abadi et al., CCS 2016) via Opacus, per client" if cfg.local.backend.value == "opacus"
                     else "DP-SGD (Abadi et al., CCS 2016) per client, vectorized over the cohort (fl_core.learn.cohort) "
                     "with Opacus' semantics"),
            "unit_of_privacy": "example",
            "parameters": {"max_grad_norm": dp.l2_clip, "noise_multiplier": privacy.noise_multiplier,
                           "batch_size": cfg.local.batch_size, "local_epochs": cfg.local.epochs,
                           "local_steps": cfg.local.steps, "grad_sample_mode": dp.grad_sample_mode.value,
                           "planned_visits_per_client": privacy.planned_visits},
            "epsilon_worst_client": worst, "worst_client": worst_id, "delta": dp.delta,
            "epsilon_per_client": per,
        })
        if worst_id is not None:
            _reported(rec, privacy.per_client.tracker(worst_id), per[str(worst_id)].get("tightest", worst))
        else:
            rec["epsilon"], rec["epsilon_accountant"] = 0.0, dp.accountant.value
        rec["epsilon_is"] = "the worst client's: each client has its own DP-SGD guarantee"
        rec["delta"], rec["unit_of_privacy"] = dp.delta, "example"
        budget = privacy.per_client.budget.epsilon
        rec["budget_epsilon"] = budget if budget < 1e9 else None
    rec["accountant_used_for_budget"] = dp.accountant.value
    return rec


def write_outputs(cfg, out: Path, *, model, data, metrics, privacy, personalization, stopped_by_budget, log):
    from fl_core.run.loop import RunSummary
    from fl_core.run.runreport import epsilon_line, write_report

    torch.save(model.state_dict(), out / rundir.MODEL)
    rec = privacy_record(cfg, privacy, metrics)
    if personalization is not None:
        rundir.write_json(out / rundir.PERSONALIZATION, personalization.as_dict())
    rundir.write_json(out / rundir.PRIVACY, rec)
    final_acc = metrics[-1]["accuracy"] if metrics else None
    summary = RunSummary(out_dir=out, rounds_run=len(metrics),
                         final_accuracy=final_acc if final_acc is not None else float("nan"),
                         epsilon=rec.get("epsilon"), delta=rec.get("delta"), unit=rec.get("unit_of_privacy"),
                         stopped_by_budget=stopped_by_budget, metrics=metrics)
    rundir.write_json(out / rundir.SUMMARY, {
        "rounds_run": summary.rounds_run, "final_accuracy": final_acc, "epsilon": summary.epsilon,
        "delta": summary.delta, "unit_of_privacy": summary.unit,
        "epsilon_accountant": rec.get("epsilon_accountant"), "stopped_by_budget": stopped_by_budget,
        "personalization": None if personalization is None else {
            k: v for k, v in personalization.as_dict().items() if not k.endswith("_acc") and k != "clients"},
    })
    report = write_report(out)
    acc_txt = "none (no round ran)" if final_acc is None else f"{final_acc:.4f}"
    log(f"final test accuracy {acc_txt} after {summary.rounds_run} rounds; {epsilon_line(rec)}"
        + ("; stopped at the epsilon budget" if stopped_by_budget else ""))
    if personalization is not None:
        p = personalization
        log(f"personalization: mean accuracy global {p.mean_global:.4f} -> personalized {p.mean_personal:.4f}; "
            f"worst 10% (over the {p.clients_counted_in_worst10} clients with >= {p.min_test_examples} test "
            f"examples) {p.worst10_global:.4f} -> {p.worst10_personal:.4f}")
    log(f"outputs in {out}: {report.name} (read this first), {rundir.METRICS}, {rundir.PRIVACY}, {rundir.PLOTS}, "
        f"{rundir.MODEL}, {rundir.CONFIG}")
    return summary
