"""The run directory: every file name it holds, the ways they are written, and the rules that keep
its privacy record.

Every name here is an interface (the audit, the report and users' scripts read them): keep them.
JSON-lines files are appended one whole line at a time; a crash can leave a partial last line,
which readers skip (its event never completed). Three rules live here so that every command keeps
them:

- The privacy ledger is append-only. No command truncates or deletes it; ``--overwrite`` moves it
  into ``previous_ledgers/`` beside the new run (``archive_ledger``), where the report lists it.
- A directory that holds a run is not reused by accident (``holds_run``; the CLI refuses), and a
  run whose ledger records releases is not resumed without its checkpoint (``check_resumable``):
  that would restart from an untrained model while the privacy spent stays spent.
- Every JSON file is strict JSON: non-finite floats are written as ``null`` (``dumps``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fl_core.errors import CheckpointError

__all__ = [
    "CONFIG", "METRICS", "LEDGER", "PRIVACY", "SUMMARY", "PLOTS", "MODEL", "TRANSCRIPT", "PERSONALIZATION",
    "REPORT", "CHECKPOINT_DIR", "CHECKPOINT_FILE", "AUDIT_DIR", "AUDIT_META", "AUDIT_TRAJECTORY", "AUDIT_JSON",
    "AUDIT_MD", "AUDIT_DIGESTS", "PREVIOUS_LEDGERS", "RUN_FILES", "strict", "dumps", "write_json",
    "write_atomic", "append_jsonl", "write_jsonl", "filter_jsonl", "read_jsonl", "ledger_records", "releases", "holds_run", "check_resumable",
    "archive_ledger", "clear_for_new_run", "previous_ledgers",
]

CONFIG = "config.resolved.toml"        # the config the run was started with, every default filled in
METRICS = "metrics.jsonl"              # one line per round
LEDGER = "privacy_ledger.jsonl"        # one line per release, appended (and fsynced) before it happens
PRIVACY = "privacy.json"               # every guarantee with what it rests on
SUMMARY = "summary.json"               # the final numbers
PLOTS = "plots.png"
MODEL = "model.pt"
TRANSCRIPT = "transcript.jsonl"        # SHA-256 digests of every message the server received
PERSONALIZATION = "personalization.json"
REPORT = "report.md"                   # what a person reads; `fl-core report RUN_DIR` rebuilds it
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.flck"    # inside CHECKPOINT_DIR (fl_core.run.checkpoint)
AUDIT_DIR = "audit"                    # what the run kept for `fl-core audit`
AUDIT_META = "meta.json"               # inside AUDIT_DIR
AUDIT_TRAJECTORY = "trajectory.f32"    # inside AUDIT_DIR
AUDIT_JSON = "audit.json"
AUDIT_MD = "audit.md"                  # verdict and guarantees
AUDIT_DIGESTS = "audit_digests.md"     # the per-message digests the audit checked
PREVIOUS_LEDGERS = "previous_ledgers"  # ledgers of runs this directory held before an --overwrite

# What a run writes (besides the ledger, which is never removed): cleared by --overwrite.
RUN_FILES = (CONFIG, METRICS, PRIVACY, SUMMARY, PLOTS, MODEL, TRANSCRIPT, PERSONALIZATION, REPORT,
             AUDIT_JSON, AUDIT_MD, AUDIT_DIGESTS)
RUN_DIRS = (CHECKPOINT_DIR, AUDIT_DIR)


# --------------------------------------------------------------------------- strict JSON


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±Infinity; numpy floats too) replaced by None."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return strict(obj.item())
    if hasattr(obj, "tolist"):  # numpy array
        return strict(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def dumps(obj: Any, **kw) -> str:
    """Strict JSON: non-finite numbers become null, and json itself refuses any that slip through."""
    return json.dumps(strict(obj), allow_nan=False, **kw)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` so that a kill never leaves half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict, indented JSON atomically (a kill leaves the old file or the new one)."""
    write_atomic(path, dumps(obj, indent=1) + "\n")


def append_jsonl(path: str | os.PathLike, record: Any, *, sync: bool = False) -> None:
    """Append one strict JSON line; with ``sync`` it is on disk when this returns (the ledger)."""
    with open(path, "a") as f:
        f.write(dumps(record) + "\n")
        if sync:
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: str | os.PathLike, records) -> None:
    """Replace a JSON-lines file (never the ledger) with ``records``, one strict line each."""
    Path(path).write_text("".join(dumps(rec) + "\n" for rec in records))


def filter_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines file (never the ledger) with its whole lines that ``keep`` accepts."""
    path = Path(path)
    if not path.exists():
        return
    lines = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep(rec):
            lines.append(line + "\n")
    path.write_text("".join(lines))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The whole lines of a JSON-lines file (a crash may cut the last one short: it is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# --------------------------------------------------------------------------- the ledger


def ledger_records(out: str | os.PathLike) -> list[dict]:
    """Every record of the ledger in ``out``, in order."""
    return read_jsonl(Path(out) / LEDGER)


def releases(records: list[dict]) -> list[int]:
    """The rounds (0-based) whose records carry a privacy event: each is privacy spent."""
    return [rec.get("round", -1) for rec in records if rec.get("event") or rec.get("client_events")]


def previous_ledgers(out: str | os.PathLike) -> list[Path]:
    d = Path(out) / PREVIOUS_LEDGERS
    return sorted(d.glob("privacy_ledger.*.jsonl"), key=lambda p: int(p.name.split(".")[1])) if d.is_dir() else []


def archive_ledger(out: str | os.PathLike) -> Path | None:
    """Move the ledger to ``previous_ledgers/privacy_ledger.N.jsonl`` (N = 1, 2, ...); never delete it."""
    out = Path(out)
    src = out / LEDGER
    if not src.exists():
        return None
    d = out / PREVIOUS_LEDGERS
    d.mkdir(exist_ok=True)
    n = 1 + max((int(p.name.split(".")[1]) for p in previous_ledgers(out)), default=0)
    dst = d / f"privacy_ledger.{n}.jsonl"
    os.replace(src, dst)
    return dst


# --------------------------------------------------------------------------- reuse rules


def holds_run(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds (part of) a run: its config, ledger, metrics or checkpoint."""
    out = Path(out)
    return any((out / name).exists() for name in (CONFIG, LEDGER, METRICS, CHECKPOINT_DIR))


def clear_for_new_run(out: str | os.PathLike) -> Path | None:
    """Make ``out`` ready for a new run: archive the ledger, remove what the old run wrote.
    Returns where the old ledger went (None when there was none)."""
    out = Path(out)
    kept = archive_ledger(out)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    return kept


def check_resumable(out: str | os.PathLike) -> None:
    """Raise ``CheckpointError`` (saying what is missing and what to do) unless ``out`` can be resumed.

    A run writes its first checkpoint before its first release, so a ledger with releases and no
    checkpoint means the checkpoint was lost: resuming would restart from an untrained model while
    charging what was released. Without releases, resuming starts the run cleanly.
    """
    out = Path(out)
    if not out.is_dir():
        raise CheckpointError(f"cannot resume {out}: no such directory; start a run with "
                              f"`fl-core run --config FILE --out {out}`")
    if not (out / CONFIG).exists():
        raise CheckpointError(f"cannot resume {out}: it holds no run (no {CONFIG}); start one with "
                              f"`fl-core run --config FILE --out {out}`")
    ckpt = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    if ckpt.is_file():
        return
    done = releases(ledger_records(out))
    if done:
        raise CheckpointError(
            f"cannot resume {out}: the checkpoint {ckpt} is missing, but {out / LEDGER} records "
            f"{len(done)} release(s) (rounds {min(done) + 1}..{max(done) + 1}). Resuming would restart from an "
            f"untrained model while that privacy stays spent. Restore {ckpt} from a backup to continue, or "
            f"start a new run elsewhere (`fl-core run --config FILE --out NEW_DIR`); the ledger stays as the "
            f"record of what this data has already released.")
