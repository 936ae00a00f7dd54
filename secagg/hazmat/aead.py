"""AES-256-GCM for the encrypted shares.

The key is shared by both directions of a pair, so the 96-bit nonce is built from the direction
and stage: sender (4 bytes BE) || receiver (4 bytes BE) || stage (4 bytes BE). Each (key, nonce)
is used for exactly one message because keys are fresh per session. The associated data binds
protocol version, the round digest (hence the session id and every public round parameter), stage,
sender and receiver; any failure is one opaque error.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AuthenticationError

TAG_BYTES = 16
AD_LABEL = b"secagg/v2/share"


def _nonce(sender: int, receiver: int, stage: int) -> bytes:
    return sender.to_bytes(4, "big") + receiver.to_bytes(4, "big") + stage.to_bytes(4, "big")


def associated_data(round_digest: bytes, stage: int, sender: int, receiver: int) -> bytes:
    return AD_LABEL + round_digest + bytes([stage]) + sender.to_bytes(4, "big") + receiver.to_bytes(4, "big")


def seal(key: bytes, plaintext: bytes, *, round_digest: bytes, stage: int, sender: int, receiver: int) -> bytes:
    return AESGCM(key).encrypt(_nonce(sender, receiver, stage), plaintext,
                               associated_data(round_digest, stage, sender, receiver))


def open_(key: bytes, ciphertext: bytes, *, round_digest: bytes, stage: int, sender: int, receiver: int) -> bytes:
    try:
        return AESGCM(key).decrypt(_nonce(sender, receiver, stage), ciphertext,
                                   associated_data(round_digest, stage, sender, receiver))
    except (InvalidTag, ValueError):
        raise AuthenticationError("share ciphertext failed authentication") from None
