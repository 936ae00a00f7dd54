"""The versioned byte encoding: committed vectors, round trips, and typed errors on bad bytes."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from secagg import wire
from secagg.errors import DecodeError, SecAggError
from secagg.messages import MaskedInput

from tests.vectors.make_vectors import SESSION, example_messages

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "messages.json").read_text())


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_encoding_matches_committed_vector_and_round_trips(name):
    msg = example_messages()[name]
    data = wire.encode(msg)
    assert data.hex() == VECTORS[name]
    assert wire.decode(data) == msg


def test_header_layout_is_as_documented():
    data = bytes.fromhex(VECTORS["consistency_request"])
    assert data[:2] == b"SA" and data[2] == 2 and data[3] == 6
    assert data[4:36] == SESSION and struct.unpack(">I", data[36:40]) == (5,)
    assert struct.unpack(">4I", data[40:]) == (3, 1, 2, 5)


def test_bit_packing_is_little_endian_at_exactly_bits():
    # words 0,1,4095,2048,7 at 12 bits: bit i of the stream is bit (i % 12) of word i // 12
    data = bytes.fromhex(VECTORS["masked_input_12"])[40 + 6:]  # bits, dim, sig_len = 0
    words = [0, 1, 4095, 2048, 7]
    bits = "".join(format(w, "012b")[::-1] for w in words)
    bits += "0" * (-len(bits) % 8)
    expected = bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8))
    assert data == expected


@given(st.integers(1, 62), st.integers(1, 2000), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_pack_unpack_round_trip(bits, dim, seed):
    rng = np.random.default_rng(seed)
    dtype = wire.word_dtype(bits)
    words = rng.integers(0, 2**bits, size=dim, dtype=np.uint64).astype(dtype)
    data = wire.pack_words(words, bits)
    assert len(data) == wire.packed_size(dim, bits)
    np.testing.assert_array_equal(wire.unpack_words(data, dim, bits), words)


def test_masked_input_upload_is_d_bits_over_8_plus_header():
    d = 1000
    for bits in (16, 20, 32):
        msg = MaskedInput(SESSION, 1, bits, np.zeros(d, dtype=wire.word_dtype(bits)))
        assert len(wire.encode(msg)) == wire.HEADER.size + 6 + (d * bits + 7) // 8   # bits, dim, sig_len
        signed = MaskedInput(SESSION, 1, bits, msg.words, bytes(64))                # active mode: + 64
        assert len(wire.encode(signed)) == wire.HEADER.size + 6 + 64 + (d * bits + 7) // 8


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_every_truncation_and_extension_is_a_decode_error(name):
    data = bytes.fromhex(VECTORS[name])
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            wire.decode(data[:cut])
    with pytest.raises(DecodeError):
        wire.decode(data + b"\0")


def test_bad_header_fields():
    data = bytearray.fromhex(VECTORS["advertise_keys"])
    for offset, value, match in [(0, ord("X"), "magic"), (2, 1, "version"), (3, 99, "type")]:
        bad = bytearray(data)
        bad[offset] = value
        with pytest.raises(DecodeError, match=match):
            wire.decode(bytes(bad))


def test_unsorted_or_duplicate_ids_are_rejected():
    head = bytes.fromhex(VECTORS["consistency_request"])[:40]
    for ids in [(2, 1), (1, 1)]:
        with pytest.raises(DecodeError, match="strictly increasing"):
            wire.decode(head + struct.pack(">3I", 2, *ids))


def test_huge_count_is_rejected_before_allocating():
    head = bytes.fromhex(VECTORS["consistency_request"])[:40]
    with pytest.raises(DecodeError, match="cannot fit"):
        wire.decode(head + struct.pack(">I", 2**32 - 1))


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_give_only_typed_errors(data):
    try:
        wire.decode(data)
    except SecAggError:
        pass


@given(st.sampled_from(sorted(VECTORS)), st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_messages_decode_or_raise_decode_error(name, data):
    raw = bytearray.fromhex(VECTORS[name])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        msg = wire.decode(bytes(raw))
    except DecodeError:
        return
    assert wire.encode(msg) == bytes(raw)  # whatever decodes, re-encodes to the same bytes
