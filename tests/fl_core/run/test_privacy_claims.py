"""Issue 12 in the run loop: what each record promises is what the code proves.

- under DP no example count leaves a client (uniform weights; the count word only without DP);
- client-level noise is calibrated for the honest survivors (min_survivors - colluders);
- every record names its neighbouring relation; add-remove is refused for the DDG;
- the budget check plans with the sampling rate the charge will use (Opacus' 1/(L-1) for L = 93).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dp.accounting import Accountant
from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent
from fl_core.audit.checks import audit_run, render_markdown
from fl_core.errors import ConfigFieldError
from fl_core.learn.cohort import plan_client
from fl_core.run.loop import run
from tests.fl_core.overrides import config_with
from fl_core.run.observer import RunObserver
from fl_core.run.privacy import privacy_plan

FAST = {"rounds": 1, "clients_per_round": 10, "secure_randomness": False,
        "data": {"num_clients": 20}, "model": {"hidden": 16},
        "local": {"epochs": 1, "lr": 0.1, "batch_size": 16, "momentum": 0.0}}


def cfg_of(**over):
    return config_with(FAST, **over)


class Inputs(RunObserver):
    def __init__(self):
        self.lengths: set[int] = set()

    def on_inputs(self, r, words):
        self.lengths |= {len(w) for w in words.values()}


def _lengths(cfg, out) -> set[int]:
    seen = Inputs()
    run(cfg, out, progress=False, log=lambda m: None, observer=seen)
    return seen.lengths


def test_sample_level_dp_sends_no_example_count(tmp_path):
    """The old encoding appended each client's exact example count (one more word)."""
    plain = _lengths(cfg_of(dp={"mode": "none"}), tmp_path / "none")
    private = _lengths(cfg_of(dp={"mode": "sample", "noise_multiplier": 1.0}), tmp_path / "sample")
    assert len(plain) == len(private) == 1
    assert private == {next(iter(plain)) - 1}  # the update only; no count word
    rec = json.loads((tmp_path / "sample" / "privacy.json").read_text())
    assert rec["adjacency"] == "add-remove" and "one example" in rec["neighbouring_relation"]
    assert "uniform weights" in rec["mechanisms"][0]["trust"]
    assert "keystream" in rec["local_training"]["dp_sgd_noise_generator"]


def test_client_level_records_honest_survivors_adjacency_and_wrap(tmp_path):
    cfg = cfg_of(dp={"mode": "client", "target_epsilon": 8.0})
    run(cfg, tmp_path, progress=False, log=lambda m: None)
    rec = json.loads((tmp_path / "privacy.json").read_text())
    mech = rec["mechanisms"][0]
    p = mech["parameters"]
    colluders = math.ceil(cfg.secagg.corrupt * cfg.clients_per_round)
    assert p["calibrated_for_honest_survivors"] == p["calibrated_for_survivors"] - colluders
    assert p["tolerated_colluding_clients"] == colluders >= 1
    assert mech["adjacency"] == rec["adjacency"] == "zero-out"
    assert "stays in the cohort" in mech["neighbouring_relation"]
    assert "every other client" not in mech["trust"] and f"up to {colluders} clients" in mech["trust"]
    assert mech["epsilon_replace_one"] > rec["epsilon"]
    wrap = mech["wrap_probability"]
    assert 0 <= wrap["per_coordinate"] <= wrap["per_round"] <= 1
    report = audit_run(tmp_path, use_witness=False, log=lambda m: None)
    assert report["epsilon_crosscheck"]["ok"] is True, report["epsilon_crosscheck"]
    md = render_markdown(report)
    assert "**zero-out** adjacency" in md and "every other client" not in md
    assert "Cross-check" in md and "Wrap probability" in md


def test_add_remove_is_refused_for_client_level_dp():
    with pytest.raises(ConfigFieldError, match="dp.adjacency.*add-remove"):
        cfg_of(dp={"mode": "client", "adjacency": "add-remove"})


def test_replace_one_doubles_the_client_level_noise():
    def plan(adj):
        cfg = cfg_of(dp={"mode": "client", "target_epsilon": None, "noise_multiplier": 1.0, "adjacency": adj})
        return privacy_plan(cfg, sizes=np.full(20, 50), dim=100, min_survivors=8, max_clients=10).ddg

    zero, rep = plan("zero-out"), plan("replace-one")
    assert rep.central_sigma == pytest.approx(2 * zero.central_sigma, rel=1e-6)
    assert zero.config.honest_survivors == 8 - 1


def test_budget_check_uses_the_rate_the_charge_uses():
    """L = 93 batches: Opacus (and so both backends) charge q = 1/92; the old check planned 1/93
    and admitted a client whose charge then raised BudgetExceededError after the release."""
    n, steps, z, delta = 93, 93, 1.0, 1e-5

    def eps(q):
        acc = Accountant()
        acc.compose(ComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps))
        return acc.get_epsilon(delta)

    assert eps(1 / 93) < eps(1 / 92)
    budget = (eps(1 / 93) + eps(1 / 92)) / 2
    cfg = cfg_of(dp={"mode": "sample", "target_epsilon": None, "noise_multiplier": z, "epsilon_budget": budget},
                 local={"batch_size": 1, "epochs": 1})
    sizes = np.full(20, n)
    plan = privacy_plan(cfg, sizes=sizes, dim=10, min_survivors=2, max_clients=10)
    charged = plan_client(n, batch_size=1, epochs=1, steps=None, dp=True)
    assert plan.client_event(n).event.sampling_rate == charged.accounted_rate == 1 / 92
    keep, refused = plan.admit([0, 1], sizes)
    assert keep == [] and refused == [0, 1]  # refused before any release
