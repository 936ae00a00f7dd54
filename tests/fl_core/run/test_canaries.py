"""Canaries (client directions, example canaries) and the audit's message files."""

import math

import numpy as np
import pytest

from fl_core.errors import FLError
from fl_core.run.canaries import ClientCanaries, ExampleCanaries, read_messages, write_messages


# ---------------------------------------------------------------- canaries


def test_client_canaries_are_unit_directions_sampled_like_clients():
    c = ClientCanaries(seed=b"s" * 32, dim=500, inserted=40, null=10, l2_clip=0.5, first_id=100, rate=0.25,
                       per_round=10)
    d = c.directions(range(50))
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.array_equal(d, c.directions(range(50)))  # deterministic in the seed
    # independent directions in d = 500 are nearly orthogonal: |cos| < 6/sqrt(500) with overwhelming odds
    cos = d @ d.T - np.eye(50)
    assert np.abs(cos).max() < 6 / math.sqrt(500)
    ups = c.updates(3)
    assert len(ups) == 10 and all(100 <= u < 140 for u in ups)
    assert all(np.linalg.norm(v) == pytest.approx(0.5, rel=1e-6) for v in ups.values())
    poisson = ClientCanaries(seed=b"t" * 32, dim=10, inserted=1000, null=0, l2_clip=1.0, first_id=0, rate=0.3)
    sizes = [len(poisson.members(r)) for r in range(20)]
    # 20 x Binomial(1000, 0.3): mean 300, sd of the average 3.2
    assert np.mean(sizes) == pytest.approx(300, abs=15)


def test_example_canaries_are_half_included_and_reproducible():
    e = ExampleCanaries(seed=b"x" * 32, count=2000, num_clients=7)
    inc = e.included()
    assert np.array_equal(inc, ExampleCanaries(seed=b"x" * 32, count=2000, num_clients=7).included())
    # Binomial(2000, 1/2): sd 22
    assert abs(int(inc.sum()) - 1000) < 110
    x, y = e.examples((8,), 10, 0.0, 1.0)
    assert x.shape == (2000, 8) and float(x.min()) >= 0 and float(x.max()) <= 1 and int(y.max()) <= 9


def test_message_files_round_trip_and_reject_damage(tmp_path):
    msgs = [(0, 3, b"abc"), (2, 7, bytes(range(200))), (4, 1, b"")]
    path = tmp_path / "round_0001.msgs"
    write_messages(path, msgs)
    assert read_messages(path) == msgs
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(FLError, match="truncated|cut short"):
        read_messages(path)
    path.write_bytes(b"NOTAUDIT")
    with pytest.raises(FLError, match="magic"):
        read_messages(path)
