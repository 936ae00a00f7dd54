"""ServerParty: the aggregator's side of the protocol, sans-I/O.

``receive(message)`` takes one client message (object or bytes) and returns the messages to send
next (an empty list until the stage is complete); ``close_stage()`` is the stage's deadline: the
clients that have not answered are dropouts, and the server moves on with the rest or aborts.
Masked inputs are added into one running sum as they arrive, so memory is O(d + n*k), never O(n*d).

Limits: the round aborts (``AbortedError``, nothing more revealed) when fewer than
``min_survivors`` clients remain after stage 0, 1, 2 or 3, when some client's masks could not
be removed because fewer than t of its neighbours hold its shares, or when the survivors' graph is
disconnected (the sum of each component would be revealed). Stage-4 responders only need
to cover every such neighbourhood; the sum covers the stage-2 survivors.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import struct
from dataclasses import dataclass, field

import numpy as np

from . import masking, wire
from .client import (keys_signed_bytes, mask_sign, masked_input_signed_bytes, self_mask_commitment,
                     survivors_signed_bytes)
from .config import Mode, RoundConfig
from .excess import excess_owners
from .errors import (AbortedError, AuthenticationError, DuplicateMessageError, InputError, LocalProtocolError,
                     RemoteProtocolError, RoundMismatchError, ShamirError, UnexpectedMessageError,
                     UnknownClientError, WrongSessionError)
from .hazmat import kex, shamir
from .hazmat.sign import verify
from .messages import (CLIENT_TO_SERVER, AdvertiseKeys, ConsistencyRequest, ConsistencySignature,
                       EncryptedShare, ForwardedShares, KeysBroadcast, MaskedInput, Message, PeerKeys,
                       ShareKeys, ShareKind, SignedBy, UnmaskRequest, UnmaskResponse)
from .state import Event, Stage, next_stage

#: How many t-subsets of a larger share set to try when some shares are forged.
MAX_SUBSET_TRIES = 256
#: Any fixed scalar: agreeing with it rejects small-order (and wrong-length) public keys at stage 0.
_KEY_CHECK = kex.private_key(hashlib.sha256(b"secagg/v1/server-key-check").digest())

_EXPECTED = {
    Stage.COLLECT_KEYS: AdvertiseKeys,
    Stage.COLLECT_SHARES: ShareKeys,
    Stage.COLLECT_INPUTS: MaskedInput,
    Stage.COLLECT_SIGNATURES: ConsistencySignature,
    Stage.COLLECT_UNMASK: UnmaskResponse,
}


@dataclass
class RoundResult:
    """What the server learned: the sum (mod 2**bits) of the survivors' inputs, and who they are."""

    aggregate: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]                       # shared keys but sent no masked input
    stage_survivors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    forged_shares_from: tuple[int, ...] = ()       # clients whose revealed shares were inconsistent
    noise_seeds: dict[int, bytes] = field(default_factory=dict)  # excess owner -> its noise seed
    noise_kept: tuple[int, ...] = ()               # survivors whose noise share stays in the sum


class ServerParty:
    """The server of one round."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self.stage = Stage.COLLECT_KEYS
        self._expected: set[int] = set(config.client_ids)
        self._got: set[int] = set()
        self._keys: dict[int, PeerKeys] = {}
        self._commitments: dict[int, bytes] = {}
        self._shares_to: dict[int, list[EncryptedShare]] = {}
        self._sum: np.ndarray | None = None
        self._signatures: dict[int, bytes] = {}
        self._revealed: dict[tuple[int, ShareKind], list[tuple[int, bytes]]] = {}
        self.stage_survivors: dict[str, tuple[int, ...]] = {}
        self.result: RoundResult | None = None
        self.abort_reason: str | None = None

    # ------------------------------------------------------------------ driving

    @property
    def waiting_for(self) -> frozenset[int]:
        """Clients the current stage still waits for."""
        return frozenset(self._expected - self._got)

    def receive(self, message: Message | bytes) -> list[Message]:
        """Take one client message. Returns the next stage's messages once every expected client
        has answered, else []. A bad message raises a RemoteProtocolError and changes nothing."""
        if self.stage is Stage.ABORTED:
            raise AbortedError(f"the round was aborted: {self.abort_reason}")
        msg = wire.decode(message) if isinstance(message, (bytes, bytearray, memoryview)) else message
        if not isinstance(msg, CLIENT_TO_SERVER):
            raise UnexpectedMessageError(f"server got a {type(msg).__name__}, which only clients receive")
        wire.check_fields(msg)
        if msg.session_id != self.config.session_id:
            raise WrongSessionError(f"server: message of session {msg.session_id.hex()[:16]}…, this round is "
                                    f"{self.config.session_id.hex()[:16]}…")
        if next_stage(self.config.mode, self.stage, msg.type) is None:
            raise UnexpectedMessageError(f"server in stage {self.stage.value} cannot take {msg.type.name} "
                                         f"from client {msg.sender}")
        if msg.sender not in self.config.client_ids:
            raise UnknownClientError(f"server: message from client {msg.sender}, who is not in the round")
        if msg.sender not in self._expected:
            raise UnknownClientError(f"server: client {msg.sender} is not a live participant of stage "
                                     f"{self.stage.value}")
        if msg.sender in self._got:
            raise DuplicateMessageError(f"server: second {msg.type.name} from client {msg.sender}")
        handler = {AdvertiseKeys: self._on_keys, ShareKeys: self._on_share_keys, MaskedInput: self._on_input,
                   ConsistencySignature: self._on_signature, UnmaskResponse: self._on_unmask}[type(msg)]
        handler(msg)
        self._got.add(msg.sender)
        if self._got == self._expected:
            return self.close_stage()
        return []

    def close_stage(self) -> list[Message]:
        """The stage's deadline: whoever has not answered dropped out. Returns the next messages."""
        if self.stage in (Stage.DONE, Stage.ABORTED):
            raise LocalProtocolError(f"server: close_stage() in final stage {self.stage.value}")
        live = tuple(sorted(self._got))
        self.stage_survivors[self.stage.value] = live
        closing = self.stage
        try:
            out = {Stage.COLLECT_KEYS: self._close_keys, Stage.COLLECT_SHARES: self._close_shares,
                   Stage.COLLECT_INPUTS: self._close_inputs, Stage.COLLECT_SIGNATURES: self._close_signatures,
                   Stage.COLLECT_UNMASK: self._close_unmask}[closing](live)
        except AbortedError as e:
            self.stage = Stage.ABORTED
            self.abort_reason = str(e)
            self._sum = None
            raise
        self.stage = next_stage(self.config.mode, closing, Event.CLOSE)
        self._expected, self._got = set(live), set()
        if self.stage is Stage.COLLECT_UNMASK:
            self._expected = {m.receiver for m in out}
        return out

    def _require(self, live: tuple[int, ...], what: str) -> None:
        if len(live) < self.config.min_survivors:
            raise AbortedError(f"only {len(live)} clients {what}, fewer than min_survivors="
                               f"{self.config.min_survivors}; the round is aborted and nothing is revealed")

    # ------------------------------------------------------------------ stage 0

    def _on_keys(self, msg: AdvertiseKeys) -> None:
        cfg = self.config
        if cfg.mode is Mode.ACTIVE:
            verify(cfg.verify_keys[msg.sender], msg.signature,
                   keys_signed_bytes(msg.round_digest, msg.sender, msg.channel_pk, msg.mask_pk))
        elif msg.signature:
            raise RemoteProtocolError(f"server: client {msg.sender} signed its keys in semi-honest mode")
        if msg.round_digest != cfg.round_digest:
            raise RoundMismatchError(f"server: client {msg.sender} computed round digest "
                                     f"{msg.round_digest.hex()[:16]}…, the round's is {cfg.round_digest.hex()[:16]}…: "
                                     f"it holds other round parameters")
        for key in (msg.channel_pk, msg.mask_pk):  # a small-order key fails every agreement, later and elsewhere
            kex.agree(_KEY_CHECK, key)
        self._keys[msg.sender] = msg.peer_keys()

    def _close_keys(self, live):
        self._require(live, "advertised keys")
        alive = set(live)
        out = []
        for u in live:
            peers = tuple(self._keys[v] for v in self.config.neighbours(u) if v in alive)
            out.append(KeysBroadcast(self.config.session_id, u, peers))
        return out

    # ------------------------------------------------------------------ stage 1

    def _on_share_keys(self, msg: ShareKeys) -> None:
        u = msg.sender
        want = {v for v in self.config.neighbours(u) if v in self._expected}
        got = [s.peer for s in msg.shares]
        if set(got) != want or len(got) != len(want):
            raise RemoteProtocolError(f"server: client {u} sent shares for {sorted(got)[:10]}, expected exactly "
                                      f"its live neighbours {sorted(want)[:10]}")
        if any(len(s.ciphertext) != wire.ciphertext_bytes(self.config.excess_noise) for s in msg.shares):
            raise RemoteProtocolError(f"server: client {u} sent a ciphertext of the wrong size")
        self._commitments[u] = msg.self_mask_commitment
        for s in msg.shares:
            self._shares_to.setdefault(s.peer, []).append(EncryptedShare(u, s.ciphertext))

    def _close_shares(self, live):
        self._require(live, "shared their keys")
        alive = set(live)
        out = []
        for v in live:
            shares = tuple(sorted((s for s in self._shares_to.get(v, []) if s.peer in alive), key=lambda s: s.peer))
            out.append(ForwardedShares(self.config.session_id, v, shares))
        self._shares_to.clear()
        return out

    # ------------------------------------------------------------------ stage 2

    def _on_input(self, msg: MaskedInput) -> None:
        cfg = self.config
        if msg.bits != cfg.bits:
            raise RemoteProtocolError(f"server: client {msg.sender} sent {msg.bits}-bit words, the round uses {cfg.bits}")
        words = msg.words
        if not isinstance(words, np.ndarray) or words.ndim != 1 or words.shape[0] != cfg.dim:
            raise RemoteProtocolError(f"server: client {msg.sender} sent {getattr(words, 'shape', '?')} words, "
                                      f"expected ({cfg.dim},)")
        if words.dtype != wire.word_dtype(cfg.bits):
            raise RemoteProtocolError(f"server: client {msg.sender} sent dtype {words.dtype}, expected "
                                      f"{wire.word_dtype(cfg.bits)}")
        if cfg.bits != 8 * words.dtype.itemsize and int(words.max()) >= 1 << cfg.bits:
            raise RemoteProtocolError(f"server: client {msg.sender} sent a word >= 2**{cfg.bits}")
        if cfg.mode is Mode.ACTIVE:  # a y_u changed in transit is rejected: the client counts as dropped
            verify(cfg.verify_keys[msg.sender], msg.signature,
                   masked_input_signed_bytes(cfg.round_digest, msg.sender, words, cfg.bits))
        elif msg.signature:
            raise RemoteProtocolError(f"server: client {msg.sender} signed its masked input in semi-honest mode")
        if self._sum is None:
            self._sum = np.zeros(cfg.dim, dtype=wire.word_dtype(cfg.bits))
        np.add(self._sum, words, out=self._sum)

    def _set_survivors(self, survivors: tuple[int, ...], dropped: tuple[int, ...]) -> None:
        """The stage-2 lists, and their sets made once here, not per unmask response (n responses,
        each naming k owners)."""
        self._survivors, self._dropped = survivors, dropped
        self._survivor_set, self._dropped_set = frozenset(survivors), frozenset(dropped)
        self._excess_set = frozenset(self._excess())
        self._signed_survivors: bytes | None = None

    def _unmask_request(self, u: int, survivors, dropped, signatures=()) -> UnmaskRequest:
        return UnmaskRequest(self.config.session_id, u, survivors, dropped, signatures)

    def _close_inputs(self, live):
        self._require(live, "sent masked inputs")
        cfg = self.config
        survivors = live
        dropped = tuple(sorted(self._expected - set(live)))
        alive = set(survivors)
        t = cfg.threshold
        for u in survivors + dropped:   # check recoverability before asking anyone for a share
            holders = sum(1 for v in cfg.neighbours(u) if v in alive)
            if holders < t:
                raise AbortedError(f"client {u}'s masks need t={t} live neighbours, only {holders} remain; "
                                   f"the round is aborted before any share is revealed")
        parts = cfg.neighbour_graph.components(survivors)
        if len(parts) > 1:
            raise AbortedError(f"the survivors' graph is disconnected into {len(parts)} components of sizes "
                               f"{sorted(map(len, parts))[:10]}: their sums would be revealed; the round is aborted "
                               f"before any share is revealed")
        self._set_survivors(survivors, dropped)
        if cfg.mode is Mode.ACTIVE:
            return [ConsistencyRequest(cfg.session_id, u, survivors) for u in survivors]
        return [self._unmask_request(u, survivors, dropped) for u in survivors]

    # ------------------------------------------------------------------ stage 3

    def _on_signature(self, msg: ConsistencySignature) -> None:
        if self._signed_survivors is None:  # the same bytes for every signer: packed once
            self._signed_survivors = survivors_signed_bytes(self.config.round_digest, self._survivors)
        verify(self.config.verify_keys[msg.sender], msg.signature, self._signed_survivors)
        self._signatures[msg.sender] = msg.signature

    def _close_signatures(self, live):
        self._require(live, "signed the survivor list")
        cfg, t, signed = self.config, self.config.threshold, set(live)
        # a client reveals only after t of its own neighbours signed; ask only those who will answer
        ready = {u for u in live if sum(1 for v in cfg.neighbours(u) if v in signed) >= t}
        for u in self._survivors + self._dropped:
            holders = sum(1 for v in cfg.neighbours(u) if v in ready)
            if holders < t:
                raise AbortedError(f"client {u}'s masks need t={t} neighbours that can show t neighbour "
                                   f"signatures on the survivor list, only {holders} can; the round is aborted")
        sigs = tuple(SignedBy(u, self._signatures[u]) for u in live)
        return [self._unmask_request(u, self._survivors, self._dropped, sigs) for u in sorted(ready)]

    # ------------------------------------------------------------------ stage 4

    def _on_unmask(self, msg: UnmaskResponse) -> None:
        u = msg.sender
        neighbours = set(self.config.neighbours(u))
        survivors, dropped = self._survivor_set, self._dropped_set
        parsed = []
        for s in msg.shares:
            if s.owner not in neighbours:
                raise UnknownClientError(f"server: client {u} revealed a share of {s.owner}, not its neighbour")
            if s.kind is ShareKind.NOISE_SEED:
                requested = s.owner in self._excess_set
            elif s.kind is ShareKind.SELF_MASK:
                requested = s.owner in survivors
            else:
                requested = s.owner in dropped
            if not requested:
                raise RemoteProtocolError(f"server: client {u} revealed a {s.kind.name} share of {s.owner}, "
                                          f"which was not requested")
            share = shamir.Share.from_bytes(s.share)
            if share.x != u + 1:
                raise RemoteProtocolError(f"server: client {u} revealed a share at x={share.x}, expected {u + 1}")
            parsed.append((s.owner, s.kind, share))
        for owner, kind, share in parsed:
            self._revealed.setdefault((owner, kind), []).append(share)

    def _excess(self) -> tuple[int, ...]:
        if not self.config.excess_noise:
            return ()
        return excess_owners(self._survivors, min_survivors=self.config.min_survivors)

    def _noise_seeds(self) -> dict[int, bytes]:
        """The excess owners' noise seeds that t or more consistent shares rebuild. A seed with too
        few shares (holders dropped in stage 4) or inconsistent ones is left out: its noise stays
        in the sum, which is more noise, never less."""
        t, out = self.config.threshold, {}
        for owner in self._excess():
            shares = sorted(self._revealed.get((owner, ShareKind.NOISE_SEED), []), key=lambda s: s.x)
            if len(shares) < t:
                continue
            try:  # all revealed shares must lie on one polynomial (no commitment to check against)
                out[owner] = shamir.reconstruct(shares, threshold=t)
            except ShamirError:
                continue
        return out

    def _reconstruct(self, owner: int, kind: ShareKind, check) -> tuple[bytes, set[int]]:
        """The secret of ``owner`` from revealed shares; check(secret) says if it is authentic
        (commitment to b, or the advertised public key for s^SK). If the first t shares fail the
        check and more than t exist, t-subsets are tried and the forged shares identified."""
        t = self.config.threshold
        shares = sorted(self._revealed.get((owner, kind), []), key=lambda s: s.x)
        if len(shares) < t:
            raise AbortedError(f"only {len(shares)} shares of client {owner}'s {kind.name}, fewer than t={t}")
        try:  # the common case: the first t shares are authentic (checked by the commitment)
            secret = shamir.reconstruct(shares[:t], threshold=t)
            if check(secret):
                return secret, set()
        except ShamirError:
            pass
        if math.comb(len(shares), t) <= MAX_SUBSET_TRIES:
            subsets = itertools.combinations(shares, t)
        else:  # lexicographic order would spend every try on subsets holding one low-x forged share
            rng = random.Random(hashlib.sha256(self.config.session_id + struct.pack(">IB", owner, kind)).digest())
            subsets = (rng.sample(shares, t) for _ in range(MAX_SUBSET_TRIES))
        # A subset holding forged shares can still interpolate to the authentic secret (forged
        # deltas that cancel at x = 0), so of the subsets that pass the check the one whose
        # polynomial carries the most shares wins (the true one carries every honest share; a wrong
        # one meets it in at most t - 2 points besides x = 0). Only forged rounds pay for the scan.
        best: tuple[int, bytes, set[int]] | None = None
        for subset in subsets:
            try:
                secret = shamir.reconstruct(list(subset), threshold=t)
            except ShamirError:
                continue
            if not check(secret):
                continue
            good = {s.x for s in subset}
            bad = set()
            for s in shares:  # a share is forged if it is off the polynomial through the subset
                if s.x in good:
                    continue
                try:
                    shamir.reconstruct(list(subset) + [s], threshold=t)
                except ShamirError:
                    bad.add(s.x - 1)
            on = len(shares) - len(bad)
            if best is None or on > best[0]:
                best = (on, secret, bad)
            if not bad:
                break
        if best is not None:
            return best[1], best[2]
        raise AbortedError(f"the shares of client {owner}'s {kind.name} are forged or inconsistent and no "
                           f"authentic subset was found; the round is aborted")

    def _close_unmask(self, live):
        cfg = self.config
        forged: set[int] = set()
        plus, minus = [], []
        for u in self._survivors:
            commitment = self._commitments[u]
            b, bad = self._reconstruct(u, ShareKind.SELF_MASK,
                                       lambda s, u=u, c=commitment: self_mask_commitment(cfg.round_digest, u, s) == c)
            forged |= bad
            minus.append(b)
        alive = set(self._survivors)
        for v in self._dropped:
            mask_pk = self._keys[v].mask_pk
            sk, bad = self._reconstruct(v, ShareKind.MASK_KEY,
                                        lambda s, pk=mask_pk: kex.public_from_private(s) == pk)
            forged |= bad
            sk = kex.private_key(sk)
            for u in cfg.neighbours(v):
                if u not in alive:
                    continue
                seed = kex.pairwise_mask_seed(sk, self._keys[u].mask_pk, session_id=cfg.session_id, u=v, v=u)
                # u added mask_sign(u, v) * PRG(s_uv); remove it
                (minus if mask_sign(u, v) > 0 else plus).append(seed)
        total = self._sum
        masking.add_masks(total, plus=plus, minus=minus, bits=cfg.bits)
        self._sum = None
        noise_seeds = self._noise_seeds()
        self.result = RoundResult(aggregate=total, survivors=self._survivors, dropped=self._dropped,
                                  stage_survivors=dict(self.stage_survivors),
                                  forged_shares_from=tuple(sorted(forged)), noise_seeds=noise_seeds,
                                  noise_kept=tuple(u for u in self._survivors if u not in noise_seeds))
        return []
