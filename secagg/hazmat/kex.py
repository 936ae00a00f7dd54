"""X25519 key agreement and HKDF-SHA256 with labelled info strings.

All derived keys are bound to the round's session id (HKDF salt) and to a label naming their use,
so a key for one purpose or session is never valid for another (docs/protocol.md, "Key derivation").
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AuthenticationError, InputError

KEY_BYTES = 32
PROTOCOL_LABEL = b"secagg/v1/"
LABEL_PAIRWISE_MASK = b"pairwise-mask"
LABEL_SHARE_AEAD = b"share-aead"


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw 32-byte strings."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> "KeyPair":
        return cls.from_private(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private(cls, private: bytes) -> "KeyPair":
        if len(private) != KEY_BYTES:
            raise InputError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(private)}")
        sk = X25519PrivateKey.from_private_bytes(private)
        pub = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private=bytes(private), public=pub)


def public_from_private(private: bytes) -> bytes:
    return KeyPair.from_private(private).public


PrivateKey = bytes | X25519PrivateKey


def private_key(private: PrivateKey) -> X25519PrivateKey:
    """Parse once and reuse: parsing costs as much as one agreement."""
    return private if isinstance(private, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(private)


def agree(private: PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret. A low-order peer key is an AuthenticationError."""
    if len(peer_public) != KEY_BYTES:
        raise AuthenticationError("peer public key has the wrong length")
    try:
        return private_key(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # all-zero shared secret: a small-order point
        raise AuthenticationError("key agreement failed") from None


def derive(secret: bytes, *, session_id: bytes, label: bytes, context: bytes = b"",
           length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256(ikm=secret, salt=session_id, info="secagg/v1/" + label + context)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=session_id,
                info=PROTOCOL_LABEL + label + context).derive(secret)


def pair_context(u: int, v: int) -> bytes:
    """Both ids, smaller first, as 4-byte big-endian: the same bytes on both sides of a pair."""
    a, b = (u, v) if u < v else (v, u)
    return a.to_bytes(4, "big") + b.to_bytes(4, "big")


def pairwise_mask_seed(private: PrivateKey, peer_public: bytes, *, session_id: bytes, u: int, v: int) -> bytes:
    """s_uv = HKDF(X25519(s_u, s_v), salt=session, info=label || min(u,v) || max(u,v))."""
    return derive(agree(private, peer_public), session_id=session_id, label=LABEL_PAIRWISE_MASK,
                  context=pair_context(u, v))


def share_key(private: PrivateKey, peer_public: bytes, *, session_id: bytes, u: int, v: int) -> bytes:
    """AEAD key for the shares u and v exchange: HKDF(X25519(c_u, c_v), ...)."""
    return derive(agree(private, peer_public), session_id=session_id, label=LABEL_SHARE_AEAD,
                  context=pair_context(u, v))
