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
    assert rec["mechanisms"][0]["wrap_probability"]["per_round"] == 0.0  # fixed point sized not to wrap


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


# --- the words a client sends, and the budget check at the sizes where Opacus charges 1/(L-1) ----

def _unequal_data(sizes, seed=0):
    """Blobs in 5 dimensions, client i holding sizes[i] examples (so count weights would show)."""
    from fl_core.learn.data import FederatedDataset

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 5)) * 3

    def draw(n):
        y = rng.integers(0, 3, size=n)
        return (centers[y] + rng.normal(size=(n, 5))).astype(np.float32), y

    return FederatedDataset.from_tensors([(draw(n), draw(5)) for n in sizes], draw(60), num_classes=3)


def _capture_rounds(monkeypatch):
    """Wrap the run loop's secure_mean: each round's updates, counts, words sent and outcome."""
    import fl_core.run.loop as loop

    rounds, real = [], loop.secure_mean

    def spy(updates, examples, **kw):
        rec = {"updates": dict(updates), "examples": dict(examples), "weighted": kw.get("weighted"),
               "spec": kw["spec"], "ddg": kw.get("ddg")}
        inner = kw.get("on_inputs")

        def on_inputs(words):
            rec["words"] = {u: w.copy() for u, w in words.items()}
            if inner is not None:
                inner(words)

        rec["outcome"] = real(updates, examples, **{**kw, "on_inputs": on_inputs})
        rounds.append(rec)
        return rec["outcome"]

    monkeypatch.setattr(loop, "secure_mean", spy)
    return rounds


SIZES = [8, 16, 32, 64, 96, 128]
WORDS_RUN = {"rounds": 1, "clients_per_round": 6, "secure_randomness": False, "model": {"hidden": 8},
             "local": {"epochs": 1, "lr": 0.5, "batch_size": 8, "momentum": 0.0},
             "secagg": {"min_survivors": 0.5, "dropout": {"masked_input": 0.0}}}


@pytest.mark.parametrize("mode", ["none", "sample", "client"])
def test_the_words_a_client_sends_hold_no_example_count_under_dp(tmp_path, monkeypatch, mode):
    """Each client's words are decoded here one by one. Without DP the last word is its exact
    count (so this detector works); under DP the words are the clipped update alone (sample) or
    the DDG's padded vector (client), and the released mean is uniform over the survivors."""
    from secagg.encoding import clip_l2
    from tests.fl_core.run.custom_parts import TwoLayer

    rounds = _capture_rounds(monkeypatch)
    dp = {"none": {"mode": "none"}, "sample": {"mode": "sample", "noise_multiplier": 1.0},
          "client": {"mode": "client", "noise_multiplier": 1.0}}[mode]
    import fl_core

    fl_core.run({**WORDS_RUN, "dp": dp}, tmp_path, model=TwoLayer, data=_unequal_data(SIZES),
                progress=False, log=lambda m: None)
    (rec,) = rounds
    updates, examples, out = rec["updates"], rec["examples"], rec["outcome"]
    assert sorted(examples.values()) == SIZES  # the loop knows the counts; the question is what leaves
    dim = len(next(iter(updates.values())))
    if mode == "client":
        assert rec["ddg"] is not None and rec["weighted"] is False
        assert {len(w) for w in rec["words"].values()} == {rec["ddg"].padded_dim}
        return
    enc = rec["spec"].input_spec(dim, weighted=rec["weighted"]).encoder()
    if mode == "none":
        assert rec["weighted"] is True
        for u, w in rec["words"].items():
            assert len(w) == dim + 1 and int(w[-1]) == examples[u]
        return
    assert rec["weighted"] is False
    step = 1.0 / enc.fixed.scale
    clipped = {u: clip_l2(np.asarray(updates[u], np.float64), enc.l2_clip) for u in updates}
    for u, w in rec["words"].items():
        assert len(w) == dim  # no count word
        one = enc.fixed.decode_sum(w, count=1)  # this client's words alone: its clipped update, unweighted
        np.testing.assert_allclose(one, clipped[u], atol=1.01 * step, rtol=0)
    surv = out.survivors
    uniform = np.mean([clipped[u] for u in surv], axis=0)
    by_count = sum(clipped[u] * examples[u] for u in surv) / sum(examples[u] for u in surv)
    np.testing.assert_allclose(out.mean_update, uniform, atol=1.01 * step, rtol=0)
    assert np.abs(by_count - uniform).max() > 100 * step  # the two means are far apart: the check can fail


def _one_visit_eps(q, steps, z, delta, *more):
    """epsilon of `steps` DP-SGD steps at rate q, then of each (q, steps) in `more`."""
    acc = Accountant()
    for rate, count in ((q, steps), *more):
        acc.compose(ComposedEvent(PoissonSampledEvent(rate, GaussianEvent(z)), count))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("batches", [93, 99, 105, 117, 123, 186])
def test_a_client_over_budget_at_the_charged_rate_is_refused_before_its_release(tmp_path, batches):
    """L = ceil(n/B) batches where Opacus charges q = 1/(L-1) > 1/L. The budget admits the
    first visit, and a second visit only if it were charged at 1/L: the run refuses the second visit
    before its release (never BudgetExceededError after it), and every client's epsilon stays
    within the budget."""
    import fl_core
    from dp.calibration import dp_sgd_sampling_rate
    from tests.fl_core.run.custom_parts import TwoLayer

    z, delta = 2.0, 1e-3
    assert dp_sgd_sampling_rate(num_examples=batches, batch_size=1) == 1 / (batches - 1)
    charged = 1 / (batches - 1)
    # what the old check computed for the second visit (first visit as charged, second at 1/L),
    # and what the charge after that visit would be
    low = _one_visit_eps(charged, batches, z, delta, (1 / batches, batches))
    high = _one_visit_eps(charged, 2 * batches, z, delta)
    assert _one_visit_eps(charged, batches, z, delta) < low < high
    budget = (low + high) / 2  # the old check admitted the second visit; its charge then exceeded
    cfg = {"rounds": 2, "clients_per_round": 3, "secure_randomness": False,
           "local": {"epochs": 1, "lr": 0.05, "batch_size": 1, "momentum": 0.0},
           "dp": {"mode": "sample", "noise_multiplier": z, "epsilon_budget": budget, "delta": delta},
           "secagg": {"min_survivors": 1.0, "dropout": {"masked_input": 0.0}}}
    s = fl_core.run(cfg, tmp_path, model=TwoLayer, data=_unequal_data([batches] * 3), progress=False,
                    log=lambda m: None)
    m1, m2 = s.metrics
    assert (m1["sampled"], m1["refused_by_budget"]) == (3, 0)
    assert (m2["sampled"], m2["refused_by_budget"]) == (0, 3)  # refused before training and release
    rec = json.loads((tmp_path / "privacy.json").read_text())
    assert rec["epsilon"] <= budget
    assert rec["epsilon"] == pytest.approx(_one_visit_eps(1 / (batches - 1), batches, z, delta), rel=1e-9)


def test_poisson_sampling_counts_colluders_among_a_round_not_the_population():
    """With Poisson sampling the colluders are secagg's corrupt fraction of the most clients a
    round may hold (mean + 7 sd; a larger round aborts), not of the whole population: 0.05 of
    10,000 clients would exceed min_survivors = 180 and leave no honest share."""
    from scipy import stats

    from fl_core.run.privacy import poisson_cohort_cap

    cap = poisson_cohort_cap(10_000, 0.03)
    assert 300 < cap < 10_000 and stats.binom.sf(cap, 10_000, 0.03) < 1e-9
    cfg = cfg_of(clients_per_round=None, sampling_rate=0.5, dp={"mode": "client", "noise_multiplier": 1.0})
    cap = poisson_cohort_cap(20, 0.5)
    plan = privacy_plan(cfg, sizes=np.full(20, 50), dim=100, min_survivors=6, max_clients=20, cohort_cap=cap)
    assert plan.cohort_cap == cap and plan.colluders == math.ceil(cfg.secagg.corrupt * cap)
    assert plan.ddg.config.honest_survivors == 6 - plan.colluders
    assert f"at most {cap} clients of a round" in plan.describe([])["mechanisms"][0]["trust"]
