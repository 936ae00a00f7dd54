"""A finished run directory as the audit reads it (file names: ``fl_core.run.rundir``)."""

from __future__ import annotations

import json
from pathlib import Path

from fl_core.config import RunConfig, load_config
from fl_core.errors import FLError
from fl_core.run import rundir
from fl_core.run.canaries import AUDIT_DIR, META


class RunRecords:
    """The config, privacy.json, metrics, transcript and ledger of a finished run, and the audit
    recorder's metadata (None when nothing was recorded). FLError when a file is missing."""

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
