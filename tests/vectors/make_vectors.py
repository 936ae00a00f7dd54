"""Regenerate the protocol's known-answer vectors (PRG words, key derivation, message bytes).

Run: python tests/vectors/make_vectors.py. The tests check the code against the committed files,
so a change that alters any output shows up as a failing test; another implementation can check
itself against these files (see docs/protocol.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from secagg import wire
from secagg.hazmat import kex, prg
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


def main() -> None:
    (HERE / "prg.json").write_text(json.dumps(prg_vectors(), indent=1) + "\n")
    (HERE / "kdf.json").write_text(json.dumps(kdf_vectors(), indent=1) + "\n")
    (HERE / "messages.json").write_text(json.dumps(message_vectors(), indent=1) + "\n")


if __name__ == "__main__":
    main()
