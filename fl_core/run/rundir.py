"""The files of a run directory, named once, and the few ways they are written.

Every name here is an interface (the audit, the report and users' scripts read them): keep them.
JSON-lines files are appended one whole line at a time; a crash can leave a partial last line,
which readers skip (its event never completed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CONFIG", "METRICS", "LEDGER", "TRANSCRIPT", "CHECKPOINT_DIR", "PRIVACY", "SUMMARY", "PLOTS", "MODEL",
    "PERSONALIZATION", "AUDIT_DIR", "append_jsonl", "write_jsonl", "read_jsonl", "filter_jsonl", "write_atomic",
]

CONFIG = "config.resolved.toml"      # the config the run was started with, as dump_config writes it
METRICS = "metrics.jsonl"            # one line per finished round
LEDGER = "privacy_ledger.jsonl"      # one line per release, written (and fsynced) before it
TRANSCRIPT = "transcript.jsonl"      # the server's message digests, one line per round
CHECKPOINT_DIR = "checkpoint"        # fl_core.run.checkpoint
PRIVACY = "privacy.json"             # every guarantee with what it rests on
SUMMARY = "summary.json"
PLOTS = "plots.png"
MODEL = "model.pt"                   # the final global model's state_dict
PERSONALIZATION = "personalization.json"
AUDIT_DIR = "audit"                  # fl_core.run.canaries.AuditRecorder


def append_jsonl(path: Path, record: dict, *, sync: bool = False) -> None:
    """Append one JSON line; with ``sync`` it is on disk when this returns (the ledger)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        if sync:
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: Path, records) -> None:
    """Replace a JSON-lines file with ``records``, one line each."""
    path.write_text("".join(json.dumps(rec) + "\n" for rec in records))


def read_jsonl(path: Path) -> list[dict]:
    """Every whole line of a JSON-lines file, in order ([] if it does not exist)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: what it records never happened
    return records


def filter_jsonl(path: Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines file with its whole lines (as they were) that ``keep`` accepts."""
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


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a kill never leaves half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
