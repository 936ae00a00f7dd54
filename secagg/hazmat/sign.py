"""Ed25519 signatures for the deployment's long-lived client identities (active-server mode)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import AuthenticationError, InputError

SIGNATURE_BYTES = 64
PUBLIC_BYTES = 32


@dataclass(frozen=True)
class SigningKey:
    """A raw 32-byte Ed25519 private key and its public key."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls.from_private(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private(cls, private: bytes) -> "SigningKey":
        if len(private) != 32:
            raise InputError(f"Ed25519 private key must be 32 bytes, got {len(private)}")
        sk = Ed25519PrivateKey.from_private_bytes(private)
        return cls(private=bytes(private), public=sk.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """Raise AuthenticationError unless ``signature`` is valid for ``message`` under ``public``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise AuthenticationError("signature verification failed") from None
