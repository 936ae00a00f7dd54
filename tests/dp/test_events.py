"""Events: validation with typed errors naming the value, immutability, dict round trips."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.errors import DPConfigError, DPError
from dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    DPEvent,
    GaussianEvent,
    PoissonSampledEvent,
    UnitOfPrivacy,
    event_from_dict,
)
from secagg.errors import SecAggError


def ddg(**kw):
    args = dict(l2_sensitivity=100.0, sigma=50.0, dim=1024, num_clients=10)
    args.update(kw)
    return DistributedDiscreteGaussianEvent(**args)


def test_error_tree():
    assert issubclass(DPConfigError, DPError)
    assert issubclass(DPConfigError, ValueError)
    assert issubclass(DPError, SecAggError)


@pytest.mark.parametrize("z", [0, 0.0, -1.0, -1e-9, math.nan, math.inf, True, "1.0", None])
def test_gaussian_rejects_bad_noise_multiplier(z):
    with pytest.raises(DPConfigError) as info:
        GaussianEvent(z)
    assert "noise_multiplier" in str(info.value)
    assert repr(z) in str(info.value)


@pytest.mark.parametrize("q", [0, 0.0, -0.1, 1.0000001, 2, math.nan, math.inf])
def test_poisson_rejects_bad_sampling_rate(q):
    with pytest.raises(DPConfigError) as info:
        PoissonSampledEvent(q, GaussianEvent(1.0))
    assert "sampling_rate" in str(info.value) and repr(q) in str(info.value)


def test_poisson_accepts_q_one_and_only_base_mechanisms():
    assert PoissonSampledEvent(1, GaussianEvent(1.0)).sampling_rate == 1.0
    PoissonSampledEvent(0.5, ddg())
    inner = PoissonSampledEvent(0.5, GaussianEvent(1.0))
    for bad in (inner, ComposedEvent(GaussianEvent(1.0), 3), "gaussian", None):
        with pytest.raises(DPConfigError):
            PoissonSampledEvent(0.5, bad)


@pytest.mark.parametrize("count", [0, -3, 1.5, True, "2"])
def test_composed_rejects_bad_count(count):
    with pytest.raises(DPConfigError) as info:
        ComposedEvent(GaussianEvent(1.0), count)
    assert "count" in str(info.value) and repr(count) in str(info.value)


def test_composed_rejects_non_event():
    with pytest.raises(DPConfigError):
        ComposedEvent({"type": "gaussian"}, 2)


@pytest.mark.parametrize(
    "field,value",
    [
        ("l2_sensitivity", 0.0),
        ("l2_sensitivity", -1.0),
        ("sigma", 0.0),
        ("sigma", math.inf),
        ("dim", 0),
        ("dim", 3.5),
        ("num_clients", 0),
        ("l1_sensitivity", -2.0),
    ],
)
def test_ddg_rejects_bad_fields(field, value):
    with pytest.raises(DPConfigError) as info:
        ddg(**{field: value})
    assert field in str(info.value) and repr(value) in str(info.value)


def test_ddg_needs_client_sigma_at_least_half():
    # sigma of the sum = 0.5 * sqrt(16) = 2 -> per-client exactly 0.5: allowed.
    assert ddg(sigma=2.0, num_clients=16).client_sigma == pytest.approx(0.5)
    with pytest.raises(DPConfigError) as info:
        ddg(sigma=1.9, num_clients=16)
    assert "1.9" in str(info.value)


def test_events_are_frozen_and_hashable():
    e = GaussianEvent(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.noise_multiplier = 2.0  # type: ignore[misc]
    assert {e, GaussianEvent(1)} == {GaussianEvent(1.0)}
    assert hash(ddg()) == hash(ddg())


def test_unit_of_privacy_values():
    assert UnitOfPrivacy("example") is UnitOfPrivacy.EXAMPLE
    assert UnitOfPrivacy("client") is UnitOfPrivacy.CLIENT


def test_to_dict_known_answer():
    event = ComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 100)
    assert event.to_dict() == {
        "type": "composed",
        "count": 100,
        "event": {
            "type": "poisson_sampled",
            "sampling_rate": 0.01,
            "event": {"type": "gaussian", "noise_multiplier": 1.1},
        },
    }


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"type": "laplace", "scale": 1.0},
        {"type": "gaussian"},
        {"type": "gaussian", "noise_multiplier": 1.0, "extra": 1},
        {"type": "gaussian", "noise_multiplier": -1.0},
        {"type": "poisson_sampled", "sampling_rate": 0.1, "event": {"type": "nope"}},
    ],
)
def test_from_dict_rejects_malformed(bad):
    with pytest.raises(DPConfigError):
        event_from_dict(bad)


def test_from_dict_on_subclass_checks_type():
    assert GaussianEvent.from_dict({"type": "gaussian", "noise_multiplier": 2.0}) == GaussianEvent(2.0)
    with pytest.raises(DPConfigError):
        GaussianEvent.from_dict(ddg().to_dict())


_base = st.one_of(
    st.builds(GaussianEvent, st.floats(min_value=1e-3, max_value=1e3)),
    st.builds(
        DistributedDiscreteGaussianEvent,
        l2_sensitivity=st.floats(min_value=1e-3, max_value=1e6),
        sigma=st.floats(min_value=1e3, max_value=1e7),
        dim=st.integers(min_value=1, max_value=10**7),
        num_clients=st.integers(min_value=1, max_value=10**4),
        l1_sensitivity=st.none() | st.floats(min_value=1e-3, max_value=1e9),
    ),
)
_events = st.recursive(
    st.one_of(_base, st.builds(PoissonSampledEvent, st.floats(min_value=1e-6, max_value=1.0), _base)),
    lambda inner: st.builds(ComposedEvent, inner, st.integers(min_value=1, max_value=10**6)),
    max_leaves=4,
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_events)
def test_dict_round_trip_through_json(event):
    data = json.loads(json.dumps(event.to_dict()))
    assert DPEvent.from_dict(data) == event
    assert event_from_dict(data) == event
