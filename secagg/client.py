"""ClientParty: one client's side of the protocol, sans-I/O.

``start()`` returns the stage-0 message; ``receive(message)`` takes a server message (object or
bytes) and returns the client's reply. A rejected message (wrong session, stage, receiver,
forged ciphertext, ...) raises a ``RemoteProtocolError`` and leaves the party exactly as it was, so
the right message can still arrive. A request that would break the guarantees (reveal both shares
of one peer, a survivor list that grew) raises ``RefusedRequestError`` and aborts the party for good.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import operator
import os
import struct
from collections.abc import Callable

import numpy as np

from . import masking, wire
from .config import Mode, RoundConfig
from .excess import excess_owners
from .errors import (AbortedError, AuthenticationError, DecodeError, InputError, LocalProtocolError,
                     RefusedRequestError, RemoteProtocolError, RoundMismatchError, SecAggError,
                     UnexpectedMessageError, UnknownClientError, WrongSessionError)
from .hazmat import aead, kex, shamir
from .hazmat.sign import SigningKey, verify
from .messages import (AdvertiseKeys, ConsistencyRequest, ConsistencySignature, EncryptedShare,
                       ForwardedShares, KeysBroadcast, MaskedInput, Message, RevealedShare,
                       ShareKeys, ShareKind, UnmaskRequest, UnmaskResponse, SERVER_TO_CLIENT)
from .state import Event, Stage, next_stage

STAGE_SHARES = 1  # the AEAD stage byte for encrypted shares
STATE_VERSION = 3  # ClientParty.to_state() layout; v2 records the round digest, v3 only mask keys of peers
_STATE_MAGIC = b"SAst"


def keys_signed_bytes(round_digest: bytes, client_id: int, channel_pk: bytes, mask_pk: bytes) -> bytes:
    """What a client signs in stage 0 (active mode): its keys under the round digest it computed."""
    return b"secagg/v2/keys" + round_digest + struct.pack(">I", client_id) + channel_pk + mask_pk


def survivors_signed_bytes(round_digest: bytes, survivors: tuple[int, ...]) -> bytes:
    """What a client signs in stage 3: the survivor list it was shown."""
    return b"secagg/v2/survivors" + round_digest + struct.pack(f">I{len(survivors)}I", len(survivors), *survivors)


def words_digest(words: np.ndarray, bits: int) -> bytes:
    """SHA-256 of the masked words as little-endian words of the word dtype (4 or 8 bytes each)."""
    return hashlib.sha256(np.ascontiguousarray(words, dtype=wire.word_dtype(bits)).data).digest()


def masked_input_signed_bytes(round_digest: bytes, client_id: int, words: np.ndarray, bits: int) -> bytes:
    """What a client signs with its masked input (active mode): a changed y_u is then rejected."""
    return b"secagg/v2/masked-input" + round_digest + struct.pack(">I", client_id) + words_digest(words, bits)


def self_mask_commitment(round_digest: bytes, client_id: int, seed: bytes) -> bytes:
    """SHA-256 commitment to b_u: lets the server reject a self-mask rebuilt from forged shares."""
    return hashlib.sha256(b"secagg/v2/self-mask" + round_digest + struct.pack(">I", client_id) + seed).digest()


def bound_share_key(share_key: bytes, *, session_id: bytes, u: int, u_mask_pk: bytes, v: int,
                    v_mask_pk: bytes) -> bytes:
    """The AEAD key for u <-> v shares, bound to both mask public keys as each side saw them.

    The channel keys are already confirmed by the AEAD (a wrong c_pk fails decryption); binding the
    mask keys too means a relayed s_pk that differs from the owner's own (a bit flip, or a server
    that swaps keys in semi-honest mode without a full man-in-the-middle) fails decryption instead of
    giving pairwise masks that do not cancel, i.e. a silently wrong sum.
    """
    first, second = (u_mask_pk, v_mask_pk) if u < v else (v_mask_pk, u_mask_pk)
    return kex.derive(share_key, session_id=session_id, label=b"share-aead-mask-bound",
                      context=kex.pair_context(u, v) + first + second)


def mask_sign(u: int, v: int) -> int:
    """+1 if u adds PRG(s_uv) (u < v), -1 if it subtracts it."""
    return 1 if u < v else -1


class ClientParty:
    """One client in one round. ``input_words`` may be given now or later with ``set_input``.

    With ``config.excess_noise`` the client also holds ``noise_seed`` (32 bytes: the seed its DP
    noise share was drawn from); it is shared like b_u and revealed only as the excess rule says.
    """

    def __init__(self, config: RoundConfig, client_id: int, input_words: np.ndarray | None = None, *,
                 signing_key: SigningKey | None = None,
                 randbytes: Callable[[int], bytes] = os.urandom,
                 noise_seed: bytes | None = None) -> None:
        if client_id not in config.client_ids:
            raise LocalProtocolError(f"client id {client_id} is not in the round's client_ids")
        if (config.mode is Mode.ACTIVE) != (signing_key is not None):
            raise LocalProtocolError("active mode (config.verify_keys set) needs a signing_key, "
                                     "and semi-honest mode must not be given one")
        if signing_key is not None and config.verify_keys[client_id] != signing_key.public:
            raise LocalProtocolError(f"signing_key does not match verify_keys[{client_id}]")
        self.config = config
        self.id = client_id
        self.neighbours = config.neighbours(client_id)  # sorted tuple (a set of k ids per client is n*k sets' worth)
        if config.excess_noise != (noise_seed is not None):
            raise LocalProtocolError("config.excess_noise needs a noise_seed, and a round without it "
                                     "must not be given one")
        if noise_seed is not None and (not isinstance(noise_seed, bytes) or len(noise_seed) != 32):
            raise LocalProtocolError(f"noise_seed must be 32 bytes, got {noise_seed!r:.60}")
        self._noise_seed = noise_seed
        self._signing_key = signing_key
        self._randbytes = randbytes
        self._input: np.ndarray | None = None
        self.stage = Stage.INIT
        self._channel: kex.KeyPair | None = None
        self._mask: kex.KeyPair | None = None
        self._self_seed: bytes | None = None
        self._peers: dict[int, bytes] = {}                 # U1 neighbours: id -> s_pk (c_pk is spent in stage 1)
        self._held: dict[int, tuple[bytes, ...]] = {}      # U2 neighbours: (sk, b[, noise seed]) shares
        self._share_keys: dict[int, bytes] = {}            # AEAD key per U1 neighbour, agreed once
        self._survivors: tuple[int, ...] | None = None
        if input_words is not None:
            self.set_input(input_words)

    # ------------------------------------------------------------------ input

    def set_input(self, words: np.ndarray) -> None:
        """The encoded input: ``dim`` words in [0, 2**bits) of the word dtype (see wire.word_dtype)."""
        if self.stage not in (Stage.INIT, Stage.KEYS_SENT, Stage.SHARES_SENT):
            raise LocalProtocolError(f"client {self.id}: input can no longer be set in stage {self.stage.value}")
        self._input = check_words(words, self.config, what=f"client {self.id} input")

    # ------------------------------------------------------------------ transitions

    def start(self) -> AdvertiseKeys:
        """Stage 0: fresh key pairs; their public halves (signed in active mode)."""
        self._advance(Event.START, local=True)
        self._channel = kex.KeyPair.from_private(self._randbytes(32))
        self._mask = kex.KeyPair.from_private(self._randbytes(32))
        signature = b""
        digest = self.config.round_digest
        if self._signing_key is not None:
            signature = self._signing_key.sign(keys_signed_bytes(
                digest, self.id, self._channel.public, self._mask.public))
        return AdvertiseKeys(self.config.session_id, self.id, self._channel.public, self._mask.public, digest,
                             signature)

    def receive(self, message: Message | bytes) -> Message:
        """Handle one server message and return the reply to send."""
        if self.stage is Stage.ABORTED:
            raise AbortedError(f"client {self.id} has aborted this round")
        from_wire = isinstance(message, (bytes, bytearray, memoryview))
        msg = wire.decode(message) if from_wire else message
        if not isinstance(msg, SERVER_TO_CLIENT):
            raise UnexpectedMessageError(f"client {self.id} got a {type(msg).__name__}, which only the server receives")
        if not from_wire:  # decode built it from checked fields; an object may hold anything
            wire.check_fields(msg)
        if msg.session_id != self.config.session_id:
            raise WrongSessionError(f"client {self.id}: message of session {msg.session_id.hex()[:16]}…, "
                                    f"this round is {self.config.session_id.hex()[:16]}…")
        if msg.receiver != self.id:
            raise UnknownClientError(f"client {self.id} got a message addressed to client {msg.receiver}")
        nxt = next_stage(self.config.mode, self.stage, msg.type)
        if nxt is None:
            raise UnexpectedMessageError(f"client {self.id} in stage {self.stage.value} cannot take {msg.type.name}")
        handler = {KeysBroadcast: self._on_keys, ForwardedShares: self._on_shares,
                   ConsistencyRequest: self._on_consistency, UnmaskRequest: self._on_unmask}[type(msg)]
        try:
            if not from_wire and isinstance(msg, (ConsistencyRequest, UnmaskRequest)):
                self._require_increasing(msg)
            reply = handler(msg)
        except (RefusedRequestError, RoundMismatchError, AbortedError):
            self.stage = Stage.ABORTED
            self._forget()
            raise
        self.stage = nxt
        return reply

    def _advance(self, event, *, local: bool) -> None:
        nxt = next_stage(self.config.mode, self.stage, event)
        if nxt is None:
            raise LocalProtocolError(f"client {self.id}: {event} is not legal in stage {self.stage.value}")
        self.stage = nxt

    def _abort(self, why: str) -> None:
        raise AbortedError(f"client {self.id} aborts: {why}")

    def _forget(self) -> None:
        self._self_seed = self._mask = self._channel = self._noise_seed = None
        self._held.clear()
        self._share_keys.clear()

    # ------------------------------------------------------------------ persistence

    def to_state(self) -> bytes:
        """The party as bytes, for transports that handle each message in a fresh process (Flower's
        ClientApp keeps it in the node's Context between messages). It holds the round's private
        keys, self-mask seed and held shares: keep it where the client's own secrets may live. The
        signing key and the randomness source are not saved; pass them again to ``from_state``.

        Layout: b"SAst" | header length (4 B BE) | JSON header (hex for bytes) | input words.
        """
        def hx(b: bytes | None) -> str | None:
            return None if b is None else b.hex()

        head = {"v": STATE_VERSION, "session": self.config.session_id.hex(), "digest": self.config.round_digest.hex(),
                "id": self.id,
                "stage": self.stage.value,
                "channel": [self._channel.private.hex(), self._channel.public.hex()] if self._channel else None,
                "mask": [self._mask.private.hex(), self._mask.public.hex()] if self._mask else None,
                "self_seed": hx(self._self_seed), "noise_seed": hx(self._noise_seed),
                "peers": {str(v): s.hex() for v, s in self._peers.items()},
                "held": {str(v): [x.hex() for x in shares] for v, shares in self._held.items()},
                "share_keys": {str(v): k.hex() for v, k in self._share_keys.items()},
                "survivors": None if self._survivors is None else list(self._survivors)}
        body = json.dumps(head, separators=(",", ":")).encode()
        words = b"" if self._input is None else self._input.tobytes()
        return _STATE_MAGIC + struct.pack(">I", len(body)) + body + words

    @classmethod
    def from_state(cls, config: RoundConfig, state: bytes, *, signing_key: SigningKey | None = None,
                   randbytes: Callable[[int], bytes] = os.urandom) -> "ClientParty":
        """The party ``to_state`` saved, in the same stage; ``config`` is the round's configuration."""
        def unhex(h):
            return None if h is None else bytes.fromhex(h)

        try:
            state = bytes(state)
            if state[:4] != _STATE_MAGIC:
                raise ValueError(f"bad magic {state[:4]!r}")
            (n,) = struct.unpack_from(">I", state, 4)
            head = json.loads(state[8:8 + n])
            raw = state[8 + n:]
            if head["v"] != STATE_VERSION:
                raise ValueError(f"version {head['v']!r}, this library reads {STATE_VERSION}")
            session, client_id, stage = unhex(head["session"]), int(head["id"]), Stage(head["stage"])
            digest = unhex(head["digest"])
            keys = [(k, None if head[k] is None else kex.KeyPair(*map(bytes.fromhex, head[k])))
                    for k in ("channel", "mask")]
            self_seed = unhex(head["self_seed"])
            peers = {int(v): bytes.fromhex(s) for v, s in head["peers"].items()}
            held = {int(v): tuple(bytes.fromhex(x) for x in shares) for v, shares in head["held"].items()}
            noise_seed = unhex(head.get("noise_seed"))
            share_keys = {int(v): bytes.fromhex(k) for v, k in head["share_keys"].items()}
            survivors = None if head["survivors"] is None else tuple(int(u) for u in head["survivors"])
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise InputError(f"state is not a saved ClientParty: {e}") from None
        if session != config.session_id:
            raise LocalProtocolError(f"state is of session {session.hex()[:16]}…, config is of session "
                                     f"{config.session_id.hex()[:16]}…")
        if digest != config.round_digest:
            raise LocalProtocolError(f"state was saved under round digest {digest.hex()[:16]}…, config has "
                                     f"{config.round_digest.hex()[:16]}…: other round parameters")
        # After stage 1 the noise seed lives only in its shares; the constructor still wants one.
        placeholder = (noise_seed or bytes(32)) if config.excess_noise else None
        party = cls(config, client_id, signing_key=signing_key, randbytes=randbytes, noise_seed=placeholder)
        party._noise_seed = noise_seed
        if raw:
            dtype = wire.word_dtype(config.bits)
            if len(raw) != config.dim * dtype.itemsize:
                raise InputError(f"state holds {len(raw)} bytes of input, expected {config.dim} words of {dtype}")
            party._input = check_words(np.frombuffer(raw, dtype=dtype), config, what="saved input")
        for name, pair in keys:
            setattr(party, f"_{name}", pair)
        party.stage, party._self_seed, party._survivors = stage, self_seed, survivors
        party._peers, party._held, party._share_keys = peers, held, share_keys
        return party

    # ------------------------------------------------------------------ stage 1: share keys

    def _on_keys(self, msg: KeysBroadcast) -> ShareKeys:
        cfg = self.config
        peers: dict[int, tuple[bytes, bytes]] = {}
        seen_keys = {self._channel.public, self._mask.public}
        for p in msg.peers:
            if not _has(self.neighbours, p.client_id):
                raise UnknownClientError(f"client {self.id}: keys of {p.client_id}, who is not a neighbour")
            if len(p.channel_pk) != 32 or len(p.mask_pk) != 32:
                raise DecodeError(f"client {self.id}: keys of {p.client_id} have the wrong length")
            if p.channel_pk in seen_keys or p.mask_pk in seen_keys or p.channel_pk == p.mask_pk:
                raise RemoteProtocolError(f"client {self.id}: keys of {p.client_id} repeat another key")
            seen_keys |= {p.channel_pk, p.mask_pk}
            if cfg.mode is Mode.ACTIVE:  # under the key of our own configuration, the digest p carries
                verify(cfg.verify_keys[p.client_id], p.signature,
                       keys_signed_bytes(p.round_digest, p.client_id, p.channel_pk, p.mask_pk))
            elif p.signature:
                raise RemoteProtocolError(f"client {self.id}: keys of {p.client_id} are signed in semi-honest mode")
            peers[p.client_id] = (p.channel_pk, p.mask_pk)
        mismatched = [p.client_id for p in msg.peers if p.round_digest != cfg.round_digest]
        if mismatched:  # every entry is authentic (active mode): the server gave us other round parameters
            raise RoundMismatchError(f"client {self.id} aborts: neighbour {mismatched[0]} advertised round digest "
                                     f"{next(p.round_digest for p in msg.peers if p.client_id == mismatched[0]).hex()[:16]}…, "
                                     f"ours is {cfg.round_digest.hex()[:16]}…: the parties hold different "
                                     f"round parameters")
        if len(peers) < cfg.threshold:
            self._abort(f"only {len(peers)} neighbours advertised keys, fewer than threshold t={cfg.threshold}")
        channel_sk = kex.private_key(self._channel.private)
        self._self_seed = self._randbytes(32)
        ids = sorted(peers)
        xs = [v + 1 for v in ids]
        sk_shares = shamir.split(self._mask.private, threshold=cfg.threshold, xs=xs, randbytes=self._randbytes)
        b_shares = shamir.split(self._self_seed, threshold=cfg.threshold, xs=xs, randbytes=self._randbytes)
        noise_shares = (shamir.split(self._noise_seed, threshold=cfg.threshold, xs=xs, randbytes=self._randbytes)
                        if cfg.excess_noise else [None] * len(ids))
        out, share_keys = [], {}
        for v, sk_share, b_share, noise_share in zip(ids, sk_shares, b_shares, noise_shares):
            key = kex.share_key(channel_sk, peers[v][0], session_id=cfg.session_id, u=self.id, v=v)
            key = share_keys[v] = bound_share_key(key, session_id=cfg.session_id, u=self.id,
                                                  u_mask_pk=self._mask.public, v=v, v_mask_pk=peers[v][1])
            plaintext = struct.pack(">II", self.id, v) + sk_share.to_bytes() + b_share.to_bytes()
            if noise_share is not None:
                plaintext += noise_share.to_bytes()
            out.append(EncryptedShare(v, aead.seal(key, plaintext, round_digest=cfg.round_digest,
                                                   stage=STAGE_SHARES, sender=self.id, receiver=v)))
        commitment = self_mask_commitment(cfg.round_digest, self.id, self._self_seed)
        self._peers = {v: mask_pk for v, (_, mask_pk) in peers.items()}
        self._share_keys = share_keys
        self._noise_seed = None  # it lives on only in the shares
        return ShareKeys(cfg.session_id, self.id, commitment, tuple(out))

    # ------------------------------------------------------------------ stage 2: masked input

    def _on_shares(self, msg: ForwardedShares) -> MaskedInput:
        cfg = self.config
        if self._input is None:
            raise LocalProtocolError(f"client {self.id}: set_input() before the masked-input stage")
        held: dict[int, tuple[bytes, ...]] = {}
        size = wire.share_plaintext_bytes(cfg.excess_noise)
        for s in msg.shares:  # check everything before changing anything
            if s.peer not in self._peers:
                raise UnknownClientError(f"client {self.id}: shares from {s.peer}, who did not advertise keys to it")
            key = self._share_keys[s.peer]
            plain = aead.open_(key, s.ciphertext, round_digest=cfg.round_digest, stage=STAGE_SHARES,
                               sender=s.peer, receiver=self.id)
            if len(plain) != size or struct.unpack_from(">II", plain) != (s.peer, self.id):
                raise AuthenticationError("share ciphertext failed authentication")
            shares = tuple(plain[i:i + wire.SHARE_BYTES] for i in range(8, size, wire.SHARE_BYTES))
            for raw in shares:
                if shamir.Share.from_bytes(raw).x != self.id + 1:
                    raise AuthenticationError("share ciphertext failed authentication")
            held[s.peer] = shares
        if len(held) < cfg.threshold:
            self._abort(f"only {len(held)} neighbours sent shares, fewer than threshold t={cfg.threshold}")
        plus, minus = [self._self_seed], []
        mask_sk = kex.private_key(self._mask.private)
        for v in sorted(held):  # may raise (bad peer key): before any state changes
            seed = kex.pairwise_mask_seed(mask_sk, self._peers[v], session_id=cfg.session_id,
                                          u=self.id, v=v)
            (plus if mask_sign(self.id, v) > 0 else minus).append(seed)
        self._held = held
        self._peers, self._share_keys = {}, {}  # needed no more: the round's n*k of them are most of its memory
        words, self._input = self._input, None  # our own copy (set_input): mask it in place
        masking.add_masks(words, plus=plus, minus=minus, bits=cfg.bits)
        signature = b""
        if self._signing_key is not None:
            signature = self._signing_key.sign(masked_input_signed_bytes(cfg.round_digest, self.id, words, cfg.bits))
        return MaskedInput(cfg.session_id, self.id, cfg.bits, words, signature)

    # ------------------------------------------------------------------ stage 3: consistency

    def _require_increasing(self, msg: ConsistencyRequest | UnmaskRequest) -> None:
        """The id lists of a message object must be strictly increasing, as wire.decode makes sure
        of for bytes (the handlers rely on it): a list repeating the client's own id passed the
        min_survivors count."""
        lists = {"survivor": msg.survivors}
        if isinstance(msg, UnmaskRequest):
            lists["dropped"] = msg.dropped
        for name, ids in lists.items():
            if not all(map(operator.lt, ids, itertools.islice(ids, 1, None))):
                raise RefusedRequestError(f"client {self.id}: {name} list is not strictly increasing: {ids[:10]}")

    def _check_survivors(self, survivors: tuple[int, ...]) -> None:
        """The checks on a strictly increasing survivor list, each O(k log n) where it can be: the
        list is n long and every client gets one."""
        cfg = self.config
        if not _has(survivors, self.id):
            raise RefusedRequestError(f"client {self.id} sent its masked input but is not in the survivor list")
        ids = cfg.client_ids  # sorted and unique: a contiguous range is checked at its ends
        inside = (survivors[0] >= ids[0] and survivors[-1] <= ids[-1] if ids[-1] - ids[0] == len(ids) - 1
                  else frozenset(ids).issuperset(survivors))
        if not inside:
            unknown = sorted(set(survivors) - set(ids))
            raise RefusedRequestError(f"client {self.id}: survivor list names clients not in the round: {unknown[:10]}")
        grown = {v for v in self.neighbours if _has(survivors, v)} - self._held.keys()
        if grown:
            raise RefusedRequestError(f"client {self.id}: survivor list is not a subset of the clients that "
                                      f"shared with it: {sorted(grown)[:10]} were not")
        if len(survivors) < cfg.min_survivors:
            raise RefusedRequestError(f"client {self.id}: {len(survivors)} survivors, fewer than "
                                      f"min_survivors={cfg.min_survivors}")
        if cfg.mode is Mode.ACTIVE:  # the server learns the sum of each component of the survivors' graph
            own = next(c for c in cfg.neighbour_graph.components(survivors) if self.id in c)
            if len(own) < cfg.min_survivors:
                raise RefusedRequestError(f"client {self.id}: the survivors' graph is disconnected and its own "
                                          f"component has {len(own)} clients, fewer than min_survivors="
                                          f"{cfg.min_survivors}: revealing would expose a partial sum")

    def _on_consistency(self, msg: ConsistencyRequest) -> ConsistencySignature:
        self._check_survivors(msg.survivors)
        self._survivors = msg.survivors
        sig = self._signing_key.sign(survivors_signed_bytes(self.config.round_digest, msg.survivors))
        return ConsistencySignature(self.config.session_id, self.id, sig)

    # ------------------------------------------------------------------ stage 4: unmask

    def _on_unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        cfg = self.config
        both = [v for v in msg.dropped if _has(msg.survivors, v)]  # the dropped list is the short one
        if both:
            raise RefusedRequestError(f"client {self.id} refuses to reveal both shares of client(s) {both[:10]}")
        self._check_survivors(msg.survivors)
        if cfg.mode is Mode.ACTIVE:
            if msg.survivors != self._survivors:
                raise RefusedRequestError(f"client {self.id}: survivor list differs from the one it signed")
            signers = set()  # only our own neighbours count, each once, on exactly this list
            signed = survivors_signed_bytes(cfg.round_digest, msg.survivors)
            for s in msg.signatures:
                if not _has(self.neighbours, s.client_id) or s.client_id in signers or not _has(msg.survivors, s.client_id):
                    continue
                try:
                    verify(cfg.verify_keys[s.client_id], s.signature, signed)
                except AuthenticationError:
                    continue
                signers.add(s.client_id)
            valid = len(signers)
            if valid < cfg.threshold:
                raise RefusedRequestError(f"client {self.id}: {valid} valid signatures of its neighbours on the "
                                          f"survivor list, fewer than t={cfg.threshold}")
        # How many noise seeds come off follows from the checked list and our own min_survivors.
        excess = frozenset(excess_owners(msg.survivors, min_survivors=cfg.min_survivors)) if cfg.excess_noise else ()
        out = []
        for v in sorted(self._held):
            if _has(msg.survivors, v):
                out.append(RevealedShare(v, ShareKind.SELF_MASK, self._held[v][1]))
                if v in excess:
                    out.append(RevealedShare(v, ShareKind.NOISE_SEED, self._held[v][2]))
            elif _has(msg.dropped, v):
                out.append(RevealedShare(v, ShareKind.MASK_KEY, self._held[v][0]))
        self._forget()
        return UnmaskResponse(cfg.session_id, self.id, tuple(out))


def _has(ids: tuple[int, ...], v: int) -> bool:
    """``v in ids`` for a strictly increasing tuple, in O(log n)."""
    i = bisect.bisect_left(ids, v)
    return i < len(ids) and ids[i] == v


def check_words(words: np.ndarray, config: RoundConfig, *, what: str) -> np.ndarray:
    """A contiguous copy of ``words`` after checking length, dtype and range; InputError otherwise."""
    if not isinstance(words, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(words).__name__}")
    if words.ndim != 1 or words.shape[0] != config.dim:
        raise InputError(f"{what} has shape {words.shape}, expected ({config.dim},)")
    if words.dtype.kind != "u":
        raise InputError(f"{what} has dtype {words.dtype}, expected unsigned integer words "
                         f"({wire.word_dtype(config.bits)})")
    if words.size and int(words.max()) >= 1 << config.bits:
        raise InputError(f"{what} holds {int(words.max())}, outside [0, 2**{config.bits})")
    return np.ascontiguousarray(words, dtype=wire.word_dtype(config.bits)).copy()
