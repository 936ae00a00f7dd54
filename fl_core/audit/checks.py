"""`python -m fl_core audit RUN_DIR`: every guarantee of a finished run, and evidence that it held.

Writes ``RUN_DIR/audit.json``, ``RUN_DIR/audit.md`` (verdict and guarantees) and
``RUN_DIR/audit_digests.md`` (the per-message digests; docs/audit.md explains how to read them) and
returns an exit status: 0 when nothing was flagged, 1 when the run is flagged. The statistics are
in ``fl_core.audit.stats``, the markdown in ``fl_core.audit.render``.

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
import json
import math
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from dp.accounting import Accountant, AccountantKind
from dp.events import UnitOfPrivacy, event_from_dict
from secagg import wire
from secagg.errors import DecodeError, SecAggError
from secagg.graph import failure_bounds
from secagg.messages import MaskedInput, ShareKind, UnmaskResponse
from secagg.simulate import ProtocolStage

from dp.empirical import gaussian_fit_estimate, one_run_audit
from fl_core.audit.render import render_digests, render_markdown, summary_lines
from fl_core.audit.stats import ALPHA, CONFIDENCE, correlation_p_value, holm, uniformity_p_value
from fl_core.run.canaries import AUDIT_DIR, META, ClientCanaries, ExampleCanaries, read_messages, read_trajectory
from fl_core.config import DPMode, RunConfig, load_config
from fl_core.errors import FLError
from fl_core.run import rundir

__all__ = ["audit_run", "write_audit", "render_markdown", "summary_lines", "witness_inputs", "uniformity_p_value",
           "correlation_p_value", "holm", "main"]

# --------------------------------------------------------------------------- the run directory


class _Run:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        for name in (rundir.CONFIG, rundir.PRIVACY, rundir.METRICS):
            if not (self.dir / name).exists():
                raise FLError(f"{self.dir} is not a finished run directory: {name} is missing")
        self.cfg: RunConfig = load_config(self.dir / rundir.CONFIG, check_files=False)
        self.privacy = json.loads((self.dir / rundir.PRIVACY).read_text())
        self.metrics = {m["round"]: m for m in rundir.read_jsonl(self.dir / rundir.METRICS)}
        self.transcript = {t["round"]: [tuple(x) for x in t["messages"]] for t in rundir.read_jsonl(self.dir / rundir.TRANSCRIPT)}
        self.ledger = rundir.read_jsonl(self.dir / rundir.LEDGER)
        meta_path = self.dir / AUDIT_DIR / META
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else None


# --------------------------------------------------------------------------- guarantees


def _charged(run: _Run) -> list[dict]:
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


def _compose(events, kind: AccountantKind, unit: UnitOfPrivacy, delta: float) -> float:
    acc = Accountant(kind, unit=unit)
    for ev in events:
        acc.compose(event_from_dict(ev))
    return acc.get_epsilon(delta) if len(acc) else 0.0


def _reaccount(run: _Run) -> dict | None:
    """Compose the releases in ``privacy_ledger.jsonl`` again with both accountants.

    Client level: the round events. Sample level: each client's DP-SGD events; RDP for every
    client, PRV for the worst by RDP and the worst claimed (so ``tightest`` is a value some client
    really reaches: the claim must not be below it)."""
    mode, delta = run.cfg.dp.mode, run.cfg.dp.delta
    charged = _charged(run)
    if mode is DPMode.CLIENT and charged:
        events = [rec["event"] for rec in charged if "event" in rec]
        out = {k.value: _compose(events, k, UnitOfPrivacy.CLIENT, delta) for k in AccountantKind}
        out.update(tightest=min(out["rdp"], out["prv"]), releases=len(events))
        return out
    if mode is DPMode.SAMPLE and charged:
        per: dict[str, list] = defaultdict(list)
        for rec in charged:
            for u, ev in rec.get("client_events", {}).items():
                per[u].append(ev)
        if not per:
            return None
        rdp = {u: _compose(evs, AccountantKind.RDP, UnitOfPrivacy.EXAMPLE, delta) for u, evs in per.items()}
        claimed = run.privacy["mechanisms"][0].get("epsilon_per_client", {})
        picks = {max(rdp, key=rdp.get)} | ({max(claimed, key=lambda u: claimed[u]["tightest"])} & set(per)
                                           if claimed else set())
        tight = {u: min(rdp[u], _compose(per[u], AccountantKind.PRV, UnitOfPrivacy.EXAMPLE, delta)) for u in picks}
        worst = max(tight, key=tight.get)
        return {"rdp": max(rdp.values()), "prv": None, "tightest": tight[worst], "worst_client": worst,
                "releases": len(charged), "clients": len(per)}
    return None


def _dropouts(run: _Run) -> dict:
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


def _secagg(run: _Run) -> dict:
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


# --------------------------------------------------------------------------- server view


def witness_inputs(run_dir, rounds: list[int], *, log=print) -> dict | str:
    """The encoded, unmasked input of every client in ``rounds`` (0-based) of a witness-mode run,
    re-derived by running it again from its seed: ``{round: {client: words}}``, or why not."""
    return _witness(_Run(Path(run_dir)), rounds, log)


def _witness(run: _Run, rounds: list[int], log) -> dict | str:
    """Re-run the first rounds from the seed and capture each client's encoded input before
    masking: ``{round: {client: words}}``, or why it cannot be done."""
    from fl_core.run.loop import run as run_fl
    from fl_core.run.observer import StopRun, Witness

    if run.cfg.secure_randomness:
        return "secure_randomness = true: the clients' inputs cannot be re-derived (no witness)"
    witness = Witness(max(rounds))
    captured = witness.inputs
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run_fl(run.cfg, tmp, progress=False, log=lambda m: None, observer=witness)
        except StopRun:
            pass
        except (SecAggError, OSError, RuntimeError) as e:
            return f"the re-run failed: {e}"
    log(f"witness: re-derived the inputs of round(s) {[r + 1 for r in rounds]} from the seed")
    return captured


def _server_view(run: _Run, *, use_witness: bool, log) -> dict:
    recorded = sorted(run.meta["recorded_rounds"]) if run.meta else []
    out: dict = {"recorded_rounds": [r + 1 for r in recorded], "alpha": ALPHA, "checks": {}, "rounds": []}
    if not recorded:
        out["ok"] = False
        out["why"] = ("no round's messages were kept (audit.record_rounds = 0, or every recorded round aborted): "
                      "nothing to check")
        return out
    witness = _witness(run, recorded, log) if use_witness else "disabled (--no-witness)"
    bits_of = {}
    uni_p, uni_where, cor_p, cor_where = [], [], [], []
    digests_ok, reveal_ok, witness_ok, malformed = True, True, None, 0
    for r in recorded:
        msgs = read_messages(run.dir / AUDIT_DIR / f"round_{r + 1:04d}.msgs")
        mine = [(s, u, hashlib.sha256(b).hexdigest()) for s, u, b in msgs]
        logged = [tuple(x) for x in run.transcript.get(r + 1, [])]
        match = mine == logged
        digests_ok &= match
        row = {"round": r + 1, "messages": len(msgs), "digests_match_transcript": match}
        masked: dict[int, MaskedInput] = {}
        revealed: dict[int, set[int]] = defaultdict(set)
        for s, u, b in msgs:
            try:
                msg = wire.decode(b)
            except DecodeError:
                malformed += 1
                continue
            if isinstance(msg, MaskedInput):
                masked[u] = msg
            elif isinstance(msg, UnmaskResponse):
                for sh in msg.shares:
                    revealed[sh.owner].add(int(sh.kind))
        both = sorted(v for v, kinds in revealed.items() if {ShareKind.SELF_MASK, ShareKind.MASK_KEY} <= kinds)
        wrong_kind = sorted(v for v, kinds in revealed.items()  # survivors: b (and excess noise seed) shares;
                            if (ShareKind.MASK_KEY in kinds and v in masked)  # dropped: only key shares
                            or (kinds & {ShareKind.SELF_MASK, ShareKind.NOISE_SEED} and v not in masked))
        row["clients_with_both_secrets_revealed"] = both
        row["clients_with_wrong_secret_revealed"] = wrong_kind
        reveal_ok &= not both and not wrong_kind
        for u, msg in sorted(masked.items()):
            bits_of[r] = msg.bits
            p, bins = uniformity_p_value(msg.words, msg.bits)
            uni_p.append(p)
            uni_where.append((r + 1, u))
            row["bins"] = bins
        row["masked_inputs"] = len(masked)
        if isinstance(witness, dict) and r in witness and masked:
            truth = witness[r]
            bits = bits_of[r]
            total = np.zeros(len(next(iter(masked.values())).words), dtype=np.uint64)
            for u in masked:
                total += truth[u].astype(np.uint64) if u in truth else np.uint64(0)
            total &= np.uint64((1 << bits) - 1)
            agg_path = run.dir / AUDIT_DIR / f"round_{r + 1:04d}.aggregate.npy"
            agg = np.load(agg_path).astype(np.uint64) if agg_path.exists() else None
            same = agg is not None and all(u in truth for u in masked) and np.array_equal(total, agg)
            row["witness_reproduces_aggregate"] = bool(same)
            witness_ok = same if witness_ok is None else (witness_ok and same)
            if same:
                for u, msg in sorted(masked.items()):
                    rr, p = correlation_p_value(truth[u], msg.words, msg.bits)
                    cor_p.append(p)
                    cor_where.append((r + 1, u, rr))
        out["rounds"].append(row)
    uni_reject = holm(uni_p) if uni_p else []
    cor_reject = holm(cor_p) if cor_p else []
    checks = out["checks"]
    checks["digests"] = {"ok": digests_ok, "test": "SHA-256 of every kept message equals its transcript.jsonl entry"}
    checks["well_formed"] = {"ok": malformed == 0, "malformed": malformed,
                             "test": "every kept message decodes under the wire format (docs/protocol.md)"}
    checks["uniformity"] = {
        "ok": bool(uni_p) and not any(uni_reject), "inputs_tested": len(uni_p),
        "rejected": [{"round": w[0], "client": w[1], "p": p} for w, p, rej in zip(uni_where, uni_p, uni_reject) if rej],
        "min_p": min(uni_p) if uni_p else None,
        "test": ("Pearson chi-square on the top and on the bottom bits of each masked input's words "
                 "(Bonferroni over the two), Holm over all inputs at family-wise alpha"),
    }
    checks["no_double_reveal"] = {"ok": reveal_ok, "test": ("no client had shares of both its self-mask seed and "
                                  "its mask key revealed; survivors only b-shares (and, when excess, noise-seed "
                                  "shares), dropped clients only key shares")}
    if isinstance(witness, dict):
        out["witness"] = {"ok": bool(witness_ok), "test": ("re-running the recorded rounds from the seed gives "
                          "inputs whose sum mod 2^bits is the aggregate the server unmasked")}
    if isinstance(witness, dict) and witness_ok:
        checks["independence"] = {
            "ok": not any(cor_reject), "inputs_tested": len(cor_p),
            "rejected": [{"round": w[0], "client": w[1], "r": w[2], "p": p}
                         for w, p, rej in zip(cor_where, cor_p, cor_reject) if rej],
            "max_abs_r": max((abs(w[2]) for w in cor_where), default=None),
            "min_p": min(cor_p) if cor_p else None,
            "test": ("Pearson correlation of each masked input with the client's true input (centered integers), "
                     "t test, Holm over all inputs at family-wise alpha"),
        }
    else:
        why = witness if not isinstance(witness, dict) else "the witness did not reproduce the aggregate"
        checks["independence"] = {"ok": None, "why": why}
    out["ok"] = all(c["ok"] for c in checks.values() if c.get("ok") is not None)
    return out


# --------------------------------------------------------------------------- empirical privacy


def _cosines(directions: np.ndarray, delta: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(delta)
    return directions @ delta / norm if norm > 0 else np.zeros(len(directions))


def _client_canaries(run: _Run, delta: float) -> dict | None:
    info = (run.meta or {}).get("client_canaries")
    if not info:
        return None
    c = ClientCanaries(seed=bytes.fromhex(run.meta["canary_seed"]), dim=info["dim"], inserted=info["inserted"],
                       null=info["null"], l2_clip=info["l2_clip"], first_id=info["first_id"], rate=info["rate"],
                       per_round=info["per_round"])
    traj = read_trajectory(run.dir, c.dim).astype(np.float64)
    inserted = np.arange(c.inserted)
    null = np.arange(c.inserted, c.inserted + c.null)
    steps = np.diff(traj, axis=0)
    live = np.flatnonzero(np.linalg.norm(steps, axis=1) > 0)  # aborted rounds left the model unchanged
    final, per_round = np.empty(c.inserted + c.null), np.empty(c.inserted + c.null)
    for start in range(0, c.inserted + c.null, 64):  # 64 directions at a time: memory O(64 d)
        js = np.arange(start, min(start + 64, c.inserted + c.null))
        dirs = c.directions(js)
        final[js] = _cosines(dirs, traj[-1] - traj[0])
        per_round[js] = np.max([_cosines(dirs, steps[t]) for t in live], axis=0) if len(live) else 0.0
    est = gaussian_fit_estimate(final[inserted], final[null], delta=delta, confidence=CONFIDENCE)
    # the exact null: (cos + 1) / 2 ~ Beta((d-1)/2, (d-1)/2) for a uniform direction
    a = (c.dim - 1) / 2
    ks = stats.kstest((final[null] + 1) / 2, stats.beta(a, a).cdf)
    per_round_est = None
    if len(live):
        per_round_est = gaussian_fit_estimate(per_round[inserted], per_round[null], delta=delta,
                                              confidence=CONFIDENCE).as_dict()
    participation = np.zeros(c.inserted, dtype=int)
    for js in run.meta.get("canary_schedule", {}).values():
        participation[np.asarray(js, dtype=int)] += 1
    return {
        "method": "Andrew et al., ICLR 2024 (arXiv:2302.03098): cosine of the final model delta with each canary",
        "inserted": c.inserted, "null": c.null, "dim": c.dim, "rounds": int(len(traj) - 1),
        "participation_mean": float(participation.mean()) if c.inserted else 0.0,
        "participation_min": int(participation.min()) if c.inserted else 0,
        "final_model": est.as_dict(),
        "per_round_max": per_round_est,
        "null_vs_exact_cosine_distribution": {"ks_statistic": float(ks.statistic), "p": float(ks.pvalue)},
    }


def _example_canaries(run: _Run, delta: float) -> dict | None:
    info = (run.meta or {}).get("example_canaries")
    if not info:
        return None
    from fl_core.learn.data import as_tensors
    from fl_core.learn.params import vector_to_model
    from fl_core.run.setup import build_data_and_model

    cfg = run.cfg
    data, model = build_data_and_model(cfg, None)
    canaries = ExampleCanaries(seed=bytes.fromhex(run.meta["canary_seed"]), count=info["count"],
                               num_clients=info["num_clients"])
    trains = [as_tensors(c.train) for c in data.clients]
    lo, hi = min(float(t[0].min()) for t in trains), max(float(t[0].max()) for t in trains)
    x, y = canaries.examples(data.input_shape, data.num_classes, lo, hi)
    personal = tuple(cfg.personalize.personal_layers)
    traj = read_trajectory(run.dir, run.meta["dim"])

    def losses(params: np.ndarray) -> np.ndarray:
        vector_to_model(params, model, exclude=personal)
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), y, reduction="none").numpy()

    scores = losses(traj[0]) - losses(traj[-1])  # how much training lowered each canary's loss
    res = one_run_audit(scores, canaries.included(), delta=delta, confidence=CONFIDENCE)
    out = res.as_dict()
    out["method"] = ("Steinke, Nasr, Jagielski, NeurIPS 2023 (arXiv:2305.08846), Theorem 3; score = loss drop "
                     "of each canary example from the initial to the final model")
    return out


# --------------------------------------------------------------------------- the audit


def _round_digest(messages) -> str:
    h = hashlib.sha256()
    for s, u, d in messages:
        h.update(f"{s}|{u}|{d}\n".encode())
    return h.hexdigest()


def audit_run(run_dir, *, use_witness: bool = True, log=print) -> dict:
    """Audit the finished run in ``run_dir``; returns the report that ``write_audit`` saves."""
    run = _Run(Path(run_dir))
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
    report["dropouts"] = _dropouts(run)
    if report["dropouts"]["below_calibration"]:
        reasons.append(f"rounds {report['dropouts']['below_calibration']} released a sum over fewer clients than the "
                       "noise was calibrated for")
    report["secure_aggregation"] = _secagg(run)
    view = _server_view(run, use_witness=use_witness, log=log)
    report["server_view"] = view
    report["server_view_ok"] = bool(view["ok"])
    if not view["ok"]:
        failed = [k for k, c in view["checks"].items() if c.get("ok") is False] or ["nothing recorded"]
        reasons.append(f"server-view check failed: {', '.join(failed)}")
    if view.get("witness", {}).get("ok") is False:
        reasons.append("the run cannot be re-derived from its seed and config: it did not run as recorded")
    emp = {"client_canaries": _client_canaries(run, delta), "example_canaries": _example_canaries(run, delta)}
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
