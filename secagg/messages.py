"""Frozen messages, one class per stage and direction. Their bytes live in ``wire.py``.

Client-to-server messages carry ``sender``; server-to-client messages carry ``receiver``. Every
message carries the round's ``session_id`` so a message of another round is rejected; key
advertisements also carry the sender's round digest (``RoundConfig.round_digest``), so a client
given other round parameters than its neighbours is detected.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class MessageType(enum.IntEnum):
    ADVERTISE_KEYS = 1         # stage 0, client -> server
    KEYS_BROADCAST = 2         # stage 0 -> 1, server -> client (its neighbours' keys)
    SHARE_KEYS = 3             # stage 1, client -> server (encrypted shares for each neighbour)
    FORWARDED_SHARES = 4       # stage 1 -> 2, server -> client (shares addressed to it)
    MASKED_INPUT = 5           # stage 2, client -> server
    CONSISTENCY_REQUEST = 6    # stage 3 (active mode), server -> client: the survivor list
    CONSISTENCY_SIGNATURE = 7  # stage 3, client -> server: signature on that list
    UNMASK_REQUEST = 8         # stage 4, server -> client: survivors and dropped
    UNMASK_RESPONSE = 9        # stage 4, client -> server: the requested shares


@dataclass(frozen=True, slots=True)
class PeerKeys:
    client_id: int
    channel_pk: bytes   # X25519 c_u: encrypts shares
    mask_pk: bytes      # X25519 s_u: pairwise masks
    round_digest: bytes  # the round digest the owner computed from its own configuration
    signature: bytes    # Ed25519 over digest and both keys, empty in semi-honest mode


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    session_id: bytes
    sender: int
    channel_pk: bytes
    mask_pk: bytes
    round_digest: bytes
    signature: bytes = b""
    type = MessageType.ADVERTISE_KEYS

    def peer_keys(self) -> PeerKeys:
        return PeerKeys(self.sender, self.channel_pk, self.mask_pk, self.round_digest, self.signature)


@dataclass(frozen=True, slots=True)
class KeysBroadcast:
    session_id: bytes
    receiver: int
    peers: tuple[PeerKeys, ...]
    type = MessageType.KEYS_BROADCAST


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    peer: int           # receiver in SHARE_KEYS, sender in FORWARDED_SHARES
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class ShareKeys:
    session_id: bytes
    sender: int
    self_mask_commitment: bytes  # SHA-256 commitment to b_u, lets the server detect forged shares
    shares: tuple[EncryptedShare, ...]
    type = MessageType.SHARE_KEYS


@dataclass(frozen=True, slots=True)
class ForwardedShares:
    session_id: bytes
    receiver: int
    shares: tuple[EncryptedShare, ...]
    type = MessageType.FORWARDED_SHARES


@dataclass(frozen=True, eq=False, slots=True)
class MaskedInput:
    session_id: bytes
    sender: int
    bits: int
    words: np.ndarray
    signature: bytes = b""  # active mode: Ed25519 over the round digest and SHA-256 of the words
    type = MessageType.MASKED_INPUT

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MaskedInput) and (self.session_id, self.sender, self.bits, self.signature)
                == (other.session_id, other.sender, other.bits, other.signature)
                and np.array_equal(self.words, other.words))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    session_id: bytes
    receiver: int
    survivors: tuple[int, ...]
    type = MessageType.CONSISTENCY_REQUEST


@dataclass(frozen=True, slots=True)
class ConsistencySignature:
    session_id: bytes
    sender: int
    signature: bytes
    type = MessageType.CONSISTENCY_SIGNATURE


@dataclass(frozen=True, slots=True)
class SignedBy:
    client_id: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    session_id: bytes
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[SignedBy, ...] = ()
    type = MessageType.UNMASK_REQUEST


class ShareKind(enum.IntEnum):
    SELF_MASK = 1    # share of b_v: v survived
    MASK_KEY = 2     # share of s_v^SK: v dropped after sharing
    NOISE_SEED = 3   # share of v's noise seed: v survived and its noise is excess (secagg.excess)


@dataclass(frozen=True, slots=True)
class RevealedShare:
    owner: int
    kind: ShareKind
    share: bytes     # secagg.hazmat.shamir.Share.to_bytes()


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    session_id: bytes
    sender: int
    shares: tuple[RevealedShare, ...]
    type = MessageType.UNMASK_RESPONSE


Message = (AdvertiseKeys | KeysBroadcast | ShareKeys | ForwardedShares | MaskedInput
           | ConsistencyRequest | ConsistencySignature | UnmaskRequest | UnmaskResponse)
CLIENT_TO_SERVER = (AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskResponse)
SERVER_TO_CLIENT = (KeysBroadcast, ForwardedShares, ConsistencyRequest, UnmaskRequest)


def party_of(msg: Message) -> int:
    """The client a message comes from or goes to."""
    return msg.sender if isinstance(msg, CLIENT_TO_SERVER) else msg.receiver
