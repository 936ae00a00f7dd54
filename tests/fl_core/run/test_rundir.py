"""The run directory keeps its privacy record: reuse refused, --overwrite keeps the ledger, a lost
checkpoint after releases refused, every JSON file strict (issue 14, parts 1, 2 and 9)."""

import json
import math
from pathlib import Path

import pytest

from fl_core.cli import main as cli_main
from fl_core.errors import CheckpointError
from fl_core.run import rundir

CONFIG = """
rounds = 2
clients_per_round = 5
seed = 0
secure_randomness = true
[data]
num_clients = 10
[model]
hidden = 8
[local]
epochs = 1
lr = 0.1
batch_size = 16
momentum = 0.0
[dp]
mode = "client"
target_epsilon = 8.0
[secagg]
min_survivors = 0.8
"""


def _strict_load(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished client-level DP run (fresh noise: its releases are privacy spent)."""
    d = tmp_path_factory.mktemp("rundir")
    (d / "run.toml").write_text(CONFIG)
    assert cli_main(["run", "--config", str(d / "run.toml"), "--out", str(d / "out"), "--no-progress"]) == 0
    return d / "run.toml", d / "out"


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_second_run_into_the_same_directory_is_refused_and_touches_nothing(done, tmp_path, capsys):
    cfg, out = done
    before = _snapshot(out)
    assert cli_main(["run", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before


def test_overwrite_keeps_the_old_ledger_beside_the_new_run(done, tmp_path):
    cfg, src = done
    out = _copy(src, tmp_path / "out")
    old_ledger = (out / rundir.LEDGER).read_bytes()
    assert rundir.releases(rundir.ledger_records(out))
    assert cli_main(["run", "--config", str(cfg), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    kept = out / rundir.PREVIOUS_LEDGERS / "privacy_ledger.1.jsonl"
    assert kept.read_bytes() == old_ledger  # moved, byte for byte
    assert len(rundir.releases(rundir.ledger_records(out))) == 2  # the new run's own ledger
    assert "privacy_ledger.1.jsonl: 2 release(s)" in (out / rundir.REPORT).read_text()
    assert cli_main(["run", "--config", str(cfg), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert (out / rundir.PREVIOUS_LEDGERS / "privacy_ledger.2.jsonl").exists() and kept.read_bytes() == old_ledger


def test_resume_without_checkpoint_after_releases_is_refused(done, tmp_path, capsys):
    _, src = done
    out = _copy(src, tmp_path / "out")
    import shutil
    shutil.rmtree(out / rundir.CHECKPOINT_DIR)
    before = _snapshot(out)
    assert cli_main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(out / rundir.CHECKPOINT_DIR / rundir.CHECKPOINT_FILE) in err  # what is missing
    assert "2 release(s)" in err and "--out NEW_DIR" in err  # what was spent, what to do
    assert _snapshot(out) == before  # metrics, model, ledger, summary untouched


def test_the_api_refuses_the_same(done, tmp_path):
    from fl_core.config import load_config
    from fl_core.run.loop import run
    cfg, src = done
    out = _copy(src, tmp_path / "out")
    (out / rundir.CHECKPOINT_DIR / rundir.CHECKPOINT_FILE).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        run(load_config(cfg), out, resume=True, progress=False, log=lambda m: None)


def test_resume_without_checkpoint_and_nothing_released_starts_cleanly(done, tmp_path):
    cfg, src = done
    out = tmp_path / "out"
    out.mkdir()
    (out / rundir.CONFIG).write_text((src / rundir.CONFIG).read_text())  # killed before the first release
    assert cli_main(["run", "--resume", str(out), "--no-progress"]) == 0
    rows = rundir.read_jsonl(out / rundir.METRICS)
    assert [r["round"] for r in rows] == [1, 2]


def test_first_checkpoint_is_written_before_the_first_release(done, tmp_path):
    from fl_core.config import load_config
    from fl_core.run.loop import run
    from fl_core.run.observer import StopAfterRelease, StopRun
    cfg, _ = done
    with pytest.raises(StopRun):
        run(load_config(cfg), tmp_path / "o", progress=False, log=lambda m: None, observer=StopAfterRelease(0))
    assert (tmp_path / "o" / rundir.CHECKPOINT_DIR / rundir.CHECKPOINT_FILE).exists()
    s = run(load_config(cfg), tmp_path / "o", resume=True, progress=False, log=lambda m: None)
    # the lost fresh-noise release of round 1 is charged: the budget (2 releases) ends the run after round 1
    assert s.rounds_run == 1 and s.stopped_by_budget
    ledger = rundir.ledger_records(tmp_path / "o")
    assert [r["round"] for r in ledger] == [0, 0]  # append-only: the lost release stays recorded


def test_resume_with_config_is_refused(done, tmp_path, capsys):
    cfg, src = done
    out = _copy(src, tmp_path / "out")
    before = _snapshot(out)
    assert cli_main(["run", "--resume", str(out), "--config", str(cfg), "--no-progress"]) == 2
    assert "--config" in capsys.readouterr().err and _snapshot(out) == before


def test_missing_config_file_says_cannot_read(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert cli_main(["run", "--config", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {missing}" in err and "invalid field" not in err
    assert not (tmp_path / "o").exists()


def test_every_json_file_is_strict_even_when_no_round_ran(tmp_path):
    cfg = tmp_path / "run.toml"  # the budget refuses round 1: final accuracy is undefined
    cfg.write_text(CONFIG.replace("target_epsilon = 8.0", "noise_multiplier = 0.3\nepsilon_budget = 0.01"))
    assert cli_main(["run", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = tmp_path / "o"
    summary = _strict_load((out / rundir.SUMMARY).read_text())
    assert summary["rounds_run"] == 0 and summary["final_accuracy"] is None
    for p in list(out.glob("*.json")) + list(out.glob("*.jsonl")):
        for line in ([p.read_text()] if p.suffix == ".json" else p.read_text().splitlines()):
            _strict_load(line)


def test_dumps_maps_non_finite_to_null():
    import numpy as np
    text = rundir.dumps({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32("nan"), "d": np.int64(3)})
    assert _strict_load(text) == {"a": None, "b": [None, None, 1.5], "c": None, "d": 3}


@pytest.mark.parametrize("text, key, guess", [("roundz = 3\n", "roundz", "rounds"),
                                              ("[local]\nbatchsize = 8\n", "local.batchsize", "batch_size")])
def test_unknown_keys_get_a_did_you_mean(tmp_path, capsys, text, key, guess):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    assert cli_main(["run", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert key in err and f"did you mean {guess!r}?" in err


def test_toml_syntax_error_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("rounds = = 3\n")
    assert cli_main(["run", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert f"cannot read {cfg}: TOML syntax error" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_named_with_what_to_do(done, tmp_path, capsys):
    _, src = done
    out = _copy(src, tmp_path / "out")
    ckpt = out / rundir.CHECKPOINT_DIR / rundir.CHECKPOINT_FILE
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    before = _snapshot(out)
    assert cli_main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "cut short" in err and "Restore" in err and "--out NEW_DIR" in err
    assert _snapshot(out) == before
