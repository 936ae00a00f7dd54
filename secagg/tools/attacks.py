"""`python -m secagg.attacks`: a malicious-server campaign against the real client parties.

Each trial draws a round (n, graph, k, t, c, mode) that ``RoundConfig`` accepts, a set of
corrupt clients (at most c in any client's neighbourhood: the assumption of the active rule), and
a random combination of server deviations:

- ``withhold``: the target gets the shares of only t of its neighbours (set A); A is then
  declared dropped, so that the s^SK shares of A and t shares of b_target would unmask y_target;
- ``per_client_setup``: the target is handed other round parameters (lower t, fewer clients,
  lower min_survivors, another k, or the server's own verify keys for the others);
- ``key_substitution``: the target's neighbours' keys are replaced by the server's own in the
  relayed broadcast (a man in the middle);
- ``split_lists``: some clients see the target as a survivor, the others see it dropped;
- ``forged_list``: survivor lists naming clients that sent nothing, or with forged signatures;
- ``disconnected``: the server declares clients dropped until the survivors' graph falls apart;
- ``replay``: messages of one client or stage delivered to another, or again later.

Then the attacker tries to compute, from everything it obtained (masked inputs, every revealed
share, the corrupt clients' whole state, shares it could decrypt), every input and every partial
sum it can: it rebuilds each b_u and s_v^SK it has t shares of (checked against the commitment
and the advertised key), removes every mask whose seed it knows, and compares each sum it could
isolate with the truth. ``recovered`` counts trials where it computed an input or a sum over fewer
than ``min_survivors`` clients, within the model of the round's mode. Semi-honest mode trusts the
server to relay keys and survivor lists honestly, so there only other parameters per client and
replays are in the model (a disconnection from genuine dropouts is the honest ``ServerParty``'s to
refuse, which tests/secagg/test_attacks.py checks); the other deviations are run too and reported
apart as ``recovered_out_of_model``.
``aborted``: some client refused or aborted with a typed error, or a setup was refused.
``exact``: the server could compute exactly the sum of all clients that sent a masked input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np

from secagg import wire
from secagg.client import ClientParty, bound_share_key, mask_sign, self_mask_commitment
from secagg.config import ClientPolicy, GraphKind, Mode, RoundConfig
from secagg.errors import (AbortedError, ConfigError, InsufficientSharesError, RemoteProtocolError,
                           SecAggError, ShamirError)
from secagg.hazmat import aead, kex, prg, shamir
from secagg.hazmat.sign import SigningKey
from secagg.messages import (AdvertiseKeys, ConsistencyRequest, EncryptedShare, ForwardedShares, KeysBroadcast,
                             MaskedInput, PeerKeys, ShareKeys, ShareKind, SignedBy, UnmaskRequest, UnmaskResponse)

ATTACKS = ("withhold", "per_client_setup", "key_substitution", "split_lists", "forged_list", "disconnected",
           "replay")
#: What semi-honest mode claims to catch from a deviating server (the rest is out of its model).
SEMI_HONEST_MODEL = frozenset({"per_client_setup", "replay"})
SETUP_CHANGES = ("threshold", "clients", "min_survivors", "k", "verify_keys")


@dataclasses.dataclass
class Trial:
    index: int
    n: int
    graph: GraphKind
    k: int
    t: int
    c: int
    mode: Mode
    attacks: tuple[str, ...]
    setup_change: str | None
    target: int
    corrupt: tuple[int, ...]
    outcome: str = ""
    recovered: list[str] = dataclasses.field(default_factory=list)
    refusals: Counter = dataclasses.field(default_factory=Counter)

    @property
    def in_model(self) -> bool:
        return self.mode is Mode.ACTIVE or set(self.attacks) <= SEMI_HONEST_MODEL

    def describe(self) -> dict:
        return {"index": self.index, "n": self.n, "graph": self.graph.value, "k": self.k, "t": self.t, "c": self.c,
                "mode": self.mode.value, "attacks": list(self.attacks), "setup_change": self.setup_change,
                "target": self.target, "corrupt": list(self.corrupt), "outcome": self.outcome,
                "recovered": self.recovered[:3]}


def _state_secrets(party: ClientParty) -> dict:
    """What a corrupt client hands the server: its saved state (keys, self-mask seed, held shares)."""
    state = party.to_state()
    (n,) = struct.unpack_from(">I", state, 4)
    return json.loads(state[8:8 + n])


def draw(rng: np.random.Generator, index: int, *, max_n: int = 24) -> tuple[Trial, RoundConfig, dict, dict]:
    """A trial: round parameters RoundConfig accepts, corrupt clients, attacks."""
    n = int(rng.integers(5, max_n + 1))
    graph = GraphKind.SPARSE if n >= 7 and rng.random() < 0.6 else GraphKind.COMPLETE
    k = int(rng.choice(np.arange(2, min(n - 2, 12) + 1, 2))) if graph is GraphKind.SPARSE else n - 1
    mode = Mode.ACTIVE if rng.random() < 0.6 else Mode.SEMI_HONEST
    c = int(rng.integers(0, max(1, k // 3))) if mode is Mode.ACTIVE else 0
    lo = (k + c) // 2 + 1 if mode is Mode.ACTIVE else 2
    if lo > k:
        c, lo = 0, k // 2 + 1
    t = int(rng.integers(lo, min(k, lo + 2) + 1))
    m = int(rng.integers(2, max(3, n // 2) + 1))
    keys = {u: SigningKey.from_private(rng.bytes(32)) for u in range(n)}
    cfg = RoundConfig(session_id=rng.bytes(32), client_ids=tuple(range(n)), dim=4, bits=16, threshold=t,
                      min_survivors=m, graph=graph, k=k if graph is GraphKind.SPARSE else None,
                      verify_keys={u: s.public for u, s in keys.items()} if mode is Mode.ACTIVE else None,
                      max_corrupt_neighbours=c)
    target = int(rng.integers(n))
    nb = list(cfg.neighbours(target))
    corrupt = set(int(v) for v in rng.permutation(nb)[:int(rng.integers(0, c + 1))]) if c else set()
    while any(len(set(cfg.neighbours(u)) & corrupt) > c for u in range(n) if u not in corrupt):
        corrupt.pop()
    attacks = tuple(a for a in ATTACKS if rng.random() < 0.35) or (ATTACKS[int(rng.integers(len(ATTACKS)))],)
    change = SETUP_CHANGES[int(rng.integers(len(SETUP_CHANGES)))] if "per_client_setup" in attacks else None
    inputs = {u: rng.integers(0, 2**16, size=4, dtype=np.uint64).astype(np.uint32) for u in range(n)}
    trial = Trial(index, n, graph, cfg.k, t, c, mode, attacks, change, target, tuple(sorted(corrupt)))
    return trial, cfg, keys, inputs


def _altered_setup(cfg: RoundConfig, change: str, target: int, rng) -> RoundConfig:
    """The setup a lying server hands the target (it may itself be refused by RoundConfig)."""
    if change == "threshold":
        return dataclasses.replace(cfg, threshold=max(1, cfg.threshold - 1 - int(rng.integers(2))),
                                   insecure_weak_threshold=True)
    if change == "clients":  # a smaller round around the target
        keep = tuple(u for u in cfg.client_ids if u == target or rng.random() < 0.6)
        keys = None if cfg.verify_keys is None else {u: cfg.verify_keys[u] for u in keep}
        k = None if cfg.graph is GraphKind.COMPLETE else min(cfg.k, max(2, (len(keep) - 2) // 2 * 2))
        return dataclasses.replace(cfg, client_ids=keep, verify_keys=keys, k=k,
                                   threshold=min(cfg.threshold, len(keep) - 1), min_survivors=2,
                                   max_corrupt_neighbours=0, insecure_weak_threshold=True)
    if change == "min_survivors":
        return dataclasses.replace(cfg, min_survivors=2)
    if change == "k" and cfg.graph is GraphKind.SPARSE and cfg.k + 2 <= cfg.n - 2:
        return dataclasses.replace(cfg, k=cfg.k + 2, insecure_weak_threshold=True)
    if cfg.verify_keys is not None:  # the server's own keys for everybody but the target
        fake = {u: (pk if u == target else SigningKey.from_private(rng.bytes(32)).public)
                for u, pk in cfg.verify_keys.items()}
        return dataclasses.replace(cfg, verify_keys=fake)
    return dataclasses.replace(cfg, session_id=rng.bytes(32))


class _Run:
    """One malicious round: the server's side is this script; the clients are real parties."""

    def __init__(self, trial: Trial, cfg: RoundConfig, keys: dict, inputs: dict, rng) -> None:
        self.trial, self.cfg, self.keys, self.inputs, self.rng = trial, cfg, keys, inputs, rng
        self.cfg_of: dict[int, RoundConfig] = {}
        self.clients: dict[int, ClientParty] = {}
        self.adv: dict[int, AdvertiseKeys] = {}
        self.commitments: dict[int, bytes] = {}
        self.shares_to: dict[int, list[EncryptedShare]] = {}
        self.masked: dict[int, MaskedInput] = {}
        self.masked_with: dict[int, dict[int, bytes]] = {}    # u -> {v: the mask public key u used for v}
        self.revealed: dict[tuple[int, ShareKind], dict[int, shamir.Share]] = {}
        self.known_sk: dict[bytes, bytes] = {}                # mask public key -> private key the server knows
        self.fake: dict[int, tuple[kex.KeyPair, kex.KeyPair]] = {}
        self.corrupt_state: dict[int, dict] = {}
        self.outbox: list = []                                 # messages already delivered (for replays)

    # -------------------------------------------------------------- delivery

    def refuse(self, err: Exception) -> None:
        self.trial.refusals[type(err).__name__] += 1

    def send(self, u: int, msg):
        """Deliver to client u as bytes; its reply, or None if it rejected or aborted."""
        c = self.clients.get(u)
        if c is None:
            return None
        try:
            reply = c.receive(wire.encode(msg))
        except (RemoteProtocolError, AbortedError) as e:
            self.refuse(e)
            return None
        self.outbox.append((u, msg))
        return wire.decode(wire.encode(reply))

    def replay(self, u: int) -> None:
        """Earlier messages, and messages of other clients relabelled for u: all must be rejected."""
        for v, msg in self.outbox[-6:]:
            for m in (msg, dataclasses.replace(msg, receiver=u)):
                try:
                    reply = self.clients[u].receive(wire.encode(m))
                except (RemoteProtocolError, AbortedError) as e:
                    self.refuse(e)
                    continue
                self.trial.refusals["replay accepted"] += 1
                if isinstance(reply, UnmaskResponse):  # the server keeps whatever it gets
                    self.absorb(reply)

    # -------------------------------------------------------------- stages

    def run(self) -> None:
        t, cfg, att = self.trial, self.cfg, set(self.trial.attacks)
        policy = ClientPolicy(verify_keys=cfg.verify_keys, min_threshold=cfg.threshold, min_k=cfg.k,
                              min_survivors=cfg.min_survivors, min_bits=cfg.bits,
                              min_corrupt_neighbours=cfg.max_corrupt_neighbours)
        for u in cfg.client_ids:
            mine = cfg
            if u == t.target and t.setup_change:
                try:
                    mine = _altered_setup(cfg, t.setup_change, u, self.rng)
                except ConfigError as e:
                    self.refuse(e)
                    continue
                try:
                    policy.check(mine)           # the client checks the setup against what it holds
                except SecAggError as e:
                    self.refuse(e)
                    continue
            self.cfg_of[u] = mine
            self.clients[u] = ClientParty(mine, u, self.inputs[u],
                                          signing_key=self.keys[u] if mine.mode is Mode.ACTIVE else None,
                                          randbytes=self.rng.bytes)
            self.adv[u] = wire.decode(wire.encode(self.clients[u].start()))
        self.stage_keys(att)
        self.stage_shares(att)
        for u in sorted(self.clients):
            if u in t.corrupt:
                self.corrupt_state[u] = _state_secrets(self.clients[u])
        self.stage_unmask(att)

    def stage_keys(self, att) -> None:
        cfg, target = self.cfg, self.trial.target
        omit = self.rng.random() < 0.5   # hide clients of other parameters, or show them
        for u in list(self.clients):
            mine = self.cfg_of[u].round_digest
            peers = []
            for v in self.cfg_of[u].neighbours(u):
                if v not in self.adv:
                    continue
                p = self.adv[v].peer_keys()
                if p.round_digest != mine:
                    if cfg.mode is Mode.SEMI_HONEST:   # unsigned there: the server rewrites it
                        p = dataclasses.replace(p, round_digest=mine)
                    elif omit:
                        continue
                peers.append(p)
            peers = tuple(peers)
            if u == target and "key_substitution" in att:
                fakes = {}
                for p in peers:
                    pair = kex.KeyPair.from_private(self.rng.bytes(32)), kex.KeyPair.from_private(self.rng.bytes(32))
                    fakes[p.client_id] = pair
                    self.known_sk[pair[1].public] = pair[1].private
                sig = bytes(64) if cfg.mode is Mode.ACTIVE else b""
                evil = tuple(PeerKeys(v, c.public, s.public, self.cfg_of[u].round_digest, sig)
                             for v, (c, s) in sorted(fakes.items()))
                reply = self.send(u, KeysBroadcast(cfg.session_id, u, evil))
                if reply is not None:
                    self.fake = fakes
                    self.on_share_keys(u, reply)
                    continue
            if u == target and "replay" in att and self.outbox:
                self.replay(u)
            reply = self.send(u, KeysBroadcast(cfg.session_id, u, peers))
            if reply is not None:
                self.on_share_keys(u, reply)

    def on_share_keys(self, u: int, msg: ShareKeys) -> None:
        self.commitments[u] = msg.self_mask_commitment
        for s in msg.shares:
            if u == self.trial.target and s.peer in self.fake:
                self.decrypt_fake(u, s)
            self.shares_to.setdefault(s.peer, []).append(EncryptedShare(u, s.ciphertext))

    def decrypt_fake(self, u: int, s: EncryptedShare) -> None:
        """The man in the middle reads the shares u encrypted to a fake neighbour."""
        cfg = self.cfg_of[u]
        c, m = self.fake[s.peer]
        key = bound_share_key(kex.share_key(c.private, self.adv[u].channel_pk, session_id=cfg.session_id,
                                            u=s.peer, v=u), session_id=cfg.session_id, u=s.peer, u_mask_pk=m.public,
                              v=u, v_mask_pk=self.adv[u].mask_pk)
        try:
            plain = aead.open_(key, s.ciphertext, round_digest=cfg.round_digest, stage=1, sender=u, receiver=s.peer)
        except SecAggError:
            return
        for kind, off in ((ShareKind.MASK_KEY, 8), (ShareKind.SELF_MASK, 8 + wire.SHARE_BYTES)):
            share = shamir.Share.from_bytes(plain[off:off + wire.SHARE_BYTES])
            self.revealed.setdefault((u, kind), {})[share.x] = share

    def junk_shares_for(self, u: int) -> tuple[EncryptedShare, ...]:
        """Shares 'from' each fake neighbour, so a deceived target goes on to mask its input."""
        cfg, out = self.cfg_of[u], []
        for v, (c, m) in sorted(self.fake.items()):
            key = bound_share_key(kex.share_key(c.private, self.adv[u].channel_pk, session_id=cfg.session_id,
                                                u=v, v=u), session_id=cfg.session_id, u=v, u_mask_pk=m.public,
                                  v=u, v_mask_pk=self.adv[u].mask_pk)
            junk = shamir.split(bytes(32), threshold=1, xs=[u + 1])[0].to_bytes()
            extra = junk if cfg.excess_noise else b""
            out.append(EncryptedShare(v, aead.seal(key, struct.pack(">II", v, u) + junk + junk + extra,
                                                   round_digest=cfg.round_digest, stage=1, sender=v, receiver=u)))
        return tuple(out)

    def stage_shares(self, att) -> None:
        cfg, t = self.cfg, self.trial
        for u in sorted(self.commitments):
            shares = sorted(self.shares_to.get(u, []), key=lambda s: s.peer)
            shares = [s for s in shares if s.peer in self.commitments]
            if u == t.target and self.fake:
                shares = list(self.junk_shares_for(u))
            elif u == t.target and "withhold" in att:
                keep = self.rng.permutation(len(shares))[:self.cfg_of[u].threshold]
                shares = [shares[i] for i in sorted(keep)]
            reply = self.send(u, ForwardedShares(cfg.session_id, u, tuple(shares)))
            if reply is None:
                continue
            self.masked[u] = reply
            if u == t.target and self.fake:
                self.masked_with[u] = {v: m.public for v, (_, m) in self.fake.items()}
            else:
                self.masked_with[u] = {s.peer: self.adv[s.peer].mask_pk for s in shares}

    def survivor_lists(self, att) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per client: (survivors, dropped) the server claims."""
        t, cfg = self.trial, self.cfg
        sent = set(self.masked)
        shared = set(self.commitments)
        lists = {}
        base = set(sent)
        withheld_from: set[int] = set()
        if "withhold" in att and t.target in self.masked_with:
            withheld_from = set(self.masked_with[t.target]) & sent
            base -= withheld_from
        if "disconnected" in att and cfg.graph is GraphKind.SPARSE:
            ring = cfg.neighbour_graph.ring
            half = cfg.k // 2
            i = ring.index(t.target)
            gone = {ring[(i + d) % cfg.n] for d in range(1, half + 1)} | {ring[(i + cfg.n // 2 + d) % cfg.n]
                                                                           for d in range(half)}
            base -= gone - {t.target}
        for u in sent:
            survivors = set(base) | (withheld_from if u in withheld_from else set())
            if "split_lists" in att and u % 2:
                survivors.discard(t.target)
            if "forged_list" in att and u % 3 == 0:
                survivors |= shared - sent     # clients that never sent a masked input
            survivors.add(u)
            lists[u] = (tuple(sorted(survivors)), tuple(sorted(shared - survivors)))
        return lists

    def stage_unmask(self, att) -> None:
        cfg = self.cfg
        lists = self.survivor_lists(att)
        sigs: list[SignedBy] = []
        if cfg.mode is Mode.ACTIVE:
            for u, (survivors, _) in sorted(lists.items()):
                reply = self.send(u, ConsistencyRequest(cfg.session_id, u, survivors))
                if reply is not None:
                    sigs.append(SignedBy(u, reply.signature))
            if "forged_list" in att:
                sigs += [SignedBy(u, bytes(64)) for u in cfg.client_ids if u not in {s.client_id for s in sigs}]
            sigs.sort(key=lambda s: s.client_id)
        for u, (survivors, dropped) in sorted(lists.items()):
            if u == self.trial.target and "replay" in att:
                self.replay(u)
            reply = self.send(u, UnmaskRequest(cfg.session_id, u, survivors, dropped, tuple(sigs)))
            if isinstance(reply, UnmaskResponse):
                self.absorb(reply)

    def absorb(self, reply: UnmaskResponse) -> None:
        for s in reply.shares:
            share = shamir.Share.from_bytes(s.share)
            self.revealed.setdefault((s.owner, s.kind), {})[share.x] = share

    # -------------------------------------------------------------- the attacker's computation

    def secrets(self) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Every b_u and s_u^SK the attacker can rebuild (checked) or holds from corrupt clients."""
        pool: dict[tuple[int, ShareKind], dict[int, shamir.Share]] = {k: dict(v) for k, v in self.revealed.items()}
        b, sk = {}, {}
        for c, st in self.corrupt_state.items():
            if st["mask"]:  # a corrupt client that aborted has forgotten its keys
                sk[c] = bytes.fromhex(st["mask"][0])
            if st["self_seed"]:
                b[c] = bytes.fromhex(st["self_seed"])
            for v, held in st["held"].items():
                for kind, raw in ((ShareKind.MASK_KEY, held[0]), (ShareKind.SELF_MASK, held[1])):
                    share = shamir.Share.from_bytes(bytes.fromhex(raw))
                    pool.setdefault((int(v), kind), {})[share.x] = share
        for (owner, kind), shares in pool.items():
            if owner not in self.cfg_of or (owner in b if kind is ShareKind.SELF_MASK else owner in sk):
                continue
            t = self.cfg_of[owner].threshold
            try:
                secret = shamir.reconstruct(sorted(shares.values(), key=lambda s: s.x)[:t], threshold=t)
            except (InsufficientSharesError, ShamirError):
                continue
            if kind is ShareKind.SELF_MASK and owner in self.commitments and self_mask_commitment(
                    self.cfg_of[owner].round_digest, owner, secret) == self.commitments[owner]:
                b[owner] = secret
            elif kind is ShareKind.MASK_KEY and kex.public_from_private(secret) == self.adv[owner].mask_pk:
                sk[owner] = secret
        return b, sk

    def attack(self) -> tuple[list[str], bool]:
        """(what was recovered, whether the exact sum of all senders was computable)."""
        b, sk = self.secrets()
        known = dict(self.known_sk)
        for u, s in sk.items():
            known[self.adv[u].mask_pk] = s
        parent = {u: u for u in self.masked}

        def find(u):
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u
        stuck = set()
        for u, peers in self.masked_with.items():
            for v, v_pk in peers.items():
                if self.adv[u].mask_pk in known or v_pk in known:
                    continue  # this seed is known: the attacker removes the mask itself
                back = self.masked_with.get(v, {}).get(u)
                if back == self.adv[u].mask_pk and v in parent:
                    parent[find(u)] = find(v)   # cancels inside any set holding both
                else:
                    stuck.add(u)
        groups: dict[int, list[int]] = {}
        for u in self.masked:
            groups.setdefault(find(u), []).append(u)
        found, exact = [], False
        for members in groups.values():
            if any(u in stuck or u not in b for u in members):
                continue
            words = np.zeros(self.cfg.dim, dtype=np.uint32)
            for u in members:
                y = self.masked[u].words.astype(np.uint32).copy()
                plus, minus = [], [b[u]]
                mine = known.get(self.adv[u].mask_pk)
                for v, v_pk in self.masked_with[u].items():
                    if mine is None and v_pk not in known:
                        continue  # unknown seed: it cancels with v's mask inside the group (else u is stuck)
                    seed = (kex.pairwise_mask_seed(mine, v_pk, session_id=self.cfg_of[u].session_id, u=u, v=v)
                            if mine is not None else
                            kex.pairwise_mask_seed(known[v_pk], self.adv[u].mask_pk,
                                                   session_id=self.cfg_of[u].session_id, u=u, v=v))
                    (minus if mask_sign(u, v) > 0 else plus).append(seed)
                prg.add_masks(y, plus=plus, minus=minus, bits=self.cfg.bits)
                words += y
            words &= np.uint32(0xFFFF)
            truth = sum(self.inputs[u].astype(np.uint64) for u in members).astype(np.uint32) & np.uint32(0xFFFF)
            if not np.array_equal(words, truth):
                continue
            honest = [u for u in members if u not in self.trial.corrupt]
            if set(members) == set(self.masked):
                exact = True
            if honest and len(members) < self.cfg.min_survivors:
                found.append(f"sum of {sorted(members)[:8]} ({len(members)} < min_survivors={self.cfg.min_survivors})")
        return found, exact


def execute(trial: Trial, cfg: RoundConfig, keys: dict, inputs: dict, rng: np.random.Generator) -> Trial:
    """Run the trial's attacks against real clients, then the attacker's computation; fills in
    ``outcome`` ("recovered", "aborted" or "exact"), ``recovered`` and ``refusals``."""
    run = _Run(trial, cfg, keys, inputs, rng)
    run.run()
    trial.recovered, exact = run.attack()
    refused = sum(v for k, v in trial.refusals.items() if k != "replay accepted")
    trial.outcome = "recovered" if trial.recovered else "exact" if exact and not refused else "aborted"
    return trial


def run_trial(seed: int, index: int, *, max_n: int = 24) -> Trial:
    """Trial ``index`` of campaign ``seed`` (deterministic: keys and choices come from one generator)."""
    rng = np.random.default_rng([seed, index, 11])
    trial, cfg, keys, inputs = draw(rng, index, max_n=max_n)
    return execute(trial, cfg, keys, inputs, rng)


def campaign(trials: int, seed: int, *, max_n: int = 24) -> dict:
    t0 = time.perf_counter()
    counts, out_of_model, by_attack, by_mode, refusals = Counter(), Counter(), {}, {}, Counter()
    failures = []
    for i in range(trials):
        tr = run_trial(seed, i, max_n=max_n)
        (counts if tr.in_model else out_of_model)[tr.outcome] += 1
        for a in tr.attacks:
            by_attack.setdefault(a, Counter())[tr.outcome] += 1
        by_mode.setdefault(tr.mode.value + ("" if tr.in_model else " (out of model)"), Counter())[tr.outcome] += 1
        refusals.update(tr.refusals)
        if tr.outcome == "recovered" and tr.in_model and len(failures) < 20:
            failures.append(tr.describe())
    return {"trials": trials, "seed": seed, "in_model_trials": sum(counts.values()),
            "recovered": counts["recovered"], "aborted": counts["aborted"], "exact": counts["exact"],
            "recovered_out_of_model": out_of_model["recovered"], "out_of_model": dict(out_of_model),
            "replays_accepted": refusals.pop("replay accepted", 0),
            "by_attack": {k: dict(v) for k, v in sorted(by_attack.items())},
            "by_mode": {k: dict(v) for k, v in sorted(by_mode.items())},
            "refusals_by_error": dict(refusals.most_common()), "failures": failures, "max_n": max_n,
            "seconds": round(time.perf_counter() - t0, 2), "machine": platform.machine(),
            "python": platform.python_version()}


def print_table(r: dict) -> None:
    print(f"{r['trials']} trials, seed {r['seed']}, {r['seconds']} s; in the mode's model: {r['in_model_trials']}")
    for key in ("recovered", "aborted", "exact", "recovered_out_of_model", "replays_accepted"):
        print(f"  {key:<24}{r[key]:>7}")
    print(f"\n{'':<34}{'recovered':>10}{'aborted':>10}{'exact':>10}")
    for group in ("by_mode", "by_attack"):
        for key, v in r[group].items():
            print(f"{key:<34}" + "".join(f"{v.get(c, 0):>10}" for c in ("recovered", "aborted", "exact")))
    print("refusals:", ", ".join(f"{k} {v}" for k, v in r["refusals_by_error"].items()))
    for f in r["failures"]:
        print("RECOVERED", f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secagg.attacks", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-n", type=int, default=24)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    r = campaign(a.trials, a.seed, max_n=a.max_n)
    print_table(r)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0 if r["recovered"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
