"""audit.md and audit_digests.md from the audit's report (``fl_core.audit.checks.audit_run``).

audit.md leads with the verdict and the guarantees; the per-message digests, which are long (one
line per message the server received), go to audit_digests.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fl_core.run import rundir

__all__ = ["render_markdown", "render_digests", "summary_lines", "fmt"]



def fmt(x, digits: int = 4) -> str:
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
        claim = rep.get("theoretical_epsilon")
        acc = str(rep.get("epsilon_accountant")).upper() if rep.get("epsilon_accountant") else "the budget's accountant"
        out.append(f"### {mech['name']}\n")
        adjacency = mech.get("adjacency", "zero-out" if unit == "client" else "add-remove")
        relation = mech.get("neighbouring_relation", "")
        if unit == "client":
            out.append(f"**Guarantee.** ({fmt(claim)}, {fmt(mech['delta'])})-differential privacy for each "
                       f"client under **{adjacency}** adjacency ({relation}): two such runs produce every released "
                       f"aggregate (all {mech['parameters']['releases_charged']} releases, hence the model) with "
                       "probabilities within a factor e^epsilon, up to delta. Under replace-one (sensitivity "
                       f"doubled) epsilon is {fmt(mech.get('epsilon_replace_one'))}. {mech.get('trust', '')}\n")
            out.append("| accountant | epsilon |\n|---|---|")
            out.append(f"| RDP (KLS 2021 Prop. 14; Balle et al. 2020 conversion) | {fmt(eps.get('rdp'))} |")
            for k in ("prv", "pld"):
                note = f" ({eps[k + '_note']})" if eps.get(k + "_note") else ""
                out.append(f"| {k.upper()} | {fmt(eps.get(k))}{note} |")
            out.append(f"| tightest of these | {fmt(eps['tightest'])} |")
            out.append(f"| **reported** (privacy.json, {acc}) | {fmt(claim)} |\n")
            wrap = mech.get("wrap_probability")
            if wrap:
                out.append(f"Wrap probability of the sum (utility, not privacy; {wrap['model']}): "
                           f"{fmt(wrap['per_coordinate'])} per coordinate, {fmt(wrap['per_round'])} per round, "
                           f"{fmt(wrap['over_rounds_run'])} over the rounds run.\n")
        else:
            out.append(f"**Guarantee.** ({fmt(claim if claim is not None else worst)}, {fmt(mech['delta'])})-"
                       f"differential privacy for each training example under **{adjacency}** adjacency "
                       f"({relation}): the distribution of everything that client sends (hence of the model) "
                       "changes by at most e^epsilon, up to delta. Epsilon is composed per client over the steps it "
                       "trained; the claim is the worst client's; under replace-one it is "
                       f"{fmt(mech.get('epsilon_replace_one'))}. {mech.get('trust', '')}\n")
            per = mech.get("epsilon_per_client", {})
            if per:
                vals = [v["tightest"] for v in per.values()]
                worst_id = max(per, key=lambda u: per[u]["tightest"])
                w = per[worst_id]
                out.append(f"Per-client epsilon (tightest of RDP, PRV and PLD): min {fmt(min(vals))}, median "
                           f"{fmt(float(np.median(vals)))}, max {fmt(max(vals))} over {len(vals)} clients; the worst "
                           f"(client {worst_id}): RDP {fmt(w.get('rdp'))}, PRV {fmt(w.get('prv'))}, PLD "
                           f"{fmt(w.get('pld'))}. Each step samples a client's examples at rate 1 / ceil(n / "
                           "batch_size) and is charged at Opacus' accounted rate 1 / int(1 / (1 / ceil(n / "
                           "batch_size))), which is larger for some n.\n")
        out.append("| parameter | value |\n|---|---|")
        for k, v in mech["parameters"].items():
            out.append(f"| {k} | {fmt(v)} |")
        out.append("")
    return out


def _verdict(rep: dict) -> list[str]:
    """The verdict, the headline figures and what an empirical epsilon means."""
    L: list[str] = []
    verdict = "FLAGGED" if rep["flagged"] else "not flagged"
    L.append(f"# Privacy audit of `{rep['run_dir']}`\n")
    L.append(f"**Verdict: {verdict}.**" + ("" if not rep["reasons"] else " Reasons:"))
    for r in rep["reasons"]:
        L.append(f"- {r}")
    L.append("")
    if not rep["mechanisms"]:
        L.append("**This run has no differential privacy: there is no DP guarantee to audit.** What follows checks "
                 "secure aggregation alone (the server saw only the sum of the survivors' updates); that sum "
                 "itself is released unprotected.\n")
    L.append("| | value |\n|---|---|")
    L.append(f"| DP mode / unit of privacy | {rep['mode']} / {fmt(rep['unit_of_privacy'])} |")
    L.append(f"| theoretical epsilon (claimed) | {fmt(rep['theoretical_epsilon'])} |")
    L.append(f"| delta | {fmt(rep['delta'])} |")
    L.append(f"| empirical epsilon (estimate or lower bound) | {fmt(rep['empirical_epsilon'])} |")
    L.append(f"| server view ok | {rep['server_view_ok']} |")
    L.append(f"| rounds run | {fmt(rep['rounds_run'])} |")
    L.append(f"| noise source | {fmt(rep['noise_source'])} |\n")
    L.append("An empirical epsilon is measured evidence, not a guarantee: a low value does not prove privacy "
             "(the canaries may be weak attacks), a value above the claim (beyond its confidence interval) "
             "means the run leaked more than it promised. See docs/audit.md.\n")
    return L


def _guarantees_section(rep: dict) -> list[str]:
    """1. The mechanisms, the run's parameters and the re-accounting."""
    L: list[str] = []
    L.append("## 1. Guarantees\n")
    if not rep["mechanisms"]:
        L.append("No differential privacy in this run: secure aggregation only.\n")
    L += _guarantee_lines(rep)
    L.append("Run parameters:\n\n| parameter | value |\n|---|---|")
    L += [f"| {k} | {fmt(v)} |" for k, v in rep["run_parameters"].items()]
    L.append("")
    cross = rep.get("epsilon_crosscheck")
    if cross:
        verdict = {True: "agree", False: "**DISAGREE**", None: "not checked"}[cross["ok"]]
        L.append(f"Cross-check: the claim ({cross['produced_by']}) recomputed by {cross['implementation']}: "
                 f"{fmt(cross['recomputed'])} ({verdict}; relative difference {fmt(cross['relative_difference'])}, "
                 f"tolerance 1%){'; ' + cross['note'] if cross.get('note') else ''}.\n")
    if rep.get("ledger_epsilon"):
        le = rep["ledger_epsilon"]
        if le.get("worst_client") is None:
            L.append(f"Re-accounting the {le['releases']} releases in `privacy_ledger.jsonl`: RDP {fmt(le['rdp'])}, "
                     f"PRV {fmt(le['prv'])}, tightest {fmt(le['tightest'])} (the claim must not be below this).\n")
        else:
            L.append(f"Re-accounting the DP-SGD steps of {le['clients']} clients in `privacy_ledger.jsonl`: worst RDP "
                     f"{fmt(le['rdp'])}; client {le['worst_client']} reaches {fmt(le['tightest'])} with the tightest "
                     "accountant (the claim must not be below this).\n")
    return L


def _dropouts_section(rep: dict) -> list[str]:
    """2. Dropouts against the noise calibration."""
    L: list[str] = []
    d = rep["dropouts"]
    L.append("## 2. Dropouts and the noise calibration\n")
    L.append(d["note"][0].upper() + d["note"][1:] + ".\n")
    if d.get("target_noise_std") is not None:
        L.append(f"Calibrated for at least {d['calibrated_for_survivors']} clients per released sum (target noise std "
                 f"{fmt(d['target_noise_std'])} per coordinate); fewest clients in a released sum: "
                 f"{fmt(d['fewest_survivors'])} (noise std {fmt(d['noise_std_at_fewest'])}). Rounds below the "
                 f"calibration: {d['below_calibration'] or 'none'}. Aborted rounds (charged, nothing released): "
                 f"{d['aborted_rounds'] or 'none'}.\n")
    L.append("| round | sampled | canaries | survivors | aborted |\n|---|---|---|---|---|")
    for row in d["per_round"]:
        L.append(f"| {row['round']} | {row['sampled']} | {row['canaries']} | {row['survivors']} "
                 f"| {fmt(row['aborted'])} |")
    L.append("")
    return L


def _secagg_section(rep: dict) -> list[str]:
    """3. The protocol, its parameters and their failure bounds."""
    L: list[str] = []
    s = rep["secure_aggregation"]
    L.append("## 3. Secure aggregation\n")
    L.append(f"Protocol: SecAgg (Bonawitz et al. CCS 2017) with the SecAgg+ neighbour graph (Bell et al. CCS 2020); "
             f"mode **{s['mode']}** (the server follows the protocol's message flow; no PKI, stage-3 consistency "
             f"check off). Arithmetic mod 2^{s['bits']} = {fmt(s['modulus'])}; a round aborts with fewer than "
             f"min_survivors = {fmt(s['min_survivors'])} clients. Assumed: at most a fraction "
             f"{s['tolerated_corrupt_fraction']} of the clients collude with the server, and dropouts do not depend "
             "on the session id (docs/graph.md). Statistical security target 2^-40 (no honest client has t corrupt "
             "neighbours, the honest survivors stay connected), correctness target 2^-30.\n")
    L.append("| rounds | n | graph | k | t | assumed dropout | log2 security bound | log2 correctness bound |")
    L.append("|---|---|---|---|---|---|---|---|")
    for row in s["rounds"]:
        rr = row["rounds"]
        span = f"{rr[0]}" if len(rr) == 1 else f"{rr[0]}..{rr[-1]} ({len(rr)})"
        L.append(f"| {span} | {row['n']} | {row['graph']} | {row['k']} | {row['t']} | {fmt(row['dropout_assumed'], 3)} "
                 f"| {fmt(row.get('security_log2'))} | {fmt(row.get('correctness_log2'))} |")
    L.append("")
    return L


def _server_view_section(rep: dict) -> list[str]:
    """4. The server-view checks."""
    L: list[str] = []
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
                detail += (f"; {c['inputs_tested']} inputs, smallest p = {fmt(c['min_p'])}, "
                           f"rejected: {len(c['rejected'])}")
            if name == "independence" and c.get("ok") is not None:
                detail += (f"; {c['inputs_tested']} inputs, largest |r| = {fmt(c['max_abs_r'])}, smallest p = "
                           f"{fmt(c['min_p'])}, rejected: {len(c['rejected'])}")
            L.append(f"| {name} | {res} | {detail} |")
        w = v.get("witness")
        if w is not None:
            L.append(f"| witness (re-derivation) | {'pass' if w['ok'] else '**FAIL**'} | {w['test']} |")
        L.append("")
    return L


def _empirical_section(rep: dict) -> list[str]:
    """5. The canary estimates."""
    L: list[str] = []
    L.append("## 5. Empirical privacy\n")
    cc = rep["empirical"]["client_canaries"]
    ec = rep["empirical"]["example_canaries"]
    if cc is None and ec is None:
        L.append("No canaries in this run (set `[audit] canaries = N` for client-level DP or `canary_examples = N` "
                 "for sample-level DP): no empirical estimate.\n")
    if cc is not None:
        fm = cc["final_model"]
        L.append(f"**Client-level canaries** ({cc['method']}): {cc['inserted']} inserted canaries (each in "
                 f"{fmt(cc['participation_mean'], 3)} of {cc['rounds']} rounds on average, clip norm times a random "
                 f"unit direction in d = {cc['dim']}) and {cc['null']} never inserted.\n")
        L.append("| statistic | inserted mean (std) | null mean (std) | mu | epsilon estimate | "
                 f"{fm['confidence']:.0%} interval | separate-variance estimate |")
        L.append("|---|---|---|---|---|---|---|")
        rows = [("final model delta", fm)]
        if cc["per_round_max"]:
            rows.append(("max over per-round deltas", cc["per_round_max"]))
        for name, e in rows:
            L.append(f"| {name} | {fmt(e['mean_in'])} ({fmt(e['std_in'])}) | {fmt(e['mean_out'])} ({fmt(e['std_out'])}) | "
                     f"{fmt(e['mu'])} | {fmt(e['epsilon'])} | [{fmt(e['epsilon_low'])}, {fmt(e['epsilon_high'])}] | "
                     f"{fmt(e['epsilon_separate_variances'])} |")
        ks = cc["null_vs_exact_cosine_distribution"]
        L.append(f"\nThe null canaries' cosines against the exact distribution of a random direction's cosine: KS "
                 f"p = {fmt(ks['p'])}. The estimate is the epsilon at delta = {fmt(rep['delta'])} of mu-Gaussian DP, "
                 "mu = (mean_in - mean_null) / pooled std; the interval comes from the noncentral t distribution. "
                 "The final-model row is the headline (empirical_epsilon).\n")
    if ec is not None:
        L.append(f"**Sample-level canary examples** ({ec['method']}): m = {ec['m']} canaries, {ec['included']} "
                 f"included; best guess set: {ec['correct']} correct of {ec['guesses']}; epsilon lower bound "
                 f"{fmt(ec['epsilon_lower_bound'])} at delta = {fmt(ec['delta'])} with confidence {ec['confidence']:.0%} "
                 f"(Bonferroni over {len(ec['per_guess_size'])} guess sizes).\n")
        L.append("| k in / k out | correct | epsilon lower bound |\n|---|---|---|")
        for row in ec["per_guess_size"]:
            L.append(f"| {row['k_in']} / {row['k_out']} | {row['correct']} | {fmt(row['epsilon_lower_bound'])} |")
        L.append("")
    return L


def _digests_section(rep: dict) -> list[str]:
    """6. Where the per-message digests are."""
    L: list[str] = []
    L.append("## 6. Digests of every message the server received\n")
    L.append(f"{sum(t['messages'] for t in rep['transcript'])} messages over {len(rep['transcript'])} rounds: "
             f"see `{rundir.AUDIT_DIGESTS}` (one SHA-256 per message; the round digests it lists are checked "
             "against `transcript.jsonl`).\n")
    return L


def render_markdown(rep: dict) -> str:
    """audit.md: the verdict, then one section per kind of evidence."""
    sections = (_verdict, _guarantees_section, _dropouts_section, _secagg_section, _server_view_section,
                _empirical_section, _digests_section)
    return "\n".join(line for section in sections for line in section(rep)) + "\n"


def render_digests(rep: dict) -> str:
    """audit_digests.md: the round digests and every message digest the server received."""
    L: list[str] = [f"# Message digests of `{rep['run_dir']}`\n"]
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


def summary_lines(rep: dict) -> list[str]:
    out = [f"audit of {rep['run_dir']}: {'FLAGGED' if rep['flagged'] else 'not flagged'}",
           f"  theoretical epsilon {fmt(rep['theoretical_epsilon'])} at delta {fmt(rep['delta'])}; "
           f"empirical epsilon {fmt(rep['empirical_epsilon'])}; server view ok: {rep['server_view_ok']}"]
    out += [f"  - {r}" for r in rep["reasons"]]
    out.append(f"  wrote {Path(rep['run_dir']) / rundir.AUDIT_JSON}, {rundir.AUDIT_MD} and {rundir.AUDIT_DIGESTS}")
    return out
