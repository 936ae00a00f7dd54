"""`python -m fl_core run --config FILE.toml --out DIR` (also the `fl-core` console script).

Without --config it runs the default example (digits, secure aggregation, client-level DP).
`--resume DIR` continues the run in DIR from its last checkpoint. `--backend cohort` trains each round's
clients all at once (``fl_core.learn.cohort``) instead of one after the other.
`python -m fl_core audit RUN_DIR` audits a finished run (``fl_core.audit``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from secagg.errors import SecAggError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fl-core", description="Private federated training.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train a model federatedly (secure aggregation + DP)")
    r.add_argument("--config", type=Path, default=None, help="TOML config (default: the default example)")
    r.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<config name>)")
    r.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--backend", choices=["opacus", "cohort"], default=None,
                   help="override local.backend: the reference per-client path, or the vectorized cohort")
    au = sub.add_parser("audit", help="audit a finished run: its guarantees, the server's view, empirical privacy "
                        "(writes RUN_DIR/audit.json and audit.md; exit status 1 when flagged)")
    au.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    au.add_argument("--no-witness", action="store_true", help="do not re-run the recorded rounds from the seed")
    a = p.parse_args(argv)

    if a.command == "audit":
        from fl_core.audit.checks import main as audit_main
        try:
            return audit_main(a)
        except SecAggError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    from fl_core.config import default_config, load_config
    from fl_core.run.loop import run

    try:
        if a.resume is not None:
            out = a.resume
            cfg = load_config(a.config) if a.config else load_config(out / "config.resolved.toml", check_files=False)
            config_dir = a.config.parent if a.config else None
        else:
            cfg = load_config(a.config) if a.config else default_config()
            out = a.out or Path("runs") / (a.config.stem if a.config else "default")
            config_dir = a.config.parent if a.config else None
        if a.backend is not None:
            from fl_core.learn.cohort import Backend
            cfg = dataclasses.replace(cfg, local=dataclasses.replace(cfg.local, backend=Backend(a.backend)))
        run(cfg, out, resume=a.resume is not None, progress=not a.no_progress, config_dir=config_dir)
    except SecAggError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
