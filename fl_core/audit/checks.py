"""`python -m fl_core audit RUN_DIR`: every guarantee of a finished run, and evidence that it held.

Writes ``RUN_DIR/audit.json``, ``RUN_DIR/audit.md`` (verdict and guarantees) and
``RUN_DIR/audit_digests.md`` (the per-message digests; docs/audit.md explains how to read them) and
returns an exit status: 0 when nothing was flagged, 1 when the run is flagged. The statistics are
in ``fl_core.audit.stats``, the markdown in ``fl_core.audit.render``; the server view in
``fl_core.audit.server_view``, the canary estimates in ``fl_core.audit.empirical``.

What is checked:

1. The claim. ``privacy.json`` states each mechanism with its parameters and epsilon; for
   client-level DP the audit composes the releases in ``privacy_ledger.jsonl`` again with both
   accountants and flags a ``privacy.json`` that claims less.
2. The server's view (rounds kept by ``audit.record_rounds``): (c) the bytes kept hash to the
   digests in ``transcript.jsonl``; (a) each masked input is indistinguishable from uniform
   words (two chi-square tests per input, Holm correction over all inputs); (d) no client had
   both its self-mask seed and its mask key revealed; (b) in witness mode
   (``secure_randomness = false``) the audit re-runs the recorded rounds from the seed,
   checks that the re-derived inputs sum to the aggregate the server computed, and tests each
   masked input for correlation with that client's true input (Pearson, Holm).
3. Empirical privacy: client-level canaries (Andrew et al., ICLR 2024) and sample-level canary
   examples (Steinke, Nasr, Jagielski, NeurIPS 2023); see ``fl_core.run.canaries``.

The run is flagged when the server view fails, when the empirical estimate's lower confidence
end exceeds the claimed epsilon, when privacy.json understates the ledger's epsilon, when a round
released a sum over fewer clients than the noise was calibrated for, or when the witness does not
reproduce what the server received.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections import defaultdict
from pathlib import Path

from dp.accounting import Accountant, AccountantKind
from dp.crosscheck import TOLERANCE, recheck
from dp.events import Adjacency, UnitOfPrivacy, event_from_dict
from secagg.errors import SecAggError
from secagg.graph import failure_bounds
from secagg.simulate import ProtocolStage

from fl_core.audit.empirical import client_canaries, example_canaries
from fl_core.audit.render import render_digests, render_markdown, summary_lines
from fl_core.audit.rundata import RunRecords
from fl_core.audit.server_view import server_view, witness_inputs
from fl_core.audit.stats import CONFIDENCE, correlation_p_value, holm, uniformity_p_value
from fl_core.config import DPMode
from fl_core.run import rundir

__all__ = ["audit_run", "write_audit", "render_markdown", "summary_lines", "witness_inputs", "uniformity_p_value",
           "correlation_p_value", "holm", "main"]

# --------------------------------------------------------------------------- guarantees


def _charged(run: RunRecords) -> list[dict]:
    """The ledger's releases as the run charged them: a seeded release re-run after a crash is the
    identical release (charged once), a fresh-noise one is a new release (charged again)."""
    last: dict[int, dict] = {}
    out = []
    for rec in run.ledger:
        if rec.get("noise") == "csprng":
            out.append(rec)
        else:
            last[rec["round"]] = rec
    return out + [last[r] for r in sorted(last)]


def _adjacency(run: RunRecords) -> Adjacency | None:
    mechs = run.privacy.get("mechanisms") or [{}]
    value = mechs[0].get("adjacency")
    return None if value is None else Adjacency(value)


def _compose(events, kind: AccountantKind, unit: UnitOfPrivacy, delta: float,
             adjacency: Adjacency | None = None) -> float:
    acc = Accountant(kind, unit=unit, adjacency=adjacency)
    for ev in events:
        acc.compose(event_from_dict(ev))
    return acc.get_epsilon(delta) if len(acc) else 0.0


def _crosscheck(run: RunRecords, again: dict | None) -> dict | None:
    """The claimed epsilon recomputed by an implementation other than the one that produced it
    (``dp.crosscheck``): the ledger's history of the claim (the worst client at sample level)."""
    claimed = run.privacy.get("epsilon")
    if again is None or claimed is None:
        return None
    mode, delta, adj = run.cfg.dp.mode, run.cfg.dp.delta, _adjacency(run)
    if mode is DPMode.CLIENT:
        unit, raw = UnitOfPrivacy.CLIENT, [rec["event"] for rec in _charged(run) if "event" in rec]
    else:
        unit = UnitOfPrivacy.EXAMPLE
        raw = [ev for rec in _charged(run) for u, ev in rec.get("client_events", {}).items()
               if u == again.get("worst_client")]
    events = [event_from_dict(ev) for ev in raw]
    # the accountant the claim names (what produced it, after any fallback)
    kind = AccountantKind(run.privacy.get("epsilon_accountant_requested") or run.privacy.get("epsilon_accountant")
                          or run.cfg.dp.accountant.value)
    acc = Accountant(kind, unit=unit, adjacency=adj)
    for ev in events:
        acc.compose(ev)
    best = acc.get_privacy_spent(delta)
    check = recheck(events, delta, claimed=claimed, produced_by=best.accountant, unit=unit, adjacency=adj,
                    exact="exact" in (best.note or ""))
    out = check.as_dict()
    out["produced_by"] = best.accountant.value
    return out


def _reaccount(run: RunRecords) -> dict | None:
    """Compose the releases in ``privacy_ledger.jsonl`` again with both accountants.

    Client level: the round events. Sample level: each client's DP-SGD events; RDP for every
    client, PRV for the worst by RDP and the worst claimed (so ``tightest`` is a value some client
    really reaches: the claim must not be below it)."""
    mode, delta = run.cfg.dp.mode, run.cfg.dp.delta
    charged = _charged(run)
    if mode is DPMode.CLIENT and charged:
        events = [rec["event"] for rec in charged if "event" in rec]
        adj = _adjacency(run)
        out = {k.value: _compose(events, k, UnitOfPrivacy.CLIENT, delta, adj) for k in AccountantKind}
        out.update(tightest=min(out.values()), releases=len(events))
        return out
    if mode is DPMode.SAMPLE and charged:
        per: dict[str, list] = defaultdict(list)
        for rec in charged:
            for u, ev in rec.get("client_events", {}).items():
                per[u].append(ev)
        if not per:
            return None
        adj = _adjacency(run)
        rdp = {u: _compose(evs, AccountantKind.RDP, UnitOfPrivacy.EXAMPLE, delta, adj) for u, evs in per.items()}
        claimed = run.privacy["mechanisms"][0].get("epsilon_per_client", {})
        picks = {max(rdp, key=rdp.get)} | ({max(claimed, key=lambda u: claimed[u]["tightest"])} & set(per)
                                           if claimed else set())
        tight = {u: min(rdp[u], *(_compose(per[u], k, UnitOfPrivacy.EXAMPLE, delta, adj)
                                   for k in (AccountantKind.PRV, AccountantKind.PLD))) for u in picks}
        worst = max(tight, key=tight.get)
        return {"rdp": max(rdp.values()), "prv": None, "tightest": tight[worst], "worst_client": worst,
                "releases": len(charged), "clients": len(per)}
    return None


def _dropouts(run: RunRecords) -> dict:
    rows = [run.metrics[r] for r in sorted(run.metrics)]
    sa = run.privacy.get("secure_aggregation", {})
    calibrated = sa.get("min_survivors")
    per_round = [{"round": m["round"], "sampled": m["sampled"], "canaries": m.get("canaries", 0),
                  "survivors": m["survivors"], "aborted": m.get("aborted")} for m in rows]
    out = {"per_round": per_round, "calibrated_for_survivors": calibrated}
    released = [m["survivors"] for m in rows if not m.get("aborted") and m["survivors"]]
    out["fewest_survivors"] = min(released) if released else None
    out["aborted_rounds"] = [m["round"] for m in rows if m.get("aborted")]
    if run.cfg.dp.mode is DPMode.CLIENT and calibrated:
        mech = run.privacy["mechanisms"][0]["parameters"]
        central = mech["central_noise_std"]
        out["target_noise_std"] = central
        out["noise_std_at_fewest"] = central * math.sqrt(out["fewest_survivors"] / calibrated) if released else None
        out["below_calibration"] = [m["round"] for m in rows
                                    if not m.get("aborted") and 0 < m["survivors"] < calibrated]
        out["note"] = ("each client's noise share is calibrated so that any sum over at least min_survivors clients "
                       "carries the target noise; secure aggregation aborts below that, so dropouts only add noise")
    elif run.cfg.dp.mode is DPMode.SAMPLE:
        out["below_calibration"] = []
        out["note"] = "DP-SGD noise is added by each client locally: dropouts do not change it"
    else:
        out["below_calibration"] = []
        out["note"] = "no differential privacy in this run"
    return out


def _secagg(run: RunRecords) -> dict:
    from fl_core.secure.round import SecureRoundSpec, rule_dropout

    cfg = run.cfg
    sa = run.privacy.get("secure_aggregation", {})
    drop = cfg.secagg.dropout
    spec = SecureRoundSpec(enabled=True, graph=None, bits=cfg.secagg.bits, min_survivors=2,
                           dropout={s: getattr(drop, s.name.lower()) for s in ProtocolStage})
    seen = {}
    for m in run.metrics.values():
        if m.get("k") is None or m.get("aborted"):
            continue
        n = m["sampled"] + m.get("canaries", 0)
        key = (n, m["k"], m["threshold"])
        if key in seen:
            seen[key]["rounds"].append(m["round"])
            continue
        row = {"n": n, "k": m["k"], "t": m["threshold"], "graph": "complete" if m["k"] >= n - 1 else "sparse",
               "rounds": [m["round"]], "dropout_assumed": rule_dropout(n, spec), "corrupt_assumed": cfg.secagg.corrupt}
        try:
            fb = failure_bounds(n, k=m["k"], t=m["threshold"], dropout=row["dropout_assumed"],
                                corrupt=cfg.secagg.corrupt)
            row.update(security_log2=fb.security_log2, correctness_log2=fb.correctness_log2)
        except SecAggError as e:
            row["bounds_error"] = str(e)
        seen[key] = row
    return {
        "enabled": cfg.secagg.enabled, "mode": sa.get("mode", "semi-honest"), "bits": sa.get("bits"),
        "modulus": 2 ** sa["bits"] if sa.get("bits") else None, "min_survivors": sa.get("min_survivors"),
        "tolerated_corrupt_fraction": cfg.secagg.corrupt, "graph": cfg.secagg.graph.value,
        "rounds": sorted(seen.values(), key=lambda row: row["rounds"][0]),
        "statistical_security_target_log2": -40, "correctness_target_log2": -30,
    }


# --------------------------------------------------------------------------- the audit


def _round_digest(messages) -> str:
    h = hashlib.sha256()
    for s, u, d in messages:
        h.update(f"{s}|{u}|{d}\n".encode())
    return h.hexdigest()


def audit_run(run_dir, *, use_witness: bool = True, log=print) -> dict:
    """Audit the finished run in ``run_dir``; returns the report that ``write_audit`` saves."""
    run = RunRecords(Path(run_dir))
    cfg, priv = run.cfg, run.privacy
    delta = priv.get("delta", cfg.dp.delta)
    claimed = priv.get("epsilon")
    reasons: list[str] = []
    report: dict = {"run_dir": str(run.dir), "mode": cfg.dp.mode.value, "theoretical_epsilon": claimed,
                    "empirical_epsilon": None, "delta": delta if claimed is not None else cfg.dp.delta,
                    "unit_of_privacy": priv.get("unit_of_privacy"), "rounds_run": priv.get("rounds_run"),
                    "noise_source": priv.get("noise_source"), "mechanisms": priv.get("mechanisms", []),
                    "budget_epsilon": priv.get("budget_epsilon"), "epsilon_accountant": priv.get("epsilon_accountant"),
                    "adjacency": priv.get("adjacency"), "adjacency_means": priv.get("adjacency_means")}
    lc = cfg.local
    report["run_parameters"] = {
        "rounds_planned": cfg.rounds, "num_clients": cfg.data.num_clients,
        "clients_per_round": cfg.clients_per_round, "client_sampling_rate": cfg.sampling_rate,
        "local_epochs": lc.epochs, "local_steps": lc.steps, "batch_size": lc.batch_size, "local_lr": lc.lr,
        "server_optimizer": cfg.server.optimizer.value, "accountant_for_budget": cfg.dp.accountant.value,
        "secure_randomness": cfg.secure_randomness, "seed": cfg.seed}
    for mech in report["mechanisms"]:
        p = mech["parameters"]
        if "central_noise_std" in p:  # the DDG's noise multiplier: central noise std over the clip norm
            p.setdefault("noise_multiplier", p["central_noise_std"] / p["l2_clip"])
    again = _reaccount(run)
    report["ledger_epsilon"] = again
    if again is not None and claimed is not None and again["tightest"] > claimed * (1 + 1e-6) + 1e-9:
        reasons.append(f"privacy.json claims epsilon {claimed:.4g}, but the ledger's {again['releases']} releases "
                       f"compose to {again['tightest']:.4g}")
    cross = _crosscheck(run, again)
    report["epsilon_crosscheck"] = cross
    if cross is not None and cross["ok"] is False:
        reasons.append(f"the claimed epsilon {claimed:.4g} ({cross['produced_by']}) and its recomputation by "
                       f"{cross['implementation']} ({cross['recomputed']:.4g}) differ by "
                       f"{cross['relative_difference']:.2%}, more than {TOLERANCE:.0%}")
    report["dropouts"] = _dropouts(run)
    if report["dropouts"]["below_calibration"]:
        reasons.append(f"rounds {report['dropouts']['below_calibration']} released a sum over fewer clients than the "
                       "noise was calibrated for")
    report["secure_aggregation"] = _secagg(run)
    view = server_view(run, use_witness=use_witness, log=log)
    report["server_view"] = view
    report["server_view_ok"] = bool(view["ok"])
    if not view["ok"]:
        failed = [k for k, c in view["checks"].items() if c.get("ok") is False] or ["nothing recorded"]
        reasons.append(f"server-view check failed: {', '.join(failed)}")
    if view.get("witness", {}).get("ok") is False:
        reasons.append("the run cannot be re-derived from its seed and config: it did not run as recorded")
    emp = {"client_canaries": client_canaries(run, delta), "example_canaries": example_canaries(run, delta)}
    report["empirical"] = emp
    if emp["client_canaries"] is not None:
        est = emp["client_canaries"]["final_model"]
        report["empirical_epsilon"] = est["epsilon"]
        if claimed is not None and est["epsilon_low"] > claimed:
            reasons.append(f"canary estimate {est['epsilon']:.3g} (low end of its {CONFIDENCE:.0%} interval "
                           f"{est['epsilon_low']:.3g}) exceeds the claimed epsilon {claimed:.3g}")
    if emp["example_canaries"] is not None:
        lb = emp["example_canaries"]["epsilon_lower_bound"]
        report["empirical_epsilon"] = max(lb, report["empirical_epsilon"] or 0.0)
        if claimed is not None and lb > claimed:
            reasons.append(f"one-run lower bound {lb:.3g} (confidence {CONFIDENCE:.0%}) exceeds the claimed epsilon "
                           f"{claimed:.3g}")
    report["transcript"] = [{"round": r, "messages": len(ms), "round_digest": _round_digest(ms),
                             "digests": [list(m) for m in ms]} for r, ms in sorted(run.transcript.items())]
    report["flagged"] = bool(reasons)
    report["reasons"] = reasons
    return report


def write_audit(run_dir, report: dict) -> None:
    """audit.json (strict JSON), audit.md (verdict and guarantees) and audit_digests.md."""
    run_dir = Path(run_dir)
    rundir.write_json(run_dir / rundir.AUDIT_JSON, report)
    (run_dir / rundir.AUDIT_MD).write_text(render_markdown(report))
    (run_dir / rundir.AUDIT_DIGESTS).write_text(render_digests(report))


def main(args: argparse.Namespace) -> int:
    """Run the audit for the parsed ``audit`` subcommand; 1 when flagged."""
    rep = audit_run(args.run_dir, use_witness=not args.no_witness, log=lambda m: print(m, file=sys.stderr))
    write_audit(args.run_dir, rep)
    print("\n".join(summary_lines(rep)))
    return 1 if rep["flagged"] else 0
