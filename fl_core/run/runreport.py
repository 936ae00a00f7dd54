"""report.md of a run directory: what a person reads after a run (``fl-core report RUN_DIR``).

Data first: ``load_report`` reads the run's files into a ``RunReport``; ``render_markdown`` turns it
into text; ``write_report`` writes report.md and plots.png. Everything comes from the files a run
leaves (config.resolved.toml, privacy.json, metrics.jsonl, summary.json, personalization.json, the
ledgers), so a report can be rebuilt at any time without the model or the data.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fl_core.errors import FLError
from fl_core.run import rundir

__all__ = ["RunReport", "load_report", "render_markdown", "write_report", "epsilon_line"]


@dataclass(frozen=True)
class RunReport:
    run_dir: Path
    config: dict
    privacy: dict
    metrics: list[dict]
    summary: dict | None = None
    personalization: dict | None = None
    previous_releases: list[tuple[str, int]] = field(default_factory=list)  # (ledger file, releases)

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    @property
    def mode(self) -> str:
        return self.privacy.get("mode", self.config.get("dp", {}).get("mode", "none"))

    @property
    def unit(self) -> str | None:
        return self.privacy.get("unit_of_privacy")

    @property
    def target_epsilon(self) -> float | None:
        dp = self.config.get("dp", {})
        return self.privacy.get("budget_epsilon") or dp.get("epsilon_budget") or dp.get("target_epsilon")

    @property
    def title(self) -> str:
        dp = "no DP" if self.mode == "none" else f"{self.mode}-level DP, unit: one {self.unit}"
        return f"{self.name} ({dp})"


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FLError(f"cannot read {path}: {e}") from e


def load_report(run_dir: str | os.PathLike) -> RunReport:
    """Everything report.md shows, read from ``run_dir``; ``FLError`` naming the file that is missing."""
    d = Path(run_dir)
    cfg_path = d / rundir.CONFIG
    try:
        config = tomllib.loads(cfg_path.read_text())
    except OSError as e:
        raise FLError(f"cannot read {cfg_path}: {e.strerror or e}; is {d} a run directory?") from e
    privacy = _read_json(d / rundir.PRIVACY)
    if privacy is None:
        raise FLError(f"cannot read {d / rundir.PRIVACY}: no such file; the run has not finished "
                      f"(continue it with `fl-core run --resume {d}`)")
    prev = [(p.name, len(rundir.releases(rundir.read_jsonl(p)))) for p in rundir.previous_ledgers(d)]
    return RunReport(run_dir=d, config=config, privacy=privacy, metrics=rundir.read_jsonl(d / rundir.METRICS),
                     summary=_read_json(d / rundir.SUMMARY), personalization=_read_json(d / rundir.PERSONALIZATION),
                     previous_releases=prev)


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.3g}"
    return str(x)


def epsilon_line(privacy: dict) -> str:
    """The one sentence that states the guarantee, as the console, report and README say it."""
    if privacy.get("mode", "none") == "none" or privacy.get("epsilon") is None:
        return "no differential privacy (secure aggregation only)"
    acc = str(privacy.get("epsilon_accountant") or privacy.get("accountant_used_for_budget") or "?").upper()
    if privacy.get("epsilon_accountant_requested"):
        acc += f" ({privacy['epsilon_accountant_requested'].upper()} was requested and fell back to it)"
    worst = " (the worst client's)" if privacy.get("unit_of_privacy") == "example" else ""
    return (f"ε = {privacy['epsilon']:.3f}{worst} at δ = {privacy.get('delta'):g}, unit of privacy: one "
            f"{privacy.get('unit_of_privacy')}, accountant: {acc}")


def _config_rows(c: dict) -> list[tuple[str, str]]:
    data, model, local, server = (c.get(k, {}) for k in ("data", "model", "local", "server"))
    dp, sa, pz = c.get("dp", {}), c.get("secagg", {}), c.get("personalize", {})
    per_round = (f"{c['clients_per_round']} per round" if c.get("clients_per_round") is not None
                 else f"Poisson, rate {c.get('sampling_rate')}")
    rows = [
        ("rounds", _f(c.get("rounds"))),
        ("clients", f"{data.get('num_clients')} ({per_round})"),
        ("data", f"{data.get('dataset')}, partition {data.get('partition')}"
         + (f" (alpha {data['alpha']})" if data.get("partition") == "dirichlet" and "alpha" in data else "")),
        ("model", ", ".join(f"{k} {v}" for k, v in model.items())),
        ("local training", ", ".join(f"{k} {v}" for k, v in local.items() if v is not None)),
        ("server", ", ".join(f"{k} {v}" for k, v in server.items() if v is not None)),
        ("DP", ", ".join(f"{k} {v}" for k, v in dp.items() if v is not None)),
        ("secure aggregation", ", ".join(f"{k} {v}" for k, v in sa.items() if not isinstance(v, dict))
         + ("; dropout " + ", ".join(f"{k} {v}" for k, v in sa.get("dropout", {}).items() if v)
            if any(sa.get("dropout", {}).values()) else "")),
        ("seed / randomness", f"{c.get('seed')}, "
         + ("secure (os.urandom)" if c.get("secure_randomness", True) else "seeded (reproducible, not for production)")),
    ]
    if pz.get("steps"):
        rows.append(("personalization", ", ".join(f"{k} {v}" for k, v in pz.items() if v not in (None, [], ()))))
    return rows


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _privacy_section(rep: RunReport) -> list[str]:
    p = rep.privacy
    L = ["## Privacy", ""]
    if rep.mode == "none" or p.get("epsilon") is None:
        L += ["**No differential privacy.** " + p.get("guarantee", "Secure aggregation only: the server sees "
              "only the sum of the survivors' updates, and that sum is not protected by any ε."), ""]
    else:
        mech = (p.get("mechanisms") or [{}])[0]
        adjacency = p.get("adjacency") or mech.get("adjacency")
        if adjacency:
            relation = adjacency if isinstance(adjacency, str) else json.dumps(adjacency)
            if p.get("adjacency_means"):
                relation += f": {p['adjacency_means']}"
        else:
            relation = "not recorded in privacy.json (docs/accounting.md states each accountant's relation)"
        L += [f"**{epsilon_line(p)}.**", "",
              "| | |", "|---|---|",
              f"| ε | {_f(p.get('epsilon'))} |", f"| δ | {p.get('delta'):g} |",
              f"| unit of privacy | one {rep.unit} |", f"| neighbouring datasets | {relation} |",
              f"| accountant | {str(p.get('epsilon_accountant') or p.get('accountant_used_for_budget')).upper()} |",
              f"| budget ε | {_f(p.get('budget_epsilon'))} |",
              f"| mechanism | {mech.get('name', '—')} |",
              f"| noise source | {p.get('noise_source', '—')} |"]
        if p.get("epsilon_note"):
            L.append(f"| note | {p['epsilon_note']} |")
        L.append("")
        params = [(k, v) for k, v in _flat(mech) if k not in ("name", "epsilon_per_client") and
                  not k.startswith("epsilon_per_client")]
        if params:
            L += ["<details><summary>every mechanism field in privacy.json</summary>", "",
                  "| field | value |", "|---|---|"]
            L += [f"| {k} | {_f(v, 4) if not isinstance(v, list) else v} |" for k, v in params]
            L += ["", "</details>", ""]
    rails = p.get("guard_rails")
    if rails:
        L += ["### Guard-rails checked at start", ""]
        for g in rails if isinstance(rails, list) else [rails]:
            L.append(f"- {g.get('message', g)}" + (" **(warning)**" if g.get("warning") else ""))
        L.append("")
    if rep.previous_releases:
        total = sum(n for _, n in rep.previous_releases)
        L += [f"**Earlier runs in this directory** were replaced with `--overwrite`; their ledgers are kept in "
              f"`{rundir.PREVIOUS_LEDGERS}/` ({', '.join(f'{name}: {n} release(s)' for name, n in rep.previous_releases)}; "
              f"{total} in all). If they trained on the same data, their privacy loss adds to this run's: ε above "
              "does not include it.", ""]
    return L


def _rounds_section(rep: RunReport) -> list[str]:
    L = ["## Training", "", f"![accuracy and epsilon against round]({rundir.PLOTS})", ""]
    if not rep.metrics:
        return L + ["No round ran.", ""]
    eps_col = rep.mode != "none"
    head = "| round | sampled | survivors | sat out over budget | aborted | test accuracy |" + (" ε |" if eps_col else "")
    L += [head, "|---" * (head.count("|") - 1) + "|"]
    for m in rep.metrics:
        row = (f"| {m['round']} | {m.get('sampled')} | {m.get('survivors')} | {m.get('refused_by_budget', 0)} | "
               f"{m.get('aborted') or 'no'} | {_f(m.get('accuracy'), 4)} |")
        L.append(row + (f" {_f(m.get('epsilon'))} |" if eps_col else ""))
    aborted = sum(1 for m in rep.metrics if m.get("aborted"))
    sat = sum(m.get("refused_by_budget", 0) for m in rep.metrics)
    L += ["", f"{len(rep.metrics)} rounds ran ({rep.config.get('rounds')} planned); {aborted} aborted; "
          f"{sat} client-rounds sat out because they would have exceeded their budget.", ""]
    return L


def _personalization_section(rep: RunReport) -> list[str]:
    p = rep.personalization
    if not p:
        return []
    n_min, counted = p.get("worst10_min_test_examples"), p.get("worst10_clients_counted")
    over = (f"the {counted} clients with at least {n_min} test examples" if n_min is not None else "all clients")
    L = ["## Personalization", "",
         f"Mean accuracy on each client's own test split: global {_f(p.get('mean_global'))} → personalized "
         f"{_f(p.get('mean_personal'))}. Worst 10% (mean of the lowest ceil(n/10), over {over}): "
         f"{_f(p.get('worst10_global'))} → {_f(p.get('worst10_personal'))}.", ""]
    clients = p.get("clients")
    if clients:
        L += ["| client | train examples | test examples | global accuracy | personalized accuracy |",
              "|---|---|---|---|---|"]
        L += [f"| {c['client']} | {c['train_examples']} | {c['test_examples']} | {_f(c['global_accuracy'])} | "
              f"{_f(c['personalized_accuracy'])} |" for c in clients]
        L.append("")
    return L


FILES = {
    rundir.CONFIG: "the config, every default filled in",
    rundir.METRICS: "one line per round",
    rundir.LEDGER: "every release, appended before it happened (never truncated)",
    rundir.PRIVACY: "every guarantee with what it rests on",
    rundir.SUMMARY: "the final numbers",
    rundir.PLOTS: "the figure above",
    rundir.MODEL: "the final model's state_dict",
    rundir.TRANSCRIPT: "SHA-256 of every message the server received",
    rundir.PERSONALIZATION: "per-client personalization results",
    rundir.CHECKPOINT_DIR: "the last checkpoint (`fl-core run --resume`)",
    rundir.AUDIT_DIR: "what the run kept for `fl-core audit`",
    rundir.AUDIT_MD: "the audit's verdict (`fl-core audit`)",
    rundir.PREVIOUS_LEDGERS: "ledgers of runs this directory held before --overwrite",
}


def render_markdown(rep: RunReport) -> str:
    s = rep.summary or {}
    acc = s.get("final_accuracy")
    L = [f"# Run report: {rep.title}", "",
         f"Final test accuracy **{_f(acc, 4)}** after {s.get('rounds_run', len(rep.metrics))} rounds; "
         f"{epsilon_line(rep.privacy)}" + ("; stopped at the ε budget" if s.get("stopped_by_budget") else "") + ".",
         "", "## Configuration", "", "| | |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in _config_rows(rep.config)]
    L.append("")
    L += _privacy_section(rep)
    L += _rounds_section(rep)
    L += _personalization_section(rep)
    L += ["## Files", ""]
    L += [f"- `{name}`: {why}" for name, why in FILES.items() if (rep.run_dir / name).exists()]
    L.append("")
    return "\n".join(L)


def write_report(run_dir: str | os.PathLike, *, plots: bool = True) -> Path:
    """Write ``run_dir``/report.md (and plots.png from the same data); return report.md's path."""
    from fl_core.run.plots import plot_run

    rep = load_report(run_dir)
    d = Path(run_dir)
    if plots and rep.metrics:
        worst = " (worst client)" if rep.unit == "example" else ""
        plot_run(d / rundir.PLOTS, metrics=rep.metrics, title=rep.title, target_epsilon=rep.target_epsilon,
                 epsilon_label=f"ε spent{worst}, δ = {rep.privacy.get('delta')}",
                 personalization=rep.personalization)
    path = d / rundir.REPORT
    path.write_text(render_markdown(rep))
    return path
