"""Known answers and properties of the PRG, key agreement, KDF, AEAD and signatures."""

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings, strategies as st
from scipy import stats

from secagg.errors import AuthenticationError, InputError
from secagg.hazmat import aead, kex, prg
from secagg.hazmat.sign import SigningKey, verify

VECTORS = Path(__file__).parents[1] / "vectors"


# ---------------------------------------------------------------- PRG

def keystream_by_ecb(seed: bytes, nbytes: int) -> bytes:
    """The spec's keystream built independently: AES-256-ECB of big-endian counter blocks 0, 1, 2, ..."""
    nblocks = -(-nbytes // 16)
    blocks = b"".join(i.to_bytes(16, "big") for i in range(nblocks))
    enc = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    return (enc.update(blocks) + enc.finalize())[:nbytes]


@pytest.mark.parametrize("case", json.loads((VECTORS / "prg.json").read_text()), ids=lambda c: f"bits{c['bits']}")
def test_prg_matches_committed_vectors(case):
    words = prg.expand(bytes.fromhex(case["seed"]), len(case["words"]), case["bits"])
    assert [int(w) for w in words] == case["words"]


@pytest.mark.parametrize("bits", [1, 12, 20, 31, 32, 33, 40, 62])
def test_prg_words_follow_the_spec(bits):
    seed = hashlib.sha256(b"spec-seed").digest()
    n = 37
    width = 4 if bits <= 32 else 8
    stream = keystream_by_ecb(seed, n * width)
    expected = [int.from_bytes(stream[i * width:(i + 1) * width], "little") % 2**bits for i in range(n)]
    assert [int(w) for w in prg.expand(seed, n, bits)] == expected


@pytest.mark.parametrize("dim", [1, 5, prg.CHUNK_WORDS - 1, prg.CHUNK_WORDS, 2 * prg.CHUNK_WORDS + 3])
def test_add_masks_equals_sum_of_expansions_across_chunk_boundaries(dim):
    seeds = [bytes([i]) * 32 for i in range(1, 5)]
    acc = np.arange(dim, dtype=np.uint32)
    prg.add_masks(acc, plus=seeds[:3], minus=seeds[3:], bits=32)
    expected = np.arange(dim, dtype=np.uint32)
    for s in seeds[:3]:
        expected += prg.expand(s, dim, 32)
    expected -= prg.expand(seeds[3], dim, 32)
    np.testing.assert_array_equal(acc, expected)


@given(st.binary(min_size=32, max_size=32), st.integers(1, 62), st.integers(1, 300))
@settings(max_examples=40, deadline=None)
def test_masks_cancel(seed, bits, dim):
    dtype = np.uint32 if bits <= 32 else np.uint64
    x = (np.arange(dim, dtype=np.uint64) * 2654435761 % 2**bits).astype(dtype)
    acc = x.copy()
    prg.add_masks(acc, plus=[seed], bits=bits)
    assert acc.max(initial=0) < 2**bits
    prg.add_masks(acc, minus=[seed], bits=bits)
    np.testing.assert_array_equal(acc, x)


def test_prg_rejects_short_seed_and_wrong_accumulator():
    with pytest.raises(InputError):
        prg.expand(b"short", 4, 32)
    with pytest.raises(InputError):
        prg.add_masks(np.zeros(4, dtype=np.int64), plus=[bytes(32)], bits=32)


def test_prg_bytes_are_uniform():
    """Chi-square over byte values of 2**20 PRG words: uniform at the 0.1% level."""
    words = prg.expand(hashlib.sha256(b"uniform").digest(), 1 << 18, 32)
    counts = np.bincount(words.view(np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3


# ---------------------------------------------------------------- X25519 and HKDF

def test_x25519_rfc7748_vector():
    # RFC 7748, section 6.1
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert kex.public_from_private(alice).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    bob_pub = kex.public_from_private(bob)
    assert bob_pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    assert kex.agree(alice, bob_pub).hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out with hmac, as an independent oracle."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_oracle_hkdf_matches_rfc5869_case_1():
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), bytes.fromhex("000102030405060708090a0b0c"),
                      bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_kdf_follows_the_spec_and_committed_vectors():
    (case,) = json.loads((VECTORS / "kdf.json").read_text())
    a, b, session = (bytes.fromhex(case[k]) for k in ("private_u", "private_v", "session_id"))
    secret = kex.agree(a, kex.public_from_private(b))
    assert secret.hex() == case["shared_secret"]
    ctx = (3).to_bytes(4, "big") + (7).to_bytes(4, "big")
    mask = hkdf_sha256(secret, session, b"secagg/v1/pairwise-mask" + ctx, 32)
    share = hkdf_sha256(secret, session, b"secagg/v1/share-aead" + ctx, 32)
    assert kex.pairwise_mask_seed(a, kex.public_from_private(b), session_id=session, u=3, v=7) == mask
    assert kex.share_key(a, kex.public_from_private(b), session_id=session, u=3, v=7) == share
    assert mask.hex() == case["pairwise_mask_seed"] and share.hex() == case["share_key"]


def test_pairwise_seed_is_symmetric_and_bound_to_session_and_pair():
    a, b = kex.KeyPair.generate(), kex.KeyPair.generate()
    s1, s2 = bytes(32), bytes([1] * 32)
    ab = kex.pairwise_mask_seed(a.private, b.public, session_id=s1, u=1, v=2)
    assert ab == kex.pairwise_mask_seed(b.private, a.public, session_id=s1, u=2, v=1)
    assert ab != kex.pairwise_mask_seed(a.private, b.public, session_id=s2, u=1, v=2)
    assert ab != kex.pairwise_mask_seed(a.private, b.public, session_id=s1, u=1, v=3)
    assert ab != kex.share_key(a.private, b.public, session_id=s1, u=1, v=2)


def test_low_order_point_is_rejected():
    with pytest.raises(AuthenticationError):
        kex.agree(bytes([7] * 32), bytes(32))


# ---------------------------------------------------------------- AEAD

def test_aead_round_trip_and_binding():
    key, session = bytes([9] * 32), bytes([1] * 32)
    ct = aead.seal(key, b"shares", round_digest=session, stage=1, sender=3, receiver=4)
    assert aead.open_(key, ct, round_digest=session, stage=1, sender=3, receiver=4) == b"shares"
    for changed in [dict(round_digest=bytes(32)), dict(stage=2), dict(sender=4, receiver=3), dict(receiver=5)]:
        kw = dict(round_digest=session, stage=1, sender=3, receiver=4) | changed
        with pytest.raises(AuthenticationError):
            aead.open_(key, ct, **kw)
    for i in range(len(ct)):
        tampered = bytearray(ct)
        tampered[i] ^= 0x01
        with pytest.raises(AuthenticationError):
            aead.open_(key, bytes(tampered), round_digest=session, stage=1, sender=3, receiver=4)


# ---------------------------------------------------------------- Ed25519

def test_ed25519_rfc8032_test_1():
    sk = SigningKey.from_private(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert sk.public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    sig = sk.sign(b"")
    assert sig.hex() == ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
                         "39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    verify(sk.public, sig, b"")
    with pytest.raises(AuthenticationError):
        verify(sk.public, sig, b"x")
