import hashlib
import json
import os
import random
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_core.run import checkpoint as ck
from fl_core.run.checkpoint import (
    CHECKPOINT_NAME,
    MAGIC,
    decode_state,
    encode_state,
    get_rng_states,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_states,
)
from fl_core.errors import CheckpointError
from fl_core.learn.strategy import make_server_optimizer


def _state():
    return {
        "round": 7,
        "big": 2**100 + 1,
        "lr": 0.1,
        "nan": float("nan"),
        "flag": True,
        "none": None,
        "name": "run \u00e9\n\"q\"",
        "pair": (1, "a", (2.5, None)),
        "list": [1, [2, 3]],
        "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "i": torch.tensor(3)},
        "arrays": {"f64": np.linspace(0, 1, 5), "u32": np.arange(4, dtype=np.uint32), "empty": np.zeros((0, 2))},
        "np_scalar": np.float32(1.5),
    }


def _same(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "run", _state())
    assert path == tmp_path / "run" / CHECKPOINT_NAME and has_checkpoint(tmp_path / "run")
    out = load_checkpoint(tmp_path / "run")
    expected = _state()
    expected["np_scalar"] = 1.5  # numpy scalars come back as Python numbers
    _same(out, expected)


def test_header_layout(tmp_path):
    # Independent check of the documented layout: magic, big-endian length, SHA-256 of the rest.
    blob = (save_checkpoint(tmp_path, {"a": 1})).read_bytes()
    magic, length = blob[:8], struct.unpack(">Q", blob[8:16])[0]
    assert magic == MAGIC == b"FLCKPT01"
    assert length == len(blob) - 48
    assert blob[16:48] == hashlib.sha256(blob[48:]).digest()
    n_json = struct.unpack(">Q", blob[48:56])[0]
    assert json.loads(blob[56:56 + n_json]) == {"a": 1}


@pytest.fixture(scope="module")
def blob():
    return encode_state({"w": np.arange(100, dtype=np.float32), "round": 3})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_altered_byte_is_detected(blob, data):
    i = data.draw(st.integers(0, len(blob) - 1))
    flip = data.draw(st.integers(1, 255))
    bad = bytearray(blob)
    bad[i] ^= flip
    with pytest.raises(CheckpointError):
        decode_state(bytes(bad))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000))
def test_cut_short_or_extended_is_detected(blob, cut):
    cut = cut % len(blob)
    with pytest.raises(CheckpointError):
        decode_state(blob[:cut])
    with pytest.raises(CheckpointError, match="cut short or extended"):
        decode_state(blob + b"\0")


def test_verified_but_malformed_payload_is_refused():
    payload = struct.pack(">Q", 5) + b"{not json"
    blob = MAGIC + struct.pack(">Q", len(payload)) + hashlib.sha256(payload).digest() + payload
    with pytest.raises(CheckpointError, match="cannot be decoded"):
        decode_state(blob)


def test_missing_and_unstorable(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    assert not has_checkpoint(tmp_path)
    for bad in ({"s": {1, 2}}, {1: "int key"}, {"x": {"__array__": 0}}, {"o": np.array([object()])},
                {"t": torch.zeros(2, dtype=torch.bfloat16)}):
        with pytest.raises(CheckpointError):
            save_checkpoint(tmp_path, bad)
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_crash_during_replace_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"round": 1})

    def boom(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path, {"round": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path) == {"round": 1}
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # the temp file was removed
    save_checkpoint(tmp_path, {"round": 2})
    assert load_checkpoint(tmp_path) == {"round": 2} and os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_server_optimizer_state_survives_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=20).astype(np.float32)
    deltas = rng.normal(size=(4, 20))
    a = make_server_optimizer("fedyogi")
    xa = x
    for d in deltas:
        xa = a.step(xa, d)
    b = make_server_optimizer("fedyogi")
    xb = b.step(b.step(x, deltas[0]), deltas[1])
    save_checkpoint(tmp_path, {"opt": b.state_dict(), "x": xb})
    state = load_checkpoint(tmp_path)
    c = make_server_optimizer("fedyogi")
    c.load_state_dict(state["opt"])
    xc = c.step(c.step(state["x"], deltas[2]), deltas[3])
    np.testing.assert_array_equal(xa, xc)


def _draw(np_gen, torch_gen):
    return (random.random(), np.random.random(), torch.rand(1).item(), np_gen.random(), torch.rand(1, generator=torch_gen).item())


def test_rng_states_restore_every_stream(tmp_path):
    gens = {"np": np.random.default_rng(5), "torch": torch.Generator().manual_seed(5)}
    _draw(gens["np"], gens["torch"])
    save_checkpoint(tmp_path, {"rng": get_rng_states(gens)})
    first = [_draw(gens["np"], gens["torch"]) for _ in range(3)]
    fresh = {"np": np.random.default_rng(99), "torch": torch.Generator().manual_seed(99)}
    set_rng_states(load_checkpoint(tmp_path)["rng"], fresh)
    again = [_draw(fresh["np"], fresh["torch"]) for _ in range(3)]
    assert first == again


def test_rng_state_errors():
    state = get_rng_states({"g": np.random.default_rng(0)})
    with pytest.raises(CheckpointError, match="no generator"):
        set_rng_states(state, {"h": np.random.default_rng(0)})
    with pytest.raises(CheckpointError, match="numpy"):
        set_rng_states(state, {"g": torch.Generator()})
    with pytest.raises(CheckpointError):
        get_rng_states({"g": random.Random()})
    with pytest.raises(CheckpointError):
        set_rng_states({"python": None})
