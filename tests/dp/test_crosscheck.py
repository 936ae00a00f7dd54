"""dp.crosscheck: each claimed epsilon recomputed by another implementation; >1% apart is flagged.

The claim is computed here by the accountant that would produce it, then perturbed: the same
claim passes, the claim 2% off (either way) fails, so the check can fail.
"""

from __future__ import annotations

import pytest

from dp.accounting import Accountant
from dp.crosscheck import TOLERANCE, recheck
from dp.distributed import DDGConfig
from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent, UnitOfPrivacy

DELTA = 1e-5


def _claim(kind, events, **kw):
    acc = Accountant(kind, **kw)
    for e in events:
        acc.compose(e)
    return acc.get_privacy_spent(DELTA)


SAMPLED = [ComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 1000)]
CASES = {  # name: (accountant making the claim, events, the other implementation expected)
    "rdp-sampled": ("rdp", SAMPLED, "dp_accounting RDP"),
    "pld-sampled": ("pld", SAMPLED, "Opacus PRV"),
    "prv-sampled": ("prv", SAMPLED, "dp_accounting PLD"),
    "pld-unsampled": ("pld", [ComposedEvent(GaussianEvent(3.0), 20)], "dp_accounting PLD"),  # claim: closed form
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_true_claim_passes_and_a_claim_2_percent_off_is_flagged(name):
    kind, events, other = CASES[name]
    res = _claim(kind, events)
    assert res.accountant.value == kind
    exact = "exact" in (res.note or "")
    ok = recheck(events, DELTA, claimed=res.epsilon, produced_by=res.accountant, exact=exact)
    assert ok.ok is True and ok.relative_difference <= TOLERANCE, ok
    assert ok.implementation.startswith(other), ok
    for wrong in (1.02 * res.epsilon, 0.98 * res.epsilon):
        bad = recheck(events, DELTA, claimed=wrong, produced_by=res.accountant, exact=exact)
        assert bad.ok is False and bad.relative_difference > TOLERANCE, bad


def test_ddg_claim_is_rechecked_by_the_mpmath_reimplementation():
    plan = DDGConfig(noise_multiplier=1.0, l2_clip=1.0, bits=20, dim=100, num_clients=20, min_survivors=18,
                     rounds=5, colluders=1).plan()
    events = [ComposedEvent(plan.event, 5)]
    res = _claim("rdp", events, unit=UnitOfPrivacy.CLIENT)
    ok = recheck(events, DELTA, claimed=res.epsilon, produced_by="rdp", unit=UnitOfPrivacy.CLIENT)
    assert ok.ok is True and "mpmath" in ok.implementation
    bad = recheck(events, DELTA, claimed=1.02 * res.epsilon, produced_by="rdp", unit=UnitOfPrivacy.CLIENT)
    assert bad.ok is False
