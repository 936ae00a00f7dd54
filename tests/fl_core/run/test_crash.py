"""Crash safety: SIGKILL a training run at random points, resume it, and get the uninterrupted
run's model and epsilon, with every round counted exactly once (issue: fault testing, part 6)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fl_core.cli import main as cli_main
from fl_core.run.checkpoint import load_checkpoint
from fl_core.config import load_config
from fl_core.errors import CheckpointError
from fl_core.run.loop import CHECKPOINT_DIR, run
from fl_core.run.observer import StopAfterRelease, StopRun

CONFIG = """
rounds = 5
clients_per_round = 10
secure_randomness = false
seed = 3
[data]
num_clients = 20
[model]
hidden = 16
[local]
epochs = 1
lr = 0.1
batch_size = 16
momentum = 0.0
[dp]
mode = "client"
target_epsilon = 8.0
[secagg]
graph = "sparse"
min_survivors = 0.8
"""


def _cli(*args):
    return [sys.executable, "-m", "fl_core", "run", *args, "--no-progress"]


def _rounds_done(out: Path) -> int:
    p = out / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def _kill_then_resume(cfg_path: Path, out: Path, *, after_rounds: int, extra_delay: float) -> None:
    proc = subprocess.Popen(_cli("--config", str(cfg_path), "--out", str(out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _rounds_done(out) < after_rounds and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(extra_delay)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    # The resume runs the same CLI in this process (the killed one left only its files behind):
    # one fresh interpreter per trial, not two, each paying torch's import.
    if (out / "config.resolved.toml").exists():
        assert cli_main(["run", "--resume", str(out), "--no-progress"]) == 0
    else:  # killed before the run started: nothing was released, so a fresh start is the resume
        assert not (out / "privacy_ledger.jsonl").exists()
        assert cli_main(["run", "--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    cfg_path = d / "run.toml"
    cfg_path.write_text(CONFIG)
    s = run(load_config(cfg_path), d / "full", progress=False, log=lambda m: None)
    return cfg_path, d / "full", s


def _assert_same_as_reference(out: Path, full: Path, summary) -> None:
    m1, m2 = torch.load(full / "model.pt"), torch.load(out / "model.pt")
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    p1, p2 = (json.loads((d / "privacy.json").read_text()) for d in (full, out))
    assert p2["epsilon"] == p1["epsilon"] == summary.epsilon
    assert p2["mechanisms"][0]["parameters"]["releases_charged"] == 5  # no round counted twice or lost
    rounds = [json.loads(l)["round"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4, 5]
    transcript = [json.loads(l)["round"] for l in (out / "transcript.jsonl").read_text().splitlines()]
    assert transcript == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("trial", range(2))
def test_sigkill_at_a_random_point_then_resume_equals_uninterrupted(reference, tmp_path, trial):
    cfg_path, full, summary = reference
    rng = random.Random(1000 + trial)
    _kill_then_resume(cfg_path, tmp_path / "run", after_rounds=rng.randint(0, 4), extra_delay=rng.uniform(0, 0.4))
    _assert_same_as_reference(tmp_path / "run", full, summary)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_sigkill_campaign(reference, tmp_path, trial):
    cfg_path, full, summary = reference
    rng = random.Random(trial)
    _kill_then_resume(cfg_path, tmp_path / "run", after_rounds=rng.randint(0, 4), extra_delay=rng.uniform(0, 0.6))
    _assert_same_as_reference(tmp_path / "run", full, summary)


def test_checkpoint_cut_short_is_detected_not_loaded(reference, tmp_path):
    cfg_path, full, _ = reference
    out = tmp_path / "run"
    cfg = load_config(cfg_path)
    with pytest.raises(StopRun):
        run(cfg, out, progress=False, log=lambda m: None, observer=StopAfterRelease(2))
    files = [p for p in (out / CHECKPOINT_DIR).iterdir() if p.is_file()]
    assert files
    target = max(files, key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[:-7])
    with pytest.raises(CheckpointError):
        load_checkpoint(out / CHECKPOINT_DIR)
    with pytest.raises(CheckpointError):
        run(cfg, out, resume=True, progress=False, log=lambda m: None)
