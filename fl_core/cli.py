"""`python -m fl_core run --config FILE.toml --out DIR` (also the `fl-core` console script).

Without --config it runs the default example (digits, secure aggregation, client-level DP).
`--out DIR` must not hold a run already: continue it with `--resume DIR`, or replace it with
`--overwrite` (its privacy ledger is kept in DIR/previous_ledgers/, never deleted).
`--resume DIR` continues the run in DIR from its last checkpoint, with the config it was started
with. `--backend cohort` trains each round's clients all at once (``fl_core.learn.cohort``).
`fl-core audit RUN_DIR` audits a finished run (``fl_core.audit``); `fl-core report RUN_DIR`
rebuilds its report.md; `fl-core examples [--copy DIR]` lists (and copies) the example configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from secagg.errors import SecAggError

from fl_core.errors import FLError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fl-core", description="Private federated training.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train a model federatedly (secure aggregation + DP)")
    r.add_argument("--config", type=Path, default=None, help="TOML config (default: the default example)")
    r.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<config name>)")
    r.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the run in DIR with the config it was started with")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (its privacy ledger is kept in previous_ledgers/)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--backend", choices=["opacus", "cohort"], default=None,
                   help="override local.backend: the reference per-client path, or the vectorized cohort")
    au = sub.add_parser("audit", help="audit a finished run: its guarantees, the server's view, empirical privacy "
                        "(writes RUN_DIR/audit.json, audit.md and audit_digests.md; exit status 1 when flagged)")
    au.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    au.add_argument("--no-witness", action="store_true", help="do not re-run the recorded rounds from the seed")
    rp = sub.add_parser("report", help="rebuild RUN_DIR/report.md (and plots.png) from the run's files")
    rp.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ex = sub.add_parser("examples", help="list the example configs shipped with the package")
    ex.add_argument("--copy", type=Path, default=None, metavar="DIR", help="copy them into DIR")
    return p


def _check_run_args(a: argparse.Namespace) -> Path:
    """Refuse, before anything is touched, what would lose a run or ignore an argument."""
    from fl_core.run import rundir

    if a.resume is not None:
        if a.config is not None:
            raise FLError(f"--resume {a.resume} continues that run with the config it was started with "
                          f"({a.resume / rundir.CONFIG}); --config {a.config} would be ignored. Drop --config, "
                          f"or start a new run with `--config {a.config} --out NEW_DIR`")
        if a.overwrite:
            raise FLError("--resume and --overwrite contradict each other: choose one")
        if a.out is not None and a.out != a.resume:
            raise FLError(f"--resume {a.resume} writes into {a.resume}; --out {a.out} would be ignored: drop it")
        rundir.check_resumable(a.resume)
        return a.resume
    if a.config is not None and not a.config.is_file():
        raise FLError(f"cannot read {a.config}: no such file")
    out = a.out or Path("runs") / (a.config.stem if a.config else "default")
    if rundir.holds_run(out) and not a.overwrite:
        n = len(rundir.releases(rundir.ledger_records(out)))
        raise FLError(f"{out} already holds a run ({n} release(s) in its privacy ledger); nothing was changed. "
                      f"Continue it with `--resume {out}`, replace it with `--overwrite` (its ledger is kept in "
                      f"{out / rundir.PREVIOUS_LEDGERS}/), or choose another --out")
    return out


def _run(a: argparse.Namespace) -> int:
    out = _check_run_args(a)
    from fl_core.config import default_config, load_config
    from fl_core.run import rundir
    from fl_core.run.loop import run

    if a.resume is not None:
        cfg = load_config(out / rundir.CONFIG, check_files=False)
    else:
        cfg = load_config(a.config) if a.config else default_config()
        if a.overwrite and rundir.holds_run(out):
            kept = rundir.clear_for_new_run(out)
            if kept is not None:
                print(f"--overwrite: the old privacy ledger is kept at {kept}")
    if a.backend is not None:
        from fl_core.learn.cohort import Backend
        cfg = dataclasses.replace(cfg, local=dataclasses.replace(cfg.local, backend=Backend(a.backend)))
    config_dir = a.config.parent if a.config else None
    run(cfg, out, resume=a.resume is not None, progress=not a.no_progress, config_dir=config_dir)
    return 0


def _examples(a: argparse.Namespace) -> int:
    from fl_core.examples import copy_examples, example_configs

    if a.copy is None:
        for path in example_configs():
            first = path.read_text().splitlines()[0].lstrip("# ") if path.read_text() else ""
            print(f"{path.name:32s} {first}")
        return 0
    for dst in copy_examples(a.copy):
        print(f"copied {dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.command == "audit":
            from fl_core.audit.checks import main as audit_main
            return audit_main(a)
        if a.command == "report":
            from fl_core.run.runreport import write_report
            path = write_report(a.run_dir)
            print(f"wrote {path}")
            return 0
        if a.command == "examples":
            return _examples(a)
        return _run(a)
    except SecAggError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
