"""One encoding of an update into words and back (fl_core.secure.inputs), shared by the
simulator path (round.secure_mean) and every transport (transport, flower): the same update, seeds
and public parameters give the same words on both paths, bit for bit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dp.distributed import DDGConfig
from secagg.config import GraphKind
from secagg.errors import ConfigError, InputError

from fl_core.secure.inputs import Encoder, InputKind, InputSpec
from fl_core.secure.round import SecureRoundSpec, secure_mean

IDS = (0, 1, 2, 3)
SEED = bytes(range(32))


def _updates(d, scale):
    rng = np.random.default_rng(3)
    return {u: rng.normal(0, scale, d) for u in IDS}


def _simulated_words(updates, examples, *, spec, ddg, rng, weighted=False):
    seen = {}
    out = secure_mean(updates, examples, spec=spec, ddg=ddg, round_seed=SEED, rng=rng, secure_randomness=False,
                      on_inputs=seen.update, weighted=weighted)
    return seen, out


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "uniform"])
def test_fixed_point_words_are_the_same_on_the_simulator_path_and_a_transport(weighted):
    """Without DP the mean is example-weighted (the count is one more word); under any DP mode it is
    uniform and no count leaves a client. Either way a transport's setup (an InputSpec) and the
    simulator give the same words."""
    updates = _updates(50, 1.0)  # norms ~7: clipped to 2
    examples = {u: 10 * (u + 1) for u in IDS}
    rspec = SecureRoundSpec(enabled=True, graph=GraphKind.COMPLETE, bits=32, min_survivors=4, update_clip=2.0,
                            max_clients=4, example_cap=100)
    seen, out = _simulated_words(updates, examples, spec=rspec, ddg=None, rng=np.random.default_rng(7),
                                 weighted=weighted)
    spec = InputSpec(InputKind.FIXED_POINT, dim=50, bits=32, l2_clip=2.0, num_clients=4, example_cap=100,
                     weighted=weighted)
    spec = InputSpec.from_dict(spec.to_dict())  # as a node reads it from the round setup
    assert spec.word_dim == (51 if weighted else 50)
    enc = spec.encoder()
    rng = np.random.default_rng(7)  # the simulator draws each client's rounding from it, in id order
    for u in IDS:
        words = enc.encode(updates[u], client_id=u, round_number=1, round_seed=SEED, num_examples=examples[u], rng=rng)
        assert np.array_equal(words, seen[u]), u
    # the mean the simulator decodes is the transport's decode of the same sum
    total = sum(seen[u].astype(np.uint64) for u in IDS).astype(np.uint32)
    dec = enc.decode(total, survivors=4, round_seed=SEED)
    assert np.allclose(dec.mean.astype(np.float32), out.mean_update)
    assert dec.total_examples == out.total_examples == (100 if weighted else None)
    assert not np.allclose(out.mean_update, 0)


def test_a_setup_without_the_weighted_field_reads_as_weighted():
    d = InputSpec(InputKind.FIXED_POINT, dim=5, bits=32, l2_clip=1.0, num_clients=3, example_cap=10).to_dict()
    del d["weighted"]  # written before the field existed
    assert InputSpec.from_dict(d).weighted and InputSpec.from_dict(d).word_dim == 6
    with pytest.raises(ConfigError, match="weighted must be a bool"):
        InputSpec(InputKind.FIXED_POINT, dim=5, bits=32, weighted="no")


def test_ddg_words_are_the_same_on_the_simulator_path_and_a_transport():
    updates = _updates(30, 0.5)
    cfg = dict(l2_clip=1.0, bits=32, dim=30, num_clients=4, min_survivors=3, epsilon=4.0, delta=1e-5, rounds=2)
    plan = DDGConfig(**cfg).plan()
    rspec = SecureRoundSpec(enabled=True, graph=GraphKind.COMPLETE, bits=32, min_survivors=3)
    seen, _ = _simulated_words(updates, {u: 1 for u in IDS}, spec=rspec, ddg=plan, rng=np.random.default_rng(0))
    spec = InputSpec(InputKind.DDG, **cfg)
    for enc in (Encoder.ddg(plan), spec.encoder()):  # the plan given, or built from the public setup
        for u in IDS:
            secret = hashlib.sha256(b"noise" + SEED + u.to_bytes(8, "big")).digest()
            words = enc.encode(updates[u], client_id=u, round_number=1, round_seed=SEED, secret_seed=secret)
            assert np.array_equal(words, seen[u]), u


def test_the_one_clip_bounds_the_weighted_update_exactly():
    enc = Encoder.fixed_point(dim=1000, bits=32, l2_clip=0.5, max_clients=2, example_cap=10)
    big = np.full(1000, 3.0)
    words = enc.encode(big, client_id=0, round_number=1, round_seed=SEED, num_examples=10,
                       rng=np.random.default_rng(0))
    back = enc.fixed.decode_sum(words[:-1], count=1)
    assert np.linalg.norm(back) <= 0.5 + 1000 ** 0.5 / enc.fixed.scale  # clip, plus one rounding step each
    assert np.linalg.norm(back) > 0.49


def test_encoder_errors_name_the_bad_value():
    with pytest.raises(ConfigError, match="example_cap=1000, could wrap 2\\^8"):
        Encoder.fixed_point(dim=3, bits=8, l2_clip=1.0, max_clients=1, example_cap=1000)
    enc = Encoder.fixed_point(dim=3, bits=32, l2_clip=1.0, max_clients=2, example_cap=10)
    with pytest.raises(InputError, match=r"shape \(4,\)"):
        enc.encode(np.zeros(4), client_id=0, round_number=1, round_seed=SEED, num_examples=1)
    with pytest.raises(InputError, match="num_examples=0"):
        enc.encode(np.zeros(3), client_id=0, round_number=1, round_seed=SEED, num_examples=0)
    with pytest.raises(InputError, match="example count is 0"):
        enc.decode(np.zeros(4, dtype=np.uint32), survivors=1, round_seed=SEED)
