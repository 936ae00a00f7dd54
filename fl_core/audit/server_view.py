"""The audit's server view: the kept messages of the recorded rounds against the transcript, the
masked inputs' uniformity, which secrets were revealed, and (witness mode) the re-derived inputs:
their sum against the unmasked aggregate, and each masked input's correlation with its input."""

from __future__ import annotations

import hashlib
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from secagg import wire
from secagg.errors import DecodeError, SecAggError
from secagg.messages import MaskedInput, ShareKind, UnmaskResponse

from fl_core.audit.rundata import RunRecords
from fl_core.audit.stats import ALPHA, correlation_p_value, holm, uniformity_p_value
from fl_core.run.canaries import AUDIT_DIR, read_messages


def witness_inputs(run_dir, rounds: list[int], *, log=print) -> dict | str:
    """The encoded, unmasked input of every client in ``rounds`` (0-based) of a witness-mode run,
    re-derived by running it again from its seed: ``{round: {client: words}}``, or why not."""
    return witness_inputs_of(RunRecords(Path(run_dir)), rounds, log)


def witness_inputs_of(run: RunRecords, rounds: list[int], log) -> dict | str:
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


def _round_view(run: RunRecords, r: int, witness) -> dict:
    """What the kept messages of round ``r`` (0-based) show: a report row, and the p-values of its
    uniformity and (with a witness that reproduces the aggregate) independence tests."""
    msgs = read_messages(run.dir / AUDIT_DIR / f"round_{r + 1:04d}.msgs")
    mine = [(s, u, hashlib.sha256(b).hexdigest()) for s, u, b in msgs]
    match = mine == [tuple(x) for x in run.transcript.get(r + 1, [])]
    row = {"round": r + 1, "messages": len(msgs), "digests_match_transcript": match}
    out = {"row": row, "digests_ok": match, "malformed": 0, "uniformity": [], "correlation": [], "witness_ok": None}
    masked: dict[int, MaskedInput] = {}
    revealed: dict[int, set[int]] = defaultdict(set)
    for s, u, b in msgs:
        try:
            msg = wire.decode(b)
        except DecodeError:
            out["malformed"] += 1
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
    out["reveal_ok"] = not both and not wrong_kind
    for u, msg in sorted(masked.items()):
        p, bins = uniformity_p_value(msg.words, msg.bits)
        out["uniformity"].append(((r + 1, u), p))
        row["bins"] = bins
    row["masked_inputs"] = len(masked)
    if isinstance(witness, dict) and r in witness and masked:
        truth, bits = witness[r], next(iter(masked.values())).bits
        total = np.zeros(len(next(iter(masked.values())).words), dtype=np.uint64)
        for u in masked:
            total += truth[u].astype(np.uint64) if u in truth else np.uint64(0)
        total &= np.uint64((1 << bits) - 1)
        agg_path = run.dir / AUDIT_DIR / f"round_{r + 1:04d}.aggregate.npy"
        agg = np.load(agg_path).astype(np.uint64) if agg_path.exists() else None
        same = agg is not None and all(u in truth for u in masked) and np.array_equal(total, agg)
        row["witness_reproduces_aggregate"] = out["witness_ok"] = bool(same)
        if same:
            for u, msg in sorted(masked.items()):
                rr, p = correlation_p_value(truth[u], msg.words, msg.bits)
                out["correlation"].append(((r + 1, u, rr), p))
    return out


def server_view(run: RunRecords, *, use_witness: bool, log) -> dict:
    """The server-view checks over every recorded round (see ``fl_core.audit.checks``)."""
    recorded = sorted(run.meta["recorded_rounds"]) if run.meta else []
    out: dict = {"recorded_rounds": [r + 1 for r in recorded], "alpha": ALPHA, "checks": {}, "rounds": []}
    if not recorded:
        out["ok"] = False
        out["why"] = ("no round's messages were kept (audit.record_rounds = 0, or every recorded round aborted): "
                      "nothing to check")
        return out
    witness = witness_inputs_of(run, recorded, log) if use_witness else "disabled (--no-witness)"
    views = [_round_view(run, r, witness) for r in recorded]
    out["rounds"] = [v["row"] for v in views]
    uni = [x for v in views for x in v["uniformity"]]
    cor = [x for v in views for x in v["correlation"]]
    seen = [v["witness_ok"] for v in views if v["witness_ok"] is not None]
    witness_ok = all(seen) if seen else None
    malformed = sum(v["malformed"] for v in views)
    uni_reject = holm([p for _, p in uni]) if uni else []
    cor_reject = holm([p for _, p in cor]) if cor else []
    checks = out["checks"]
    checks["digests"] = {"ok": all(v["digests_ok"] for v in views),
                         "test": "SHA-256 of every kept message equals its transcript.jsonl entry"}
    checks["well_formed"] = {"ok": malformed == 0, "malformed": malformed,
                             "test": "every kept message decodes under the wire format (docs/protocol.md)"}
    checks["uniformity"] = {
        "ok": bool(uni) and not any(uni_reject), "inputs_tested": len(uni),
        "rejected": [{"round": w[0], "client": w[1], "p": p} for (w, p), rej in zip(uni, uni_reject) if rej],
        "min_p": min(p for _, p in uni) if uni else None,
        "test": ("Pearson chi-square on the top and on the bottom bits of each masked input's words "
                 "(Bonferroni over the two), Holm over all inputs at family-wise alpha"),
    }
    checks["no_double_reveal"] = {"ok": all(v["reveal_ok"] for v in views),
                                  "test": ("no client had shares of both its self-mask seed and "
                                           "its mask key revealed; survivors only b-shares (and, when excess, "
                                           "noise-seed shares), dropped clients only key shares")}
    if isinstance(witness, dict):
        out["witness"] = {"ok": bool(witness_ok), "test": ("re-running the recorded rounds from the seed gives "
                          "inputs whose sum mod 2^bits is the aggregate the server unmasked")}
    if isinstance(witness, dict) and witness_ok:
        checks["independence"] = {
            "ok": not any(cor_reject), "inputs_tested": len(cor),
            "rejected": [{"round": w[0], "client": w[1], "r": w[2], "p": p}
                         for (w, p), rej in zip(cor, cor_reject) if rej],
            "max_abs_r": max((abs(w[2]) for w, _ in cor), default=None),
            "min_p": min(p for _, p in cor) if cor else None,
            "test": ("Pearson correlation of each masked input with the client's true input (centered integers), "
                     "t test, Holm over all inputs at family-wise alpha"),
        }
    else:
        why = witness if not isinstance(witness, dict) else "the witness did not reproduce the aggregate"
        checks["independence"] = {"ok": None, "why": why}
    out["ok"] = all(c["ok"] for c in checks.values() if c.get("ok") is not None)
    return out
