"""``python -m dp``: through main(argv) for the cases, and two real subprocess runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dp.accounting import compute_epsilon
from dp.calibration import calibrate_noise_multiplier
from dp.cli import main

KEYS = {"epsilon", "delta", "noise_multiplier", "sampling_rate", "steps", "accountant"}
ROOT = Path(__file__).resolve().parents[2]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_epsilon_json():
    # Abadi et al. 2016 setting: q = 0.01, z = 4, 10k steps, delta = 1e-5 (eps <= 1.26 there).
    code, out, err = run(
        ["epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "4", "--steps", "10000",
         "--delta", "1e-5", "--json"]
    )
    assert code == 0 and err == ""
    data = json.loads(out)
    assert set(data) == KEYS
    assert data["epsilon"] == compute_epsilon(sampling_rate=0.01, noise_multiplier=4.0, steps=10000, delta=1e-5)
    assert data["epsilon"] < 1.26
    assert (data["delta"], data["noise_multiplier"], data["sampling_rate"], data["steps"], data["accountant"]) == (
        1e-5, 4.0, 0.01, 10000, "rdp")


def test_epsilon_text_and_prv():
    code, out, _ = run(["epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "1.0", "--steps", "1000",
                        "--delta", "1e-5", "--accountant", "prv"])
    assert code == 0
    eps = compute_epsilon(sampling_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5, accountant="prv")
    assert out.startswith(f"epsilon {eps:.6g} at delta 1e-05") and "prv" in out
    assert len(out.splitlines()) == 1


def test_noise_json_meets_target():
    code, out, err = run(["noise", "--target-epsilon", "3", "--sampling-rate", "0.0042667", "--steps", "14063",
                          "--delta", "1e-5", "--json"])
    assert code == 0 and err == ""
    data = json.loads(out)
    assert set(data) == KEYS | {"target_epsilon"}
    z = calibrate_noise_multiplier(target_epsilon=3.0, delta=1e-5, sampling_rate=0.0042667, steps=14063)
    assert data["noise_multiplier"] == z
    assert data["epsilon"] <= 3.0 and data["target_epsilon"] == 3.0
    code, text, _ = run(["noise", "--target-epsilon", "3", "--sampling-rate", "0.0042667", "--steps", "14063",
                         "--delta", "1e-5"])
    assert code == 0 and text.startswith(f"noise multiplier {z:.6g}")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["epsilon", "--sampling-rate", "1.5", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"],
         "--sampling-rate must be in (0, 1], got 1.5"),
        (["epsilon", "--sampling-rate", "0.1", "--noise-multiplier", "0", "--steps", "10", "--delta", "1e-5"],
         "--noise-multiplier must be > 0, got 0.0"),
        (["epsilon", "--sampling-rate", "0.1", "--noise-multiplier", "nan", "--steps", "10", "--delta", "1e-5"],
         "got nan"),
        (["epsilon", "--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "0", "--delta", "1e-5"],
         "--steps must be >= 1, got 0"),
        (["epsilon", "--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "10", "--delta", "1"],
         "--delta must be in (0, 1), got 1.0"),
        (["noise", "--target-epsilon", "-2", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-5"],
         "--target-epsilon must be > 0, got -2.0"),
        (["epsilon", "--sampling-rate", "abc", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"],
         "invalid float value: 'abc'"),
        (["epsilon", "--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "2.5", "--delta", "1e-5"],
         "invalid int value: '2.5'"),
        (["epsilon", "--sampling-rate", "0.1", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5",
          "--accountant", "gdp"], "invalid choice: 'gdp'"),
        (["epsilon", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "--noise-multiplier"),
        (["budget"], "invalid choice: 'budget'"),
        ([], "required"),
    ],
)
def test_bad_values_one_line_exit_2(argv, needle):
    code, out, err = run(argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


def _subprocess(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dp", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def test_module_entry_point_json():
    proc = _subprocess("epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "1.1", "--steps", "1000",
                       "--delta", "1e-5", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["epsilon"] == pytest.approx(
        compute_epsilon(sampling_rate=0.01, noise_multiplier=1.1, steps=1000, delta=1e-5), rel=1e-12)


def test_module_entry_point_bad_value():
    proc = _subprocess("epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "-1", "--steps", "1000",
                       "--delta", "1e-5")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["python -m dp: error: --noise-multiplier must be > 0, got -1.0"]
