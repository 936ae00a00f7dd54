"""The one versioned byte encoding of every message (docs/protocol.md, "Wire format").

Layout: magic b"SA" | version (1 byte) | type (1 byte) | session id (32) | party id (u32 BE) | body.
Integers are big-endian; id lists are strictly increasing (sorted, no duplicates); masked words
are bit-packed little-endian at exactly ``bits`` bits per word. Decoding checks every length,
count and range before it allocates, and raises ``DecodeError`` naming what was wrong.
"""

from __future__ import annotations

import array
import struct
import sys

import numpy as np

from .errors import DecodeError, InputError
from .messages import (AdvertiseKeys, ConsistencyRequest, ConsistencySignature, EncryptedShare,
                       ForwardedShares, KeysBroadcast, MaskedInput, Message, MessageType, PeerKeys,
                       RevealedShare, ShareKeys, ShareKind, SignedBy, UnmaskRequest, UnmaskResponse)

MAGIC = b"SA"
VERSION = 2  # v2: round digest in key advertisements, signed masked inputs
HEADER = struct.Struct(">2sBB32sI")
KEY_BYTES = 32
SIGNATURE_BYTES = 64
SHARE_BYTES = 37                       # shamir.Share.to_bytes(): x (4) | y (33)
SHARE_PLAINTEXT_BYTES = 8 + 2 * SHARE_BYTES  # sender | receiver | share of s^SK | share of b
CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + 16  # + AES-GCM tag


def share_plaintext_bytes(excess_noise: bool) -> int:
    """Plaintext of one encrypted share; with excess noise a share of the noise seed follows b's."""
    return SHARE_PLAINTEXT_BYTES + (SHARE_BYTES if excess_noise else 0)


def ciphertext_bytes(excess_noise: bool) -> int:
    return share_plaintext_bytes(excess_noise) + 16
COMMITMENT_BYTES = 32
DIGEST_BYTES = 32
MAX_ID = 2**32 - 2
MAX_DIM = 2**32 - 1


# ---------------------------------------------------------------- bit packing of words

def word_dtype(bits: int) -> np.dtype:
    if not 1 <= bits <= 62:
        raise InputError(f"bits must be in [1, 62], got {bits!r}")
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def packed_size(dim: int, bits: int) -> int:
    return (dim * bits + 7) // 8


_PACK_CHUNK = 1 << 16  # words; a multiple of 8, so every chunk ends on a byte boundary


def pack_words(words: np.ndarray, bits: int) -> bytes:
    """Words in [0, 2**bits) -> ceil(d*bits/8) bytes, little-endian bit order."""
    dtype = word_dtype(bits)
    words = np.ascontiguousarray(words, dtype=dtype)
    if bits in (8, 16, 32):
        return words.astype(f"<u{bits // 8}", copy=False).tobytes()
    out = bytearray()
    for s in range(0, len(words), _PACK_CHUNK):
        chunk = words[s:s + _PACK_CHUNK].view(np.uint8).reshape(-1, dtype.itemsize)
        bitmat = np.unpackbits(chunk, axis=1, bitorder="little")[:, :bits]
        out += np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()
    return bytes(out)


def unpack_words(data: bytes | memoryview, dim: int, bits: int) -> np.ndarray:
    dtype = word_dtype(bits)
    if len(data) != packed_size(dim, bits):
        raise DecodeError(f"masked input has {len(data)} bytes, expected {packed_size(dim, bits)} "
                          f"for dim={dim} at {bits} bits")
    spare = -(dim * bits) % 8
    if spare and data[-1] >> (8 - spare):
        raise DecodeError(f"masked input: the {spare} padding bits of the last byte must be zero")
    if bits == 32:
        return np.frombuffer(data, dtype=dtype)  # zero-copy, read-only view
    if bits in (8, 16):
        return np.frombuffer(data, dtype=f"<u{bits // 8}").astype(dtype)
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(dim, dtype=dtype)
    step = _PACK_CHUNK * bits // 8
    for i, s in enumerate(range(0, dim, _PACK_CHUNK)):
        n = min(_PACK_CHUNK, dim - s)
        bitvec = np.unpackbits(raw[i * step:i * step + (n * bits + 7) // 8], bitorder="little",
                               count=n * bits).reshape(n, bits)
        full = np.zeros((n, dtype.itemsize * 8), dtype=np.uint8)
        full[:, :bits] = bitvec
        out[s:s + n] = np.packbits(full, axis=1, bitorder="little").view(dtype).reshape(n)
    return out


# ---------------------------------------------------------------- encoding

_U32 = next(c for c in "IL" if array.array(c).itemsize == 4)  # the array code of 4-byte words


def _ids(ids) -> bytes:
    """Count and ids as 4-byte big-endian words (an array, not n call arguments: survivor lists
    are n long and go to n clients)."""
    words = array.array(_U32, ids)
    if sys.byteorder == "little":
        words.byteswap()
    return struct.pack(">I", len(ids)) + words.tobytes()


def _party(msg: Message) -> int:
    return msg.sender if hasattr(msg, "sender") else msg.receiver


def encode(msg: Message) -> bytes:
    """The bytes of ``msg``; the inverse of :func:`decode`."""
    t = msg.type
    head = HEADER.pack(MAGIC, VERSION, int(t), msg.session_id, _party(msg))
    if t is MessageType.ADVERTISE_KEYS:
        body = msg.channel_pk + msg.mask_pk + msg.round_digest + bytes([len(msg.signature)]) + msg.signature
    elif t is MessageType.KEYS_BROADCAST:
        body = struct.pack(">I", len(msg.peers)) + b"".join(
            struct.pack(">I", p.client_id) + p.channel_pk + p.mask_pk + p.round_digest
            + bytes([len(p.signature)]) + p.signature for p in msg.peers)
    elif t in (MessageType.SHARE_KEYS, MessageType.FORWARDED_SHARES):
        body = msg.self_mask_commitment if t is MessageType.SHARE_KEYS else b""
        body += struct.pack(">I", len(msg.shares)) + b"".join(
            struct.pack(">I", s.peer) + s.ciphertext for s in msg.shares)
    elif t is MessageType.MASKED_INPUT:  # one copy of the words (the largest message by far)
        words = msg.words
        if msg.bits == 32 and isinstance(words, np.ndarray) and words.dtype == np.dtype("<u4") \
                and words.flags.c_contiguous:
            packed = memoryview(words).cast("B")
        else:
            packed = pack_words(words, msg.bits)
        return b"".join((head, struct.pack(">BI", msg.bits, len(words)), bytes([len(msg.signature)]),
                         msg.signature, packed))
    elif t is MessageType.CONSISTENCY_REQUEST:
        body = _ids(msg.survivors)
    elif t is MessageType.CONSISTENCY_SIGNATURE:
        body = msg.signature
    elif t is MessageType.UNMASK_REQUEST:
        body = _ids(msg.survivors) + _ids(msg.dropped) + struct.pack(">I", len(msg.signatures)) + b"".join(
            struct.pack(">I", s.client_id) + s.signature for s in msg.signatures)
    elif t is MessageType.UNMASK_RESPONSE:
        body = struct.pack(">I", len(msg.shares)) + b"".join(
            struct.pack(">IB", s.owner, int(s.kind)) + s.share for s in msg.shares)
    else:  # pragma: no cover - MessageType is closed
        raise InputError(f"unknown message type {t!r}")
    return head + body


# ---------------------------------------------------------------- object checks

def _need(ok: bool, msg: Message, field: str, value: object) -> None:
    if not ok:
        raise DecodeError(f"{type(msg).__name__}: field {field} has the wrong type or size: {value!r:.60}")


def _is_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID


def _is_bytes(v: object, size: int | None = None) -> bool:
    return isinstance(v, bytes) and (size is None or len(v) == size)


def _seq(v: object) -> bool:
    return isinstance(v, (tuple, list))


def check_fields(msg: Message) -> None:
    """The field types of a message object (the object API skips ``decode``): ids are ints, keys,
    digests and signatures bytes, lists tuples or lists of the right element class. Lengths and
    order stay the handlers' business. DecodeError names the first bad field."""
    _need(_is_bytes(msg.session_id, 32), msg, "session_id", msg.session_id)
    _need(_is_id(_party(msg)), msg, "sender/receiver", _party(msg))
    t = msg.type
    if t in (MessageType.ADVERTISE_KEYS, MessageType.KEYS_BROADCAST):
        peers = [msg] if t is MessageType.ADVERTISE_KEYS else msg.peers
        _need(_seq(peers), msg, "peers", peers)
        for p in peers:
            _need(isinstance(p, (PeerKeys, AdvertiseKeys)), msg, "peers[]", p)
            if isinstance(p, PeerKeys):
                _need(_is_id(p.client_id), msg, "client_id", p.client_id)
            for name in ("channel_pk", "mask_pk", "round_digest", "signature"):
                _need(_is_bytes(getattr(p, name)), msg, name, getattr(p, name))
    elif t in (MessageType.SHARE_KEYS, MessageType.FORWARDED_SHARES):
        if t is MessageType.SHARE_KEYS:
            _need(_is_bytes(msg.self_mask_commitment), msg, "self_mask_commitment", msg.self_mask_commitment)
        _need(_seq(msg.shares), msg, "shares", msg.shares)
        for s in msg.shares:
            _need(isinstance(s, EncryptedShare) and _is_id(s.peer) and _is_bytes(s.ciphertext), msg, "shares[]", s)
    elif t is MessageType.MASKED_INPUT:
        _need(isinstance(msg.bits, int) and not isinstance(msg.bits, bool), msg, "bits", msg.bits)
        _need(_is_bytes(msg.signature), msg, "signature", msg.signature)
    elif t is MessageType.CONSISTENCY_SIGNATURE:
        _need(_is_bytes(msg.signature), msg, "signature", msg.signature)
    elif t in (MessageType.CONSISTENCY_REQUEST, MessageType.UNMASK_REQUEST):
        lists = [("survivors", msg.survivors)]
        if t is MessageType.UNMASK_REQUEST:
            lists.append(("dropped", msg.dropped))
            _need(_seq(msg.signatures), msg, "signatures", msg.signatures)
            for s in msg.signatures:
                _need(isinstance(s, SignedBy) and _is_id(s.client_id) and _is_bytes(s.signature),
                      msg, "signatures[]", s)
        for name, ids in lists:
            _need(isinstance(ids, tuple) and all(_is_id(u) for u in ids), msg, name, ids)
    elif t is MessageType.UNMASK_RESPONSE:
        _need(_seq(msg.shares), msg, "shares", msg.shares)
        for s in msg.shares:
            _need(isinstance(s, RevealedShare) and _is_id(s.owner) and isinstance(s.kind, ShareKind)
                  and _is_bytes(s.share), msg, "shares[]", s)


# ---------------------------------------------------------------- decoding

class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview, what: str):
        self.data, self.pos, self.what = memoryview(data).cast("B"), 0, what

    def view(self, n: int, field: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"{self.what}: truncated at {field} (need {n} bytes at offset {self.pos}, "
                              f"have {len(self.data) - self.pos})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def take(self, n: int, field: str) -> bytes:
        return bytes(self.view(n, field))

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u32(self, field: str) -> int:
        return struct.unpack(">I", self.take(4, field))[0]

    def count(self, field: str, item_bytes: int) -> int:
        n = self.u32(field)
        if n * item_bytes > len(self.data) - self.pos:
            raise DecodeError(f"{self.what}: {field}={n} items cannot fit in the remaining "
                              f"{len(self.data) - self.pos} bytes")
        return n

    def client_id(self, field: str) -> int:
        v = self.u32(field)
        if v > MAX_ID:
            raise DecodeError(f"{self.what}: {field}={v} is not a valid client id")
        return v

    def id_list(self, field: str) -> tuple[int, ...]:
        n = self.count(field, 4)
        raw = self.view(4 * n, field)
        words = np.frombuffer(raw, dtype=">u4")  # checked in one pass in C, before any int object is made
        if n > 1 and not bool(np.all(words[1:] > words[:-1])):
            _check_increasing(struct.unpack(f">{n}I", raw), self.what, field)
        if n and int(words[-1]) > MAX_ID:
            raise DecodeError(f"{self.what}: {field} holds invalid client id {int(words[-1])}")
        return struct.unpack(f">{n}I", raw)

    def signature(self, field: str, *, optional: bool) -> bytes:
        n = self.u8(field + " length")
        if n not in ((0, SIGNATURE_BYTES) if optional else (SIGNATURE_BYTES,)):
            raise DecodeError(f"{self.what}: {field} length {n} is not {SIGNATURE_BYTES}")
        return self.take(n, field)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def _check_increasing(ids, what: str, field: str) -> None:
    if ids and isinstance(ids[0], int):  # one pass in C: survivor lists are n long, sent to n clients
        arr = np.asarray(ids, dtype=np.int64)
        bad = [int(b) for b in np.flatnonzero(arr[1:] <= arr[:-1])[:1]]
    else:  # (owner, kind) pairs
        bad = [i for i, (a, b) in enumerate(zip(ids, ids[1:])) if b <= a][:1]
    if bad:
        i = bad[0]
        raise DecodeError(f"{what}: {field} must be strictly increasing (sorted, no duplicates); "
                          f"{ids[i + 1]} follows {ids[i]}")


def decode(data: bytes) -> Message:
    """Parse bytes into a message, or raise DecodeError. Never returns a partly checked message."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if isinstance(data, memoryview):  # lengths below are in bytes; a strided view cannot be parsed
        if not data.c_contiguous:
            raise DecodeError("expected a contiguous buffer, got a strided memoryview")
        data = data.cast("B")
    if len(data) < HEADER.size:
        raise DecodeError(f"message of {len(data)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, type_byte, session, party = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DecodeError(f"unsupported wire version {version}, this library speaks {VERSION}")
    try:
        t = MessageType(type_byte)
    except ValueError:
        raise DecodeError(f"unknown message type {type_byte}") from None
    if party > MAX_ID:
        raise DecodeError(f"party id {party} is not a valid client id")
    r = _Reader(data, t.name)
    r.pos = HEADER.size
    if t is MessageType.ADVERTISE_KEYS:
        c, s = r.take(KEY_BYTES, "channel_pk"), r.take(KEY_BYTES, "mask_pk")
        msg = AdvertiseKeys(session, party, c, s, r.take(DIGEST_BYTES, "round_digest"),
                            r.signature("signature", optional=True))
    elif t is MessageType.KEYS_BROADCAST:
        n = r.count("peer count", 4 + 2 * KEY_BYTES + DIGEST_BYTES + 1)
        peers = tuple(PeerKeys(r.client_id("peer id"), r.take(KEY_BYTES, "channel_pk"),
                               r.take(KEY_BYTES, "mask_pk"), r.take(DIGEST_BYTES, "round_digest"),
                               r.signature("signature", optional=True))
                      for _ in range(n))
        _check_increasing([p.client_id for p in peers], t.name, "peer ids")
        msg = KeysBroadcast(session, party, peers)
    elif t in (MessageType.SHARE_KEYS, MessageType.FORWARDED_SHARES):
        commitment = r.take(COMMITMENT_BYTES, "commitment") if t is MessageType.SHARE_KEYS else None
        n = r.count("share count", 4 + CIPHERTEXT_BYTES)
        size = CIPHERTEXT_BYTES  # or one share longer (excess noise): the item size tells
        if n and len(r.data) - r.pos == n * (4 + ciphertext_bytes(True)):
            size = ciphertext_bytes(True)
        shares = tuple(EncryptedShare(r.client_id("peer id"), r.take(size, "ciphertext"))
                       for _ in range(n))
        _check_increasing([s.peer for s in shares], t.name, "peer ids")
        msg = (ShareKeys(session, party, commitment, shares) if commitment is not None
               else ForwardedShares(session, party, shares))
    elif t is MessageType.MASKED_INPUT:
        bits, dim = r.u8("bits"), r.u32("dim")
        if not 1 <= bits <= 62 or dim < 1:
            raise DecodeError(f"MASKED_INPUT: bits={bits} or dim={dim} out of range")
        signature = r.signature("signature", optional=True)
        if packed_size(dim, bits) != len(data) - r.pos:
            raise DecodeError(f"MASKED_INPUT: {len(data) - r.pos} payload bytes, expected "
                              f"{packed_size(dim, bits)} for dim={dim} at {bits} bits")
        words = unpack_words(r.view(packed_size(dim, bits), "words"), dim, bits)
        msg = MaskedInput(session, party, bits, words, signature)
    elif t is MessageType.CONSISTENCY_REQUEST:
        msg = ConsistencyRequest(session, party, r.id_list("survivors"))
    elif t is MessageType.CONSISTENCY_SIGNATURE:
        msg = ConsistencySignature(session, party, r.take(SIGNATURE_BYTES, "signature"))
    elif t is MessageType.UNMASK_REQUEST:
        survivors, dropped = r.id_list("survivors"), r.id_list("dropped")
        n = r.count("signature count", 4 + SIGNATURE_BYTES)
        sigs = tuple(SignedBy(r.client_id("signer"), r.take(SIGNATURE_BYTES, "signature")) for _ in range(n))
        _check_increasing([s.client_id for s in sigs], t.name, "signers")
        msg = UnmaskRequest(session, party, survivors, dropped, sigs)
    else:  # UNMASK_RESPONSE
        n = r.count("share count", 5 + SHARE_BYTES)
        shares = []
        for _ in range(n):
            owner, kind = r.client_id("owner"), r.u8("kind")
            if kind not in (1, 2, 3):
                raise DecodeError(f"UNMASK_RESPONSE: unknown share kind {kind}")
            shares.append(RevealedShare(owner, ShareKind(kind), r.take(SHARE_BYTES, "share")))
        _check_increasing([(s.owner, int(s.kind)) for s in shares], t.name, "(owner, kind) pairs")
        msg = UnmaskResponse(session, party, tuple(shares))
    r.end()
    return msg
