"""Known-answer vectors of tests/vectors/protocol.json (round digest, mask-bound share key, share
AEAD, self-mask commitment, the three signature inputs), recomputed two ways: by the library's own
functions, and from the primitives (hashlib, hmac, X25519, AES-GCM, Ed25519) following
docs/protocol.md word for word. The vectors printed in docs/protocol.md must equal the file, and
the decoder rules the spec states are checked against secagg.wire and secagg.hazmat.shamir."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg import wire
from secagg.config import GraphKind, RoundConfig
from secagg.errors import DecodeError, InconsistentSharesError
from secagg.hazmat import shamir
from secagg.messages import MaskedInput, SignedBy, UnmaskRequest
from tests.vectors.make_vectors import protocol_vectors, vector_configs

ROOT = Path(__file__).parents[2]
FILE = ROOT / "tests" / "vectors" / "protocol.json"
V = json.loads(FILE.read_text())
H = bytes.fromhex


def test_the_library_reproduces_the_committed_vectors():
    assert protocol_vectors() == V


def test_the_vectors_printed_in_docs_protocol_md_equal_the_file():
    text = (ROOT / "docs" / "protocol.md").read_text()
    m = re.search(r"<!-- vectors: tests/vectors/protocol.json -->\s*```json\n(.*?)```", text, re.S)
    assert m, "docs/protocol.md lost its vectors block"
    assert json.loads(m.group(1)) == V


# ------------------------------------------------------------------ from the primitives, by the spec

def u32(*xs: int) -> bytes:
    return struct.pack(f">{len(xs)}I", *xs)


def spec_round_encoding(r: dict) -> bytes:
    ids = r["client_ids"]
    seed = H(r["graph_seed"] or r["session_id"])
    out = (b"secagg/v2/round" + bytes([2]) + H(r["session_id"]) + u32(len(ids), *ids) + u32(r["dim"])
           + bytes([r["bits"]]) + u32(r["threshold"], r["k"]) + bytes([{"complete": 1, "sparse": 2}[r["graph"]]])
           + seed + u32(r["min_survivors"]) + bytes([{"semi-honest": 1, "active": 2}[r["mode"]]])
           + u32(r["max_corrupt_neighbours"]) + bytes([r["insecure_weak_threshold"], r["excess_noise"]]))
    if r["mode"] == "active":
        vk = {int(u): H(pk) for u, pk in r["verify_keys"].items()}
        body = b"".join(u32(u) + vk[u] for u in sorted(vk))
        vk_digest = hashlib.sha256(b"secagg/v2/verify-keys" + u32(len(vk)) + body).digest()
        assert vk_digest.hex() == r["verify_keys_digest"]
        out += vk_digest
    return out


@pytest.mark.parametrize("name", sorted(V["rounds"]))
def test_round_digest_from_the_spec(name):
    r = V["rounds"][name]
    enc = spec_round_encoding(r)
    assert enc.hex() == r["encoding"]
    assert hashlib.sha256(enc).hexdigest() == r["round_digest"]
    assert vector_configs()[name].round_digest.hex() == r["round_digest"]


def test_every_round_parameter_changes_the_digest():
    """Each field the spec lists is in the digest: changing any one changes it."""
    cfg = vector_configs()["active_sparse"]
    other_keys = dict(cfg.verify_keys)
    other_keys[3] = bytes(32)
    changes = {"session_id": bytes(32), "client_ids": cfg.client_ids[:-1] + (42,), "dim": 5, "bits": 17,
               "threshold": 3, "min_survivors": 5, "graph_seed": bytes([0xA6]) * 32, "max_corrupt_neighbours": 0,
               "excess_noise": True, "verify_keys": other_keys, "k": 6,
               "insecure_weak_threshold": True}
    seen = {cfg.round_digest}
    for name, value in changes.items():
        kw = {name: value}
        if name == "client_ids":
            kw["verify_keys"] = {**{u: cfg.verify_keys[u] for u in cfg.client_ids[:-1]}, 42: bytes(32)}
        if name == "k":
            kw["threshold"] = 5
        changed = dataclasses.replace(cfg, **kw)
        assert changed.round_digest not in seen, name
        seen.add(changed.round_digest)
    semi = dataclasses.replace(cfg, verify_keys=None)          # mode
    complete = RoundConfig(session_id=cfg.session_id, client_ids=cfg.client_ids[:5], dim=4, bits=16,
                           threshold=4, min_survivors=4, graph=GraphKind.SPARSE, k=4)   # k = n-1 but sparse
    for c in (semi, complete, dataclasses.replace(complete, graph=GraphKind.COMPLETE, k=None)):
        assert c.round_digest not in seen
        seen.add(c.round_digest)


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with SHA-256, L = 32 (one block)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_mask_bound_share_key_from_the_spec():
    k = V["share_key"]
    r = V["rounds"][k["round"]]
    sid, u, v = H(r["session_id"]), k["u"], k["v"]
    secret = X25519PrivateKey.from_private_bytes(H(k["c_u_private"])).exchange(
        X25519PublicKey.from_public_bytes(H(k["c_v_public"])))
    pair = u32(min(u, v), max(u, v))
    share_key = hkdf(secret, sid, b"secagg/v1/share-aead" + pair)
    assert share_key.hex() == k["share_aead_key"]
    first, second = (k["s_u_public"], k["s_v_public"]) if u < v else (k["s_v_public"], k["s_u_public"])
    bound = hkdf(share_key, sid, b"secagg/v1/share-aead-mask-bound" + pair + H(first) + H(second))
    assert bound.hex() == k["mask_bound_share_key"]


def test_share_aead_from_the_spec():
    a = V["aead"]
    r = V["rounds"][a["round"]]
    nonce = u32(a["sender"], a["receiver"], a["stage"])
    ad = b"secagg/v2/share" + H(r["round_digest"]) + bytes([a["stage"]]) + u32(a["sender"], a["receiver"])
    assert nonce.hex() == a["nonce"] and ad.hex() == a["associated_data"]
    assert a["key"] == V["share_key"]["mask_bound_share_key"]
    plain = H(a["plaintext"])
    assert len(plain) == wire.SHARE_PLAINTEXT_BYTES and plain[:8] == u32(a["sender"], a["receiver"])
    assert AESGCM(H(a["key"])).encrypt(nonce, plain, ad).hex() == a["ciphertext"]
    assert len(H(a["ciphertext"])) == wire.CIPHERTEXT_BYTES


def test_share_plaintext_holds_the_secrets_as_field_elements():
    """The plaintext's two shares (t = 1, so y = the secret) are s_u^SK and b_u read big-endian."""
    plain = H(V["aead"]["plaintext"])
    sk_share, b_share = (shamir.Share.from_bytes(plain[i:i + 37]) for i in (8, 45))
    assert sk_share.x == b_share.x == V["aead"]["receiver"] + 1
    assert sk_share.y == int.from_bytes(bytes([3] * 32), "big")
    assert b_share.y == int.from_bytes(H(V["self_mask_commitment"]["b"]), "big")


def test_self_mask_commitment_from_the_spec():
    c = V["self_mask_commitment"]
    digest = H(V["rounds"][c["round"]]["round_digest"])
    want = hashlib.sha256(b"secagg/v2/self-mask" + digest + u32(c["client"]) + H(c["b"])).hexdigest()
    assert want == c["commitment"]


def _signer(client: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([client + 0x40]) * 32)


def _check_signature(entry: dict, signed: bytes) -> None:
    assert signed.hex() == entry["signed_bytes"]
    key = _signer(entry["client"])
    assert key.sign(signed).hex() == entry["signature"]
    r = V["rounds"][entry["round"]]
    pk = H(r["verify_keys"][str(entry["client"])])
    Ed25519PublicKey.from_public_bytes(pk).verify(H(entry["signature"]), signed)


def test_key_advertisement_signature_input_from_the_spec():
    s = V["signature_keys"]
    digest = H(V["rounds"][s["round"]]["round_digest"])
    _check_signature(s, b"secagg/v2/keys" + digest + u32(s["client"]) + H(s["channel_pk"]) + H(s["mask_pk"]))


def test_masked_input_signature_input_from_the_spec():
    s = V["signature_masked_input"]
    digest = H(V["rounds"][s["round"]]["round_digest"])
    width = 4 if s["bits"] <= 32 else 8
    words = b"".join(w.to_bytes(width, "little") for w in s["words"])
    wd = hashlib.sha256(words).digest()
    assert wd.hex() == s["words_digest"]
    _check_signature(s, b"secagg/v2/masked-input" + digest + u32(s["client"]) + wd)


def test_consistency_signature_input_from_the_spec():
    s = V["signature_survivors"]
    digest = H(V["rounds"][s["round"]]["round_digest"])
    ids = s["survivors"]
    _check_signature(s, b"secagg/v2/survivors" + digest + u32(len(ids), *ids))


# ------------------------------------------------------------------ decoder rules of the spec

SID = bytes(range(32))


@pytest.mark.parametrize("signers", [(5, 3), (3, 3), (1, 7, 7)])
def test_unmask_request_signers_must_be_strictly_increasing(signers):
    good = wire.encode(UnmaskRequest(SID, 1, (1, 3, 5, 7), (), tuple(SignedBy(s, bytes(64)) for s in sorted(set(signers)))))
    wire.decode(good)
    bad = wire.encode(UnmaskRequest(SID, 1, (1, 3, 5, 7), (), tuple(SignedBy(s, bytes(64)) for s in signers)))
    with pytest.raises(DecodeError, match="signers must be strictly increasing"):
        wire.decode(bad)


@pytest.mark.parametrize("bits,dim", [(12, 5), (1, 3), (20, 1), (33, 3), (62, 1)])
def test_masked_input_padding_bits_must_be_zero(bits, dim):
    spare = -(dim * bits) % 8
    assert spare  # these shapes leave padding bits in the last byte
    words = np.full(dim, (1 << bits) - 1, dtype=wire.word_dtype(bits))
    raw = wire.encode(MaskedInput(SID, 1, bits, words))
    assert raw[-1] >> (8 - spare) == 0
    np.testing.assert_array_equal(wire.decode(raw).words, words)
    for bit in range(8 - spare, 8):
        with pytest.raises(DecodeError, match="padding bits"):
            wire.decode(raw[:-1] + bytes([raw[-1] | 1 << bit]))


def test_a_32_byte_secret_is_the_big_endian_field_element_and_back():
    """split: s = int.from_bytes(secret, 'big') in [0, 2^256) < p; reconstruct refuses values >= 2^256."""
    for secret in (bytes(32), bytes([0xFF]) * 32, bytes(range(32))):
        (share,) = shamir.split(secret, threshold=1, xs=[1])
        assert share.y == int.from_bytes(secret, "big")
        assert shamir.reconstruct([share], threshold=1) == secret
    for y in (2**256, shamir.PRIME - 1):
        with pytest.raises(InconsistentSharesError, match=">= 2\\*\\*256"):
            shamir.reconstruct([shamir.Share(1, y)], threshold=1)
    with pytest.raises(DecodeError):  # y >= p is not a field element
        shamir.Share.from_bytes((1).to_bytes(4, "big") + shamir.PRIME.to_bytes(33, "big"))
