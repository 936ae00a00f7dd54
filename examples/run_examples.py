"""Run every example config and print the accuracy-vs-epsilon table of examples/README.md.

    python examples/run_examples.py [--out runs/examples] [NAME ...]

Each row is also reproducible on its own: python -m fl_core run --config examples/NAME.toml
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fl_core.config import load_config
from fl_core.run import rundir
from fl_core.run.loop import run

HERE = Path(__file__).parent
EXAMPLES = ["digits_nonprivate", "digits_ddp_eps1", "digits_ddp_eps3", "digits_ddp_eps8",
            "digits_dpsgd_eps3", "digits_personalization", "digits_fedper", "digits_default",
            "crossdevice_nonprivate", "crossdevice_eps1", "crossdevice_eps3", "crossdevice_eps8"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="*", default=EXAMPLES)
    p.add_argument("--out", type=Path, default=Path("runs/examples"))
    a = p.parse_args()
    rows = []
    for name in a.names:
        cfg = load_config(HERE / f"{name}.toml")
        t0 = time.perf_counter()
        s = run(cfg, a.out / name, progress=False, log=lambda m: None)
        privacy = json.loads((a.out / name / rundir.PRIVACY).read_text())
        row = {"example": name, "dp": cfg.dp.mode.value, "unit": s.unit, "epsilon": s.epsilon,
               "accountant": privacy.get("epsilon_accountant"),
               "delta": s.delta, "accuracy": s.final_accuracy, "rounds": s.rounds_run,
               "seconds": round(time.perf_counter() - t0, 1),
               "command": f"python -m fl_core run --config examples/{name}.toml --out runs/{name}"}
        pers = a.out / name / rundir.PERSONALIZATION
        if pers.exists():
            pj = json.loads(pers.read_text())
            row["personalization"] = {k: pj.get(k) for k in ("mean_global", "mean_personal", "worst10_global",
                                                             "worst10_personal", "worst10_min_test_examples",
                                                             "worst10_clients_counted")}
        rows.append(row)
        eps = "-" if s.epsilon is None else f"{s.epsilon:.2f} ({row['accountant'].upper()})"
        print(f"| {name} | {cfg.dp.mode.value} | {s.unit or '-'} | {eps} | {s.final_accuracy:.3f} | "
              f"{s.rounds_run} | {row['seconds']} |", flush=True)
        if "personalization" in row:
            print(f"    personalization: {row['personalization']}", flush=True)
    rundir.write_json(a.out / "results.json", rows)


if __name__ == "__main__":
    main()
