"""`python -m fl_core audit RUN_DIR`: every guarantee of a finished run, and evidence that it held.

Writes ``RUN_DIR/audit.json`` and ``RUN_DIR/audit.md`` (docs/audit.md explains how to read them)
and returns an exit status: 0 when nothing was flagged, 1 when the run is flagged.

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
from fl_core.run.canaries import AUDIT_DIR, META, ClientCanaries, ExampleCanaries, read_messages, read_trajectory
from fl_core.config import DPMode, RunConfig, load_config
from fl_core.errors import FLError

__all__ = ["audit_run", "write_audit", "render_markdown", "summary_lines", "witness_inputs", "uniformity_p_value",
           "correlation_p_value", "holm", "main"]

ALPHA = 1e-3          # family-wise false-alarm rate of each server-view test family
CONFIDENCE = 0.95     # of the empirical epsilon intervals and the one-run lower bound


# --------------------------------------------------------------------------- statistics


def uniformity_p_value(words: np.ndarray, bits: int) -> tuple[float, int]:
    """p-value that ``words`` are i.i.d. uniform on [0, 2^bits), and the bins per test.

    Two Pearson chi-square tests over B = 2^b equal bins, one on the top b bits of each word and
    one on the bottom b bits (a mask that leaves either end unmasked fails one of them); b is the
    largest value <= min(8, bits) leaving at least 5 words per bin. Combined by Bonferroni:
    p = min(1, 2 min(p_top, p_bottom)).
    """
    w = np.asarray(words, dtype=np.uint64)
    d = w.size
    b = int(min(8, bits, max(1, math.floor(math.log2(max(d / 5, 2))))))
    bins = 1 << b
    top = (w >> np.uint64(bits - b)) & np.uint64(bins - 1)
    low = w & np.uint64(bins - 1)
    ps = [stats.chisquare(np.bincount(x.astype(np.int64), minlength=bins)).pvalue for x in (top, low)]
    return float(min(1.0, 2 * min(ps))), bins


def _centered(words: np.ndarray, bits: int) -> np.ndarray:
    v = np.asarray(words, dtype=np.uint64).astype(np.float64)
    half = float(1 << (bits - 1))
    return np.where(v >= half, v - 2 * half, v)


def correlation_p_value(true_words: np.ndarray, masked_words: np.ndarray, bits: int) -> tuple[float, float]:
    """(Pearson r, two-sided p) between a client's true and masked words, both read as centered
    integers mod 2^bits. If the masked words are uniform and independent of the true ones, r
    has mean 0 and t = r sqrt((d-2)/(1-r^2)) is close to Student t with d-2 degrees of freedom.
    A constant true input has no correlation to test: (0, 1)."""
    x, y = _centered(true_words, bits), _centered(masked_words, bits)
    if x.std() == 0 or y.std() == 0:  # nothing varies: only an exact copy is evidence
        return (1.0, 0.0) if np.array_equal(x, y) else (0.0, 1.0)
    r = float(np.corrcoef(x, y)[0, 1])
    d = x.size
    if abs(r) >= 1.0:
        return r, 0.0
    t = r * math.sqrt((d - 2) / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), d - 2))


def holm(p_values, alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    reject = np.zeros(p.size, dtype=bool)
    for rank, i in enumerate(order):
        if p[i] > alpha / (p.size - rank):
            break
        reject[i] = True
    return reject.tolist()


# --------------------------------------------------------------------------- the run directory


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return out


class _Run:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        for name in ("config.resolved.toml", "privacy.json", "metrics.jsonl"):
            if not (self.dir / name).exists():
                raise FLError(f"{self.dir} is not a finished run directory: {name} is missing")
        self.cfg: RunConfig = load_config(self.dir / "config.resolved.toml", check_files=False)
        self.privacy = json.loads((self.dir / "privacy.json").read_text())
        self.metrics = {m["round"]: m for m in _jsonl(self.dir / "metrics.jsonl")}
        self.transcript = {t["round"]: [tuple(x) for x in t["messages"]] for t in _jsonl(self.dir / "transcript.jsonl")}
        self.ledger = _jsonl(self.dir / "privacy_ledger.jsonl")
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
                    "budget_epsilon": priv.get("budget_epsilon")}
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
    run_dir = Path(run_dir)
    (run_dir / "audit.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    (run_dir / "audit.md").write_text(render_markdown(report))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


# --------------------------------------------------------------------------- markdown


def _f(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{digits}g}"
    return str(x)


def _guarantee_lines(rep: dict) -> list[str]:
    out = []
    for mech in rep["mechanisms"]:
        unit = mech["unit_of_privacy"]
        eps = mech.get("epsilon") if isinstance(mech.get("epsilon"), dict) else None
        worst = mech.get("epsilon_worst_client")
        out.append(f"### {mech['name']}\n")
        if unit == "client":
            out.append(f"**Guarantee.** ({_f(eps['tightest'])}, {_f(mech['delta'])})-differential privacy for each "
                       "client: any two runs whose inputs differ by adding or removing *all* the data of one client "
                       f"produce every released aggregate (all {mech['parameters']['releases_charged']} releases, "
                       "hence the model) with probabilities within a factor e^epsilon, up to delta. The adversary "
                       "may be the server and every other client; the clients' noise shares and secure aggregation "
                       "are trusted to run as specified.\n")
            out.append("| accountant | epsilon |\n|---|---|")
            out.append(f"| RDP (KLS 2021 Prop. 14; Balle et al. 2020 conversion) | {_f(eps.get('rdp'))} |")
            out.append(f"| PRV | {_f(eps.get('prv'))}{' (' + eps['prv_note'] + ')' if eps.get('prv_note') else ''} |")
            out.append(f"| tightest (the claim) | {_f(eps['tightest'])} |\n")
        else:
            out.append(f"**Guarantee.** ({_f(worst)}, {_f(mech['delta'])})-differential privacy for each training "
                       "example: adding or removing one example of any one client changes the distribution of "
                       "everything that client sends (hence of the model) by at most e^epsilon, up to delta. "
                       "Epsilon is composed per client over the steps it trained; the claim is the worst client's. "
                       "Each client's DP-SGD noise is its own: it holds even against the server.\n")
            per = mech.get("epsilon_per_client", {})
            if per:
                vals = [v["tightest"] for v in per.values()]
                worst_id = max(per, key=lambda u: per[u]["tightest"])
                w = per[worst_id]
                out.append(f"Per-client epsilon (tightest of RDP and PRV): min {_f(min(vals))}, median "
                           f"{_f(float(np.median(vals)))}, max {_f(max(vals))} over {len(vals)} clients; the worst "
                           f"(client {worst_id}): RDP {_f(w.get('rdp'))}, PRV {_f(w.get('prv'))}. Each step samples "
                           "a client's examples at rate 1 / ceil(n / batch_size) (Opacus' rule).\n")
        out.append("| parameter | value |\n|---|---|")
        for k, v in mech["parameters"].items():
            out.append(f"| {k} | {_f(v)} |")
        out.append("")
    return out


def render_markdown(rep: dict) -> str:
    L: list[str] = []
    verdict = "FLAGGED" if rep["flagged"] else "not flagged"
    L.append(f"# Privacy audit of `{rep['run_dir']}`\n")
    L.append(f"**Verdict: {verdict}.**" + ("" if not rep["reasons"] else " Reasons:"))
    for r in rep["reasons"]:
        L.append(f"- {r}")
    L.append("")
    L.append("| | value |\n|---|---|")
    L.append(f"| DP mode / unit of privacy | {rep['mode']} / {_f(rep['unit_of_privacy'])} |")
    L.append(f"| theoretical epsilon (claimed) | {_f(rep['theoretical_epsilon'])} |")
    L.append(f"| delta | {_f(rep['delta'])} |")
    L.append(f"| empirical epsilon (estimate or lower bound) | {_f(rep['empirical_epsilon'])} |")
    L.append(f"| server view ok | {rep['server_view_ok']} |")
    L.append(f"| rounds run | {_f(rep['rounds_run'])} |")
    L.append(f"| noise source | {_f(rep['noise_source'])} |\n")
    L.append("An empirical epsilon is measured evidence, not a guarantee: a low value does not prove privacy "
             "(the canaries may be weak attacks), a value above the claim (beyond its confidence interval) "
             "means the run leaked more than it promised. See docs/audit.md.\n")

    L.append("## 1. Guarantees\n")
    if not rep["mechanisms"]:
        L.append("No differential privacy in this run: secure aggregation only.\n")
    L += _guarantee_lines(rep)
    L.append("Run parameters:\n\n| parameter | value |\n|---|---|")
    L += [f"| {k} | {_f(v)} |" for k, v in rep["run_parameters"].items()]
    L.append("")
    if rep.get("ledger_epsilon"):
        le = rep["ledger_epsilon"]
        if le.get("worst_client") is None:
            L.append(f"Re-accounting the {le['releases']} releases in `privacy_ledger.jsonl`: RDP {_f(le['rdp'])}, "
                     f"PRV {_f(le['prv'])}, tightest {_f(le['tightest'])} (the claim must not be below this).\n")
        else:
            L.append(f"Re-accounting the DP-SGD steps of {le['clients']} clients in `privacy_ledger.jsonl`: worst RDP "
                     f"{_f(le['rdp'])}; client {le['worst_client']} reaches {_f(le['tightest'])} with the tightest "
                     "accountant (the claim must not be below this).\n")

    d = rep["dropouts"]
    L.append("## 2. Dropouts and the noise calibration\n")
    L.append(d["note"][0].upper() + d["note"][1:] + ".\n")
    if d.get("target_noise_std") is not None:
        L.append(f"Calibrated for at least {d['calibrated_for_survivors']} clients per released sum (target noise std "
                 f"{_f(d['target_noise_std'])} per coordinate); fewest clients in a released sum: "
                 f"{_f(d['fewest_survivors'])} (noise std {_f(d['noise_std_at_fewest'])}). Rounds below the "
                 f"calibration: {d['below_calibration'] or 'none'}. Aborted rounds (charged, nothing released): "
                 f"{d['aborted_rounds'] or 'none'}.\n")
    L.append("| round | sampled | canaries | survivors | aborted |\n|---|---|---|---|---|")
    for row in d["per_round"]:
        L.append(f"| {row['round']} | {row['sampled']} | {row['canaries']} | {row['survivors']} "
                 f"| {_f(row['aborted'])} |")
    L.append("")

    s = rep["secure_aggregation"]
    L.append("## 3. Secure aggregation\n")
    L.append(f"Protocol: SecAgg (Bonawitz et al. CCS 2017) with the SecAgg+ neighbour graph (Bell et al. CCS 2020); "
             f"mode **{s['mode']}** (the server follows the protocol's message flow; no PKI, stage-3 consistency "
             f"check off). Arithmetic mod 2^{s['bits']} = {_f(s['modulus'])}; a round aborts with fewer than "
             f"min_survivors = {_f(s['min_survivors'])} clients. Assumed: at most a fraction "
             f"{s['tolerated_corrupt_fraction']} of the clients collude with the server, and dropouts do not depend "
             "on the session id (docs/graph.md). Statistical security target 2^-40 (no honest client has t corrupt "
             "neighbours, the honest survivors stay connected), correctness target 2^-30.\n")
    L.append("| rounds | n | graph | k | t | assumed dropout | log2 security bound | log2 correctness bound |")
    L.append("|---|---|---|---|---|---|---|---|")
    for row in s["rounds"]:
        rr = row["rounds"]
        span = f"{rr[0]}" if len(rr) == 1 else f"{rr[0]}..{rr[-1]} ({len(rr)})"
        L.append(f"| {span} | {row['n']} | {row['graph']} | {row['k']} | {row['t']} | {_f(row['dropout_assumed'], 3)} "
                 f"| {_f(row.get('security_log2'))} | {_f(row.get('correctness_log2'))} |")
    L.append("")

    v = rep["server_view"]
    L.append("## 4. What the server saw\n")
    if not v["recorded_rounds"]:
        L.append(f"**Not checked:** {v.get('why')}\n")
    else:
        L.append(f"Messages kept for round(s) {v['recorded_rounds']}; each test family is corrected (Holm) to a "
                 f"family-wise false-alarm rate alpha = {v['alpha']:g}.\n")
        L.append("| check | result | detail |\n|---|---|---|")
        for name, c in v["checks"].items():
            res = "pass" if c.get("ok") else ("not run" if c.get("ok") is None else "**FAIL**")
            detail = c.get("test") or c.get("why", "")
            if name == "uniformity":
                detail += (f"; {c['inputs_tested']} inputs, smallest p = {_f(c['min_p'])}, "
                           f"rejected: {len(c['rejected'])}")
            if name == "independence" and c.get("ok") is not None:
                detail += (f"; {c['inputs_tested']} inputs, largest |r| = {_f(c['max_abs_r'])}, smallest p = "
                           f"{_f(c['min_p'])}, rejected: {len(c['rejected'])}")
            L.append(f"| {name} | {res} | {detail} |")
        w = v.get("witness")
        if w is not None:
            L.append(f"| witness (re-derivation) | {'pass' if w['ok'] else '**FAIL**'} | {w['test']} |")
        L.append("")

    L.append("## 5. Empirical privacy\n")
    cc = rep["empirical"]["client_canaries"]
    ec = rep["empirical"]["example_canaries"]
    if cc is None and ec is None:
        L.append("No canaries in this run (set `[audit] canaries = N` for client-level DP or `canary_examples = N` "
                 "for sample-level DP): no empirical estimate.\n")
    if cc is not None:
        fm = cc["final_model"]
        L.append(f"**Client-level canaries** ({cc['method']}): {cc['inserted']} inserted canaries (each in "
                 f"{_f(cc['participation_mean'], 3)} of {cc['rounds']} rounds on average, clip norm times a random "
                 f"unit direction in d = {cc['dim']}) and {cc['null']} never inserted.\n")
        L.append("| statistic | inserted mean (std) | null mean (std) | mu | epsilon estimate | "
                 f"{fm['confidence']:.0%} interval | separate-variance estimate |")
        L.append("|---|---|---|---|---|---|---|")
        rows = [("final model delta", fm)]
        if cc["per_round_max"]:
            rows.append(("max over per-round deltas", cc["per_round_max"]))
        for name, e in rows:
            L.append(f"| {name} | {_f(e['mean_in'])} ({_f(e['std_in'])}) | {_f(e['mean_out'])} ({_f(e['std_out'])}) | "
                     f"{_f(e['mu'])} | {_f(e['epsilon'])} | [{_f(e['epsilon_low'])}, {_f(e['epsilon_high'])}] | "
                     f"{_f(e['epsilon_separate_variances'])} |")
        ks = cc["null_vs_exact_cosine_distribution"]
        L.append(f"\nThe null canaries' cosines against the exact distribution of a random direction's cosine: KS "
                 f"p = {_f(ks['p'])}. The estimate is the epsilon at delta = {_f(rep['delta'])} of mu-Gaussian DP, "
                 "mu = (mean_in - mean_null) / pooled std; the interval comes from the noncentral t distribution. "
                 "The final-model row is the headline (empirical_epsilon).\n")
    if ec is not None:
        L.append(f"**Sample-level canary examples** ({ec['method']}): m = {ec['m']} canaries, {ec['included']} "
                 f"included; best guess set: {ec['correct']} correct of {ec['guesses']}; epsilon lower bound "
                 f"{_f(ec['epsilon_lower_bound'])} at delta = {_f(ec['delta'])} with confidence {ec['confidence']:.0%} "
                 f"(Bonferroni over {len(ec['per_guess_size'])} guess sizes).\n")
        L.append("| k in / k out | correct | epsilon lower bound |\n|---|---|---|")
        for row in ec["per_guess_size"]:
            L.append(f"| {row['k_in']} / {row['k_out']} | {row['correct']} | {_f(row['epsilon_lower_bound'])} |")
        L.append("")

    L.append("## 6. Digests of every message the server received\n")
    L.append("SHA-256 of each message's bytes, as `stage client digest` (stage 0 keys, 1 shares, 2 masked input, "
             "3 signature, 4 unmask); the round digest is SHA-256 over the lines `stage|client|digest`.\n")
    L.append("| round | messages | round digest |\n|---|---|---|")
    for t in rep["transcript"]:
        L.append(f"| {t['round']} | {t['messages']} | `{t['round_digest']}` |")
    L.append("")
    for t in rep["transcript"]:
        L.append(f"<details><summary>round {t['round']}: {t['messages']} messages</summary>\n\n```")
        L += [f"{s} {u} {dg}" for s, u, dg in t["digests"]]
        L.append("```\n</details>\n")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- command line


def summary_lines(rep: dict) -> list[str]:
    out = [f"audit of {rep['run_dir']}: {'FLAGGED' if rep['flagged'] else 'not flagged'}",
           f"  theoretical epsilon {_f(rep['theoretical_epsilon'])} at delta {_f(rep['delta'])}; "
           f"empirical epsilon {_f(rep['empirical_epsilon'])}; server view ok: {rep['server_view_ok']}"]
    out += [f"  - {r}" for r in rep["reasons"]]
    out.append(f"  wrote {Path(rep['run_dir']) / 'audit.json'} and audit.md")
    return out


def main(args: argparse.Namespace) -> int:
    """Run the audit for the parsed ``audit`` subcommand; 1 when flagged."""
    rep = audit_run(args.run_dir, use_witness=not args.no_witness, log=lambda m: print(m, file=sys.stderr))
    write_audit(args.run_dir, rep)
    print("\n".join(summary_lines(rep)))
    return 1 if rep["flagged"] else 0
