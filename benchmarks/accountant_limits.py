"""Time and peak memory of ``python -m dp epsilon`` for hard cases, each accountant, one process each.

    flock /work/wt/bench.lock python benchmarks/accountant_limits.py [--out benchmarks/results/dp_accountant_limits.json]

Each case runs as its own process under ``/usr/bin/time -v`` (wall seconds, maximum resident set
size), with a 120 s limit. The target of issue 12: every case ends in under 60 s and 6 GB with an
epsilon or a typed one-line error (exit status 2), never an OOM. The PLD target case
(q = 0.01, z = 1, 1000 steps) is compared with dp_accounting's PLD accountant called directly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (q, z, steps)
    (1.0, 0.5, 10_000),  # the issue's case: Opacus' PRV was OOM-killed at 24 GB
    (0.5, 0.5, 10_000),
    (0.1, 0.8, 10_000),
    (0.01, 1.0, 10_000),
    (0.01, 1.0, 1_000),  # the PLD target case
]
KINDS = ("rdp", "pld", "prv")
TIME_LIMIT_S = 120


def measure(q: float, z: float, steps: int, kind: str) -> dict:
    cmd = [sys.executable, "-m", "dp", "epsilon", "--sampling-rate", str(q), "--noise-multiplier", str(z),
           "--steps", str(steps), "--delta", "1e-5", "--accountant", kind, "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        return {"q": q, "z": z, "steps": steps, "accountant": kind, "exit": None,
                "wall_s": time.perf_counter() - t0, "max_rss_mib": None, "result": f"killed after {TIME_LIMIT_S} s"}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    seconds = (int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))) if wall else None
    out = {"q": q, "z": z, "steps": steps, "accountant": kind, "exit": p.returncode, "wall_s": seconds,
           "max_rss_mib": int(rss.group(1)) / 1024 if rss else None,
           "command": " ".join(["python", *cmd[1:]])}
    if p.returncode == 0:
        out["result"] = json.loads(p.stdout)
    else:
        out["result"] = [line for line in p.stderr.splitlines() if line.startswith("python -m dp")][:1] \
            or p.stderr.splitlines()[-1:]
    return out


def dp_accounting_pld(q: float, z: float, steps: int, delta: float) -> float:
    import dp_accounting as dpa

    acc = dpa.pld.PLDAccountant()
    event = dpa.GaussianDpEvent(z) if q == 1 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    acc.compose(dpa.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dp_accountant_limits.json")
    a = ap.parse_args()
    rows = []
    for q, z, steps in CASES:
        for kind in KINDS:
            row = measure(q, z, steps, kind)
            rows.append(row)
            res = row["result"]
            print(f"q={q:<5} z={z:<4} steps={steps:<6} {kind}: exit {row['exit']}  {row['wall_s']:.1f} s  "
                  f"{row['max_rss_mib']:.0f} MiB  "
                  + (f"eps {res['epsilon']:.6g} ({res['accountant']})" if isinstance(res, dict) else str(res)),
                  flush=True)
    target = next(r for r in rows if (r["q"], r["steps"], r["accountant"]) == (0.01, 1000, "pld"))
    ref = dp_accounting_pld(0.01, 1.0, 1000, 1e-5)
    ours = target["result"]["epsilon"]
    payload = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_average": os.getloadavg()},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "limits": {"wall_s": 60, "max_rss_mib": 6 * 1024},
               "all_within_limits": all(r["exit"] in (0, 2) and r["wall_s"] < 60 and r["max_rss_mib"] < 6 * 1024
                                        for r in rows),
               "pld_target": {"ours": ours, "dp_accounting_pld": ref, "relative_difference": abs(ours - ref) / ref},
               "rows": rows}
    a.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"PLD target: ours {ours:.6g}, dp_accounting {ref:.6g}, rel diff {abs(ours - ref) / ref:.2e}; "
          f"all within 60 s and 6 GB: {payload['all_within_limits']}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
