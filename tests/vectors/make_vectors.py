"""Regenerate the protocol's known-answer vectors (PRG words, key derivation, message bytes, and
in protocol.json the round digest, mask-bound share key, one share AEAD, the self-mask commitment
and the three signature inputs).

Run: python tests/vectors/make_vectors.py. The tests check the code against the committed files,
so a change that alters any output shows up as a failing test; another implementation can check
itself against these files (see docs/protocol.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from secagg import wire
from secagg.client import (bound_share_key, keys_signed_bytes, masked_input_signed_bytes, self_mask_commitment,
                           survivors_signed_bytes, words_digest)
from secagg.config import GraphKind, RoundConfig, round_digest_encoding, verify_keys_digest
from secagg.hazmat import aead, kex, prg, shamir
from secagg.hazmat.sign import SigningKey
from secagg.messages import (AdvertiseKeys, ConsistencyRequest, ConsistencySignature, EncryptedShare,
                             ForwardedShares, KeysBroadcast, MaskedInput, PeerKeys, RevealedShare,
                             ShareKeys, ShareKind, SignedBy, UnmaskRequest, UnmaskResponse)

HERE = Path(__file__).parent
SESSION = bytes(range(32))


def prg_vectors():
    out = []
    for seed_hex, bits, count in [("00" * 32, 32, 16), (bytes(range(32)).hex(), 32, 16),
                                  ("ff" * 32, 20, 16), (bytes(range(32, 64)).hex(), 40, 8),
                                  (bytes(range(32)).hex(), 1, 16)]:
        words = prg.expand(bytes.fromhex(seed_hex), count, bits)
        out.append({"seed": seed_hex, "bits": bits, "words": [int(w) for w in words]})
    return out


def kdf_vectors():
    a, b = bytes([1] * 32), bytes([2] * 32)
    ka, kb = kex.KeyPair.from_private(a), kex.KeyPair.from_private(b)
    return [{
        "session_id": SESSION.hex(), "u": 3, "v": 7,
        "private_u": a.hex(), "public_u": ka.public.hex(), "private_v": b.hex(), "public_v": kb.public.hex(),
        "shared_secret": kex.agree(a, kb.public).hex(),
        "pairwise_mask_seed": kex.pairwise_mask_seed(a, kb.public, session_id=SESSION, u=3, v=7).hex(),
        "share_key": kex.share_key(a, kb.public, session_id=SESSION, u=3, v=7).hex(),
    }]


def example_messages():
    k1, k2, sig, dg = bytes([0x11] * 32), bytes([0x22] * 32), bytes([0x33] * 64), bytes([0x55] * 32)
    ct = bytes(range(wire.CIPHERTEXT_BYTES))
    share = bytes(range(wire.SHARE_BYTES))
    return {
        "advertise_keys": AdvertiseKeys(SESSION, 5, k1, k2, dg, b""),
        "advertise_keys_signed": AdvertiseKeys(SESSION, 5, k1, k2, dg, sig),
        "keys_broadcast": KeysBroadcast(SESSION, 5, (PeerKeys(1, k1, k2, dg, b""), PeerKeys(9, k2, k1, dg, sig))),
        "share_keys": ShareKeys(SESSION, 5, bytes([0x44] * 32), (EncryptedShare(1, ct), EncryptedShare(9, ct))),
        "forwarded_shares": ForwardedShares(SESSION, 5, (EncryptedShare(2, ct),)),
        "masked_input_32": MaskedInput(SESSION, 5, 32, np.array([0, 1, 2**32 - 1, 123456789], dtype=np.uint32)),
        "masked_input_12": MaskedInput(SESSION, 5, 12, np.array([0, 1, 4095, 2048, 7], dtype=np.uint32)),
        "masked_input_40": MaskedInput(SESSION, 5, 40, np.array([2**40 - 1, 3], dtype=np.uint64)),
        "masked_input_12_signed": MaskedInput(SESSION, 5, 12, np.array([0, 1, 4095, 2048, 7], dtype=np.uint32), sig),
        "consistency_request": ConsistencyRequest(SESSION, 5, (1, 2, 5)),
        "consistency_signature": ConsistencySignature(SESSION, 5, sig),
        "unmask_request": UnmaskRequest(SESSION, 5, (1, 5), (2,), (SignedBy(1, sig),)),
        "unmask_response": UnmaskResponse(SESSION, 5, (RevealedShare(1, ShareKind.SELF_MASK, share),
                                                      RevealedShare(2, ShareKind.MASK_KEY, share))),
    }


def message_vectors():
    return {name: wire.encode(m).hex() for name, m in example_messages().items()}


def vector_configs() -> dict[str, RoundConfig]:
    """The two fixed rounds of protocol.json: semi-honest complete graph, active SecAgg+ graph with a
    deployment-supplied graph seed. Signing key of client u: 32 bytes of value u + 0x40."""
    ids = (3, 7, 12, 20, 31, 40, 41)
    signing = {u: SigningKey.from_private(bytes([u + 0x40]) * 32) for u in ids}
    return {
        "semi_honest_complete": RoundConfig(session_id=SESSION, client_ids=ids[:5], dim=4, bits=16, threshold=3,
                                            min_survivors=3),
        "active_sparse": RoundConfig(session_id=SESSION, client_ids=ids, dim=4, bits=16, threshold=4,
                                     min_survivors=4, graph=GraphKind.SPARSE, k=4, max_corrupt_neighbours=1,
                                     graph_seed=bytes([0xA5]) * 32,
                                     verify_keys={u: k.public for u, k in signing.items()}),
    }


def protocol_vectors() -> dict:
    """Known answers for every byte string a client derives, signs or seals (docs/protocol.md)."""
    cfgs = vector_configs()
    rounds = {}
    for name, cfg in cfgs.items():
        rounds[name] = {
            "session_id": cfg.session_id.hex(), "client_ids": list(cfg.client_ids), "dim": cfg.dim,
            "bits": cfg.bits, "threshold": cfg.threshold, "k": cfg.k, "graph": cfg.graph.value,
            "graph_seed": None if cfg.graph_seed is None else cfg.graph_seed.hex(),
            "min_survivors": cfg.min_survivors, "mode": cfg.mode.value,
            "max_corrupt_neighbours": cfg.max_corrupt_neighbours,
            "insecure_weak_threshold": cfg.insecure_weak_threshold, "excess_noise": cfg.excess_noise,
            "verify_keys": None if cfg.verify_keys is None else {str(u): pk.hex() for u, pk in cfg.verify_keys.items()},
            "verify_keys_digest": None if cfg.verify_keys is None else verify_keys_digest(cfg.verify_keys).hex(),
            "encoding": round_digest_encoding(cfg).hex(), "round_digest": cfg.round_digest.hex()}
    cfg = cfgs["active_sparse"]
    digest = cfg.round_digest
    u, v = 3, 7                                # neighbours in the active round
    assert v in cfg.neighbours(u)
    c_u, c_v = kex.KeyPair.from_private(bytes([1] * 32)), kex.KeyPair.from_private(bytes([2] * 32))
    s_u, s_v = kex.KeyPair.from_private(bytes([3] * 32)), kex.KeyPair.from_private(bytes([4] * 32))
    share_key = kex.share_key(c_u.private, c_v.public, session_id=cfg.session_id, u=u, v=v)
    bound = bound_share_key(share_key, session_id=cfg.session_id, u=u, u_mask_pk=s_u.public, v=v,
                            v_mask_pk=s_v.public)
    b_u = bytes([5] * 32)
    sk_share = shamir.split(s_u.private, threshold=1, xs=[v + 1])[0].to_bytes()
    b_share = shamir.split(b_u, threshold=1, xs=[v + 1])[0].to_bytes()
    plaintext = u.to_bytes(4, "big") + v.to_bytes(4, "big") + sk_share + b_share
    words = np.array([0, 1, 65535, 4660], dtype=np.uint16).astype(wire.word_dtype(cfg.bits))
    survivors = (3, 7, 12, 20, 31)
    signer = SigningKey.from_private(bytes([u + 0x40]) * 32)
    keys_msg = keys_signed_bytes(digest, u, c_u.public, s_u.public)
    masked_msg = masked_input_signed_bytes(digest, u, words, cfg.bits)
    survivors_msg = survivors_signed_bytes(digest, survivors)
    return {
        "description": "Known answers of secagg wire/protocol version 2 (docs/protocol.md). All inputs are fixed: "
                       "X25519 private keys c_u = 01*32, c_v = 02*32, s_u = 03*32, s_v = 04*32; b_u = 05*32; "
                       "Ed25519 private key of client u = (u + 0x40)*32. Signatures are Ed25519 (deterministic).",
        "rounds": rounds,
        "share_key": {"round": "active_sparse", "u": u, "v": v,
                      "c_u_private": c_u.private.hex(), "c_v_public": c_v.public.hex(),
                      "s_u_public": s_u.public.hex(), "s_v_public": s_v.public.hex(),
                      "share_aead_key": share_key.hex(), "mask_bound_share_key": bound.hex()},
        "aead": {"round": "active_sparse", "key": bound.hex(), "sender": u, "receiver": v, "stage": 1,
                 "nonce": (u.to_bytes(4, "big") + v.to_bytes(4, "big") + (1).to_bytes(4, "big")).hex(),
                 "associated_data": aead.associated_data(digest, 1, u, v).hex(), "plaintext": plaintext.hex(),
                 "ciphertext": aead.seal(bound, plaintext, round_digest=digest, stage=1, sender=u,
                                         receiver=v).hex()},
        "self_mask_commitment": {"round": "active_sparse", "client": u, "b": b_u.hex(),
                                 "commitment": self_mask_commitment(digest, u, b_u).hex()},
        "signature_keys": {"round": "active_sparse", "client": u, "channel_pk": c_u.public.hex(),
                           "mask_pk": s_u.public.hex(), "signed_bytes": keys_msg.hex(),
                           "signature": signer.sign(keys_msg).hex()},
        "signature_masked_input": {"round": "active_sparse", "client": u, "bits": cfg.bits,
                                   "words": [int(w) for w in words], "words_digest": words_digest(words, cfg.bits).hex(),
                                   "signed_bytes": masked_msg.hex(), "signature": signer.sign(masked_msg).hex()},
        "signature_survivors": {"round": "active_sparse", "client": u, "survivors": list(survivors),
                                "signed_bytes": survivors_msg.hex(), "signature": signer.sign(survivors_msg).hex()},
    }


def main() -> None:
    (HERE / "prg.json").write_text(json.dumps(prg_vectors(), indent=1) + "\n")
    (HERE / "kdf.json").write_text(json.dumps(kdf_vectors(), indent=1) + "\n")
    (HERE / "messages.json").write_text(json.dumps(message_vectors(), indent=1) + "\n")
    (HERE / "protocol.json").write_text(json.dumps(protocol_vectors(), indent=1) + "\n")


if __name__ == "__main__":
    main()
