"""What a finished run leaves behind: privacy.json (every guarantee with what it rests on),
model.pt, summary.json, report.md and plots.png (``fl_core.run.runreport``), and the final line a
person reads."""

from __future__ import annotations

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
                  log, guard_rails: list[dict] | None = None) -> RunSummary:
    from fl_core.run.runreport import epsilon_line, write_report

    torch.save(model.state_dict(), out / rundir.MODEL)
    rec = privacy_record(cfg, privacy, metrics)
    if guard_rails is not None:
        rec["guard_rails"] = guard_rails  # checked at start (fl_core.run.guardrails)
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
