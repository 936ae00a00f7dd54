"""The federated training loop: sample, train locally, aggregate securely, update, account, record.

``run(cfg, out_dir)`` trains ``cfg.rounds`` rounds (or until the next round would exceed the ε
budget), checkpointing after every round, and leaves in ``out_dir``: ``metrics.jsonl``,
``config.resolved.toml``, ``privacy.json``, ``plots.png``, ``model.pt``, ``summary.json`` and the
server's message digests ``transcript.jsonl``. ``run(cfg, out_dir, resume=True)`` continues from the
last checkpoint and ends with the same result as an uninterrupted run when
``secure_randomness = false`` (every random choice of round r is derived from (seed, r)).

Privacy ledger. Before a round's aggregate is released, its privacy event is appended (and
fsynced) to ``privacy_ledger.jsonl``. If the process dies after a release but before the round's
checkpoint, the resumed run counts that release: with fresh (CSPRNG) noise the re-run round is a
second release and is charged again; with seeded noise the re-run reproduces the identical
release, so it is charged once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dp.accounting import Accountant, AccountantKind
from dp.budget import BudgetTracker, PerClientBudgets, PrivacyBudget
from dp.calibration import calibrate_noise_multiplier
from dp.distributed import DDGConfig, DDGPlan
from dp.errors import BudgetExceededError
from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent, UnitOfPrivacy, event_from_dict
from secagg.config import GraphKind as SecAggGraph
from secagg.simulate import ProtocolStage

from fl_core.run.canaries import AuditRecorder
from fl_core.run.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from fl_core.learn.client import SampleDP, evaluate, local_train
from fl_core.learn.cohort import Backend, train_cohort
from fl_core.config import DPMode, InitMode, RunConfig, dump_config
from fl_core.learn.data import FederatedDataset
from fl_core.errors import CheckpointError, FLError
from fl_core.learn.params import load_pretrained, model_to_vector, vector_to_model
from fl_core.secure.round import RoundAborted, SecureRoundSpec, secure_mean
from fl_core.learn.strategy import make_server_optimizer

LEDGER = "privacy_ledger.jsonl"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class RunSummary:
    out_dir: Path
    rounds_run: int
    final_accuracy: float
    epsilon: float | None
    delta: float | None
    unit: str | None
    stopped_by_budget: bool
    metrics: list[dict]


def _derive(seed: int, *parts) -> bytes:
    h = hashlib.sha256(b"fl_core/v1")
    for p in (seed, *parts):
        h.update(str(p).encode() + b"|")
    return h.digest()


def _int_seed(seed: int, *parts) -> int:
    return int.from_bytes(_derive(seed, *parts)[:8], "big") >> 1


def _local_generator(cfg: RunConfig, r: int, u: int, *, dp: bool) -> torch.Generator:
    """Client u's training randomness in round r, for either backend: DP-SGD's sampling and noise
    from a seed drawn from os.urandom in production runs, otherwise (and for shuffling) from the
    run's seed."""
    if dp and cfg.secure_randomness:
        return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)
    return torch.Generator().manual_seed(_int_seed(cfg.seed, "local", r, u))


class _PrivacyPlan:
    """What the run promises and how each round is charged."""

    def __init__(self, cfg: RunConfig, data: FederatedDataset, dim: int, min_survivors: int, max_clients: int):
        self.cfg = cfg
        self.mode = cfg.dp.mode
        dp = cfg.dp
        n = data.num_clients
        self.client_rate = cfg.sampling_rate if cfg.sampling_rate is not None else None
        self.kind = AccountantKind(dp.accountant.value)
        self.ddg: DDGPlan | None = None
        self.tracker: BudgetTracker | None = None
        self.per_client: PerClientBudgets | None = None
        self.noise_multiplier: float | None = None
        budget_eps = dp.epsilon_budget if dp.epsilon_budget is not None else dp.target_epsilon
        if self.mode is DPMode.CLIENT:
            # Fixed-size cohorts are accounted without amplification (q = 1): conservative and
            # exact; Poisson sampling at rate q is amplified by q.
            q = self.client_rate if self.client_rate is not None else 1.0
            common = dict(l2_clip=dp.l2_clip, bits=dp.bits or cfg.secagg.bits, dim=dim,
                          num_clients=max_clients, min_survivors=min_survivors,
                          rounds=cfg.rounds, sampling_rate=q)
            if dp.noise_multiplier is not None:
                self.ddg = DDGConfig(noise_multiplier=dp.noise_multiplier, **common).plan()
            else:
                self.ddg = DDGConfig(epsilon=dp.target_epsilon, delta=dp.delta, **common).plan()
            ev = self.ddg.event
            self.round_event = PoissonSampledEvent(q, ev) if q < 1 else ev
            self.accounting_rate = q
            if budget_eps is not None:
                self.tracker = BudgetTracker(PrivacyBudget(budget_eps, dp.delta, unit=UnitOfPrivacy.CLIENT),
                                             accountant=self.kind)
            else:
                self.tracker = BudgetTracker(PrivacyBudget(1e9, dp.delta, unit=UnitOfPrivacy.CLIENT),
                                             accountant=self.kind)
        elif self.mode is DPMode.SAMPLE:
            sizes = data.num_examples()
            median = int(np.median(sizes))
            steps_per_visit = self._steps(median)
            q_ex = self._example_rate(median)
            rate = (cfg.sampling_rate if cfg.sampling_rate is not None
                    else cfg.clients_per_round / n)
            visits = max(1, math.ceil(cfg.rounds * rate))
            if dp.noise_multiplier is not None:
                self.noise_multiplier = dp.noise_multiplier
            else:
                self.noise_multiplier = calibrate_noise_multiplier(
                    target_epsilon=dp.target_epsilon, delta=dp.delta, sampling_rate=q_ex,
                    steps=visits * steps_per_visit, accountant=self.kind)
            self.planned_visits = visits
            eps = budget_eps if budget_eps is not None else 1e9
            self.per_client = PerClientBudgets(PrivacyBudget(eps, dp.delta, unit=UnitOfPrivacy.EXAMPLE),
                                               accountant=self.kind)

    def _steps(self, n_examples: int) -> int:
        lc = self.cfg.local
        if lc.steps is not None:
            return lc.steps
        return lc.epochs * math.ceil(n_examples / lc.batch_size)

    def _example_rate(self, n_examples: int) -> float:
        return 1.0 / math.ceil(n_examples / self.cfg.local.batch_size)

    def client_event(self, n_examples: int):
        """The DP-SGD event one visit of a client with n examples will cost (planned steps)."""
        return ComposedEvent(PoissonSampledEvent(self._example_rate(n_examples),
                                                 GaussianEvent(self.noise_multiplier)), self._steps(n_examples))

    def epsilon(self) -> float | None:
        if self.mode is DPMode.CLIENT:
            return self.tracker.epsilon_so_far
        if self.mode is DPMode.SAMPLE:  # the guarantee is the worst client's
            return max((self.per_client.epsilon_so_far(i) for i in self.per_client), default=0.0)
        return None

    def state_dict(self) -> dict:
        if self.mode is DPMode.CLIENT:
            return {"tracker": self.tracker.state_dict()}
        if self.mode is DPMode.SAMPLE:
            return {"per_client": self.per_client.state_dict()}
        return {}

    def load_state_dict(self, state: dict) -> None:
        if self.mode is DPMode.CLIENT:
            self.tracker.load_state_dict(state["tracker"])
        elif self.mode is DPMode.SAMPLE:
            self.per_client.load_state_dict(state["per_client"])


def load_run_data(cfg: RunConfig) -> FederatedDataset:
    """The exact data a run with this config trains on (its split is derived from the seed), e.g.
    to pretrain on its ``public`` part before the run."""
    return cfg.data.load(rng=np.random.default_rng(_int_seed(cfg.seed, "data")))


def _build(cfg: RunConfig, config_dir: Path | None):
    data = load_run_data(cfg)
    model = cfg.model.build(in_features=data.in_features, num_classes=data.num_classes,
                            seed=_int_seed(cfg.seed, "model"))
    if cfg.init.mode is InitMode.PRETRAINED:
        path = Path(cfg.init.checkpoint)
        if not path.is_absolute() and config_dir is not None:
            path = config_dir / path
        load_pretrained(model, path)
    return data, model


def _ledger_records(out: Path) -> list[dict]:
    """Every release the ledger recorded, in order (a partial last line never completed)."""
    path = out / LEDGER
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: its release never happened
    return records


def _truncate_jsonl(path: Path, *, keep) -> None:
    """Keep the whole, wanted lines of a JSON-lines file (a crash may leave a partial last line)."""
    if not path.exists():
        return
    lines = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep(rec):
            lines.append(line + "\n")
    path.write_text("".join(lines))


def _append_ledger(out: Path, record: dict) -> None:
    with open(out / LEDGER, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(cfg: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
        config_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
        crash_after_release: int | None = None, witness: dict | None = None) -> RunSummary:
    """Train federatedly with secure aggregation and DP; see the module docstring.

    ``crash_after_release``: test hook, raise SystemExit right after that round's release (before
    its checkpoint), to exercise the ledger. ``witness``: audit hook, filled with
    ``{round: {client: encoded words before masking}}`` (``fl_core.audit`` re-derives a run).
    """
    from fl_core.run.report import write_outputs  # matplotlib only when writing outputs

    torch.set_num_threads(1)  # tiny models: one thread is fastest and keeps runs reproducible
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, model = _build(cfg, Path(config_dir) if config_dir else None)
    recorder = AuditRecorder(cfg, out, resume=resume)  # canaries and records for `fl_core audit`
    data = recorder.augment_data(data)
    personal = tuple(cfg.personalize.personal_layers)
    params = model_to_vector(model, exclude=personal)
    dim = len(params)
    n_clients = data.num_clients
    recorder.setup_clients(dim=dim, num_clients=n_clients)
    expected = cfg.expected_clients_per_round() + recorder.expected_canaries()
    max_clients = (cfg.clients_per_round if cfg.clients_per_round is not None else n_clients) + recorder.max_canaries()
    min_survivors = max(2, math.ceil(cfg.secagg.min_survivors * expected))
    min_survivors = min(min_survivors, max_clients)
    privacy = _PrivacyPlan(cfg, data, dim, min_survivors, max_clients)
    opt = make_server_optimizer(cfg.server.optimizer, **cfg.server.hparams())
    sizes = data.num_examples()
    drop = cfg.secagg.dropout
    spec = SecureRoundSpec(
        enabled=cfg.secagg.enabled, graph=SecAggGraph(cfg.secagg.graph.value), bits=cfg.secagg.bits,
        min_survivors=min_survivors, k=cfg.secagg.k, threshold_fraction=cfg.secagg.threshold,
        corrupt=cfg.secagg.corrupt, update_clip=cfg.secagg.update_clip, max_clients=max_clients,
        example_cap=int(sizes.max()),
        dropout={ProtocolStage.KEYS: drop.keys, ProtocolStage.SHARES: drop.shares,
                 ProtocolStage.MASKED_INPUT: drop.masked_input, ProtocolStage.CONSISTENCY: drop.consistency,
                 ProtocolStage.UNMASK: drop.unmask})
    personal_params: dict[int, dict[str, torch.Tensor]] = {}
    metrics: list[dict] = []
    start = 0
    stopped_by_budget = False

    resolved = dump_config(cfg)
    if resume:
        resolved_path = out / "config.resolved.toml"
        if not resolved_path.exists():
            raise CheckpointError(f"--resume: {out} holds no run (no config.resolved.toml)")
        if resolved_path.read_text() != resolved:
            raise CheckpointError(f"--resume: the run in {out} was started with another config")
        if has_checkpoint(out / CHECKPOINT_DIR):  # else: killed before round 1's checkpoint
            state = load_checkpoint(out / CHECKPOINT_DIR)  # CheckpointError if cut short or altered
            if state["config"] != resolved:
                raise CheckpointError(f"--resume: the checkpoint in {out} was written by another config")
            start = int(state["round"])
            params = np.asarray(state["params"], dtype=np.float32)
            opt.load_state_dict(state["server_optimizer"])
            privacy.load_state_dict(state["privacy"])
            metrics = list(state["metrics"])
            stopped_by_budget = bool(state.get("stopped_by_budget", False))
            personal_params = {int(k): {n: torch.as_tensor(np.asarray(v)) for n, v in d.items()}
                               for k, d in state.get("personal_params", {}).items()}
        # files appended during the crashed round are cut back to what the checkpoint covers
        (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        _truncate_jsonl(out / "transcript.jsonl", keep=lambda rec: rec.get("round", 0) <= start)
        # every release after the checkpoint is lost to it; with fresh noise each was distinct
        for rec in (rec for rec in _ledger_records(out) if rec["round"] >= start):
            r = rec["round"]
            if rec["noise"] != "csprng":
                continue  # seeded noise: the re-run reproduces the identical release, charged once
            if privacy.tracker is not None and "event" in rec:
                privacy.tracker.spend(event_from_dict(rec["event"]))
                log(f"resume: round {r + 1} was released before the crash; its fresh-noise release is "
                    f"charged (epsilon now {privacy.tracker.epsilon_so_far:.3f})")
            if privacy.per_client is not None:
                for u, ev in rec.get("client_events", {}).items():
                    privacy.per_client.spend(int(u), event_from_dict(ev))
                log(f"resume: round {r + 1}'s DP-SGD steps of {len(rec.get('client_events', {}))} clients "
                    f"were released before the crash and are charged")
    else:
        for name in (LEDGER, "metrics.jsonl", "transcript.jsonl"):
            (out / name).unlink(missing_ok=True)
    vector_to_model(params, model, exclude=personal)
    tmp = out / "config.resolved.toml.tmp"
    tmp.write_text(resolved)
    os.replace(tmp, out / "config.resolved.toml")  # atomic: a kill never leaves half a config
    recorder.start(params, start)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.rounds, initial=start, desc="rounds", unit="round", leave=False,
                   disable=None)  # None: only on a terminal
        say = bar.write
    else:
        say = log
    lc = cfg.local
    noise_label = "csprng" if cfg.secure_randomness else "seeded"

    def checkpoint() -> None:
        """Everything a resume needs, written atomically; covers the rounds in ``metrics``."""
        save_checkpoint(out / CHECKPOINT_DIR, {
            "round": len(metrics), "params": params, "server_optimizer": opt.state_dict(),
            "privacy": privacy.state_dict(), "metrics": metrics, "config": resolved,
            "stopped_by_budget": stopped_by_budget,
            "personal_params": {str(k): {n: v.numpy() for n, v in d.items()} for k, d in personal_params.items()},
        })
    for r in range(start, cfg.rounds):
        if stopped_by_budget:
            break
        t_round = time.perf_counter()
        rng = np.random.default_rng(_int_seed(cfg.seed, "round", r))
        round_seed = _derive(cfg.seed, "public-round-seed", r)
        if cfg.clients_per_round is not None:
            sampled = sorted(rng.choice(n_clients, size=cfg.clients_per_round, replace=False).tolist())
        else:
            sampled = sorted(np.flatnonzero(rng.random(n_clients) < cfg.sampling_rate).tolist())
        # --- privacy check before anything runs
        if privacy.mode is DPMode.CLIENT:
            try:
                privacy.tracker.check(privacy.round_event)
            except BudgetExceededError as e:
                say(f"stopping before round {r + 1}: {e}")
                stopped_by_budget = True
                break
        refused = []
        if privacy.mode is DPMode.SAMPLE:
            keep = []
            for u in sampled:
                try:
                    privacy.per_client.check(u, privacy.client_event(int(sizes[u])))
                    keep.append(u)
                except BudgetExceededError:
                    refused.append(u)
            sampled = keep
        # --- local training
        t_train = time.perf_counter()
        updates, examples, losses, events = {}, {}, {}, {}
        dp = None
        if privacy.mode is DPMode.SAMPLE:
            dp = SampleDP(max_grad_norm=cfg.dp.l2_clip, noise_multiplier=privacy.noise_multiplier,
                          grad_sample_mode=cfg.dp.grad_sample_mode.value, accountant=cfg.dp.accountant.value,
                          delta=None)  # no per-visit Opacus epsilon: 1 s each; the run accounts
        gens = {u: _local_generator(cfg, r, u, dp=dp is not None) for u in sampled}
        backend = lc.backend
        if backend is Backend.COHORT and sampled:  # vectorized only where measured faster here
            from fl_core.learn.probe import pick_backend
            backend = pick_backend(model, data.client(sampled[0]).train, clients=len(sampled), dp=dp,
                                   batch_size=lc.batch_size, optimizer=lc.optimizer, lr=lc.lr,
                                   momentum=lc.momentum).backend
        if backend is Backend.COHORT and sampled:  # all sampled clients at once, same semantics
            cohort = train_cohort(model, [data.client(u).train for u in sampled], epochs=lc.epochs, steps=lc.steps,
                                  optimizer=lc.optimizer, lr=lc.lr, momentum=lc.momentum, batch_size=lc.batch_size,
                                  prox_mu=lc.prox_mu, exclude=personal, generators=[gens[u] for u in sampled], dp=dp,
                                  start=[personal_params.get(u) for u in sampled])
            for u, res, own in zip(sampled, cohort.results, cohort.personal):
                updates[u], examples[u], losses[u], events[u] = res.update, res.num_examples, res.loss, res.event
                if personal:
                    personal_params[u] = own
        for u in sampled if backend is Backend.OPACUS else ():  # the reference: one client after the other
            local = copy.deepcopy(model)
            if personal and u in personal_params:
                own = dict(local.named_parameters())
                with torch.no_grad():
                    for name, value in personal_params[u].items():
                        own[name].copy_(value)
            res = local_train(local, data.client(u).train, epochs=lc.epochs, steps=lc.steps,
                              optimizer=lc.optimizer, lr=lc.lr, momentum=lc.momentum, batch_size=lc.batch_size,
                              prox_mu=lc.prox_mu, exclude=personal, generator=gens[u], dp=dp)
            updates[u], examples[u], losses[u], events[u] = res.update, res.num_examples, res.loss, res.event
            if personal:
                personal_params[u] = {n: p.detach().clone() for n, p in local.named_parameters()
                                      if any(n == q or n.startswith(q + ".") for q in personal)}
        training_seconds = time.perf_counter() - t_train
        # --- the release: ledger first, then the secure round
        record = {"round": r, "noise": noise_label, "sampled": len(sampled)}
        if privacy.mode is DPMode.CLIENT:
            record["event"] = privacy.round_event.to_dict()
        if privacy.mode is DPMode.SAMPLE:
            record["client_events"] = {str(u): events[u].to_dict() for u in sampled if events[u] is not None}
        _append_ledger(out, record)
        for u, upd in recorder.canary_updates(r).items():  # audit canaries: clients like any other
            updates[u], examples[u] = upd, 1
        aborted, t_secure = None, time.perf_counter()
        try:
            if len(sampled) < 2:
                raise RoundAborted(f"{len(sampled)} clients sampled")
            outcome = secure_mean(updates, examples, spec=spec, ddg=privacy.ddg, round_seed=round_seed,
                                  rng=rng, secure_randomness=cfg.secure_randomness, transcript=recorder.transcript(r),
                                  on_inputs=None if witness is None else (lambda w, r=r: witness.__setitem__(r, dict(w))))
        except RoundAborted as e:
            outcome, aborted = None, str(e)
        secure_seconds = time.perf_counter() - t_secure
        if privacy.mode is DPMode.CLIENT:
            privacy.tracker.spend(privacy.round_event)  # charged whether or not the round aborted
        if privacy.mode is DPMode.SAMPLE:
            for u in sampled:  # local DP-SGD ran: each client that trained pays its steps
                if events[u] is not None:
                    privacy.per_client.spend(u, events[u])
        if crash_after_release is not None and r == crash_after_release:
            raise SystemExit(f"test crash after the release of round {r + 1}")
        if outcome is not None:
            params = opt.step(params, outcome.mean_update)
            vector_to_model(params, model, exclude=personal)
            with open(out / "transcript.jsonl", "a") as f:
                f.write(json.dumps({"round": r + 1, "messages": outcome.digests}) + "\n")
        recorder.end_round(r, params, outcome)
        test_loss, acc = evaluate(model, data.test)
        eps = privacy.epsilon()
        survivors = len(outcome.survivors) if outcome else 0
        m = {"round": r + 1, "sampled": len(sampled), "survivors": survivors,
             "loss": float(np.mean([losses[u] for u in sampled])) if sampled else float("nan"),
             "test_loss": test_loss, "accuracy": acc, "epsilon": eps,
             "delta": cfg.dp.delta if eps is not None else None, "refused_by_budget": len(refused),
             "aborted": aborted, "seconds": time.perf_counter() - t_round,
             "training_seconds": training_seconds, "secure_aggregation_seconds": secure_seconds,
             "backend": backend.value}
        if outcome is not None:
            m.update({"k": outcome.k, "threshold": outcome.threshold,
                      "upload_bytes_per_client": outcome.upload_bytes_per_client,
                      "secagg_seconds": outcome.seconds})
        if recorder.client is not None:
            m["canaries"] = len(recorder.schedule.get(str(r), []))
        pz = cfg.personalize
        if pz.steps > 0 and pz.every > 0 and (r + 1) % pz.every == 0 and r + 1 < cfg.rounds:
            from fl_core.learn.personalize import personalize  # a progress view: fine-tuned copies are discarded
            rep = personalize(model, data.clients, steps=pz.steps, lr=pz.lr or lc.lr, batch_size=lc.batch_size,
                              personal_layers=personal, personal_params=personal_params,
                              generator=torch.Generator().manual_seed(_int_seed(cfg.seed, "personalize", r))).report
            m["personalization"] = {k: v for k, v in rep.as_dict().items() if not k.endswith("_acc")}
        metrics.append(m)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        eps_txt = "off" if eps is None else f"{eps:.3f}"
        say(f"round {r + 1:>3}/{cfg.rounds}  sampled {len(sampled):>3}  survivors {survivors:>3}  "
            f"train loss {m['loss']:.4f}  test acc {acc:.4f}  epsilon {eps_txt}"
            + (f"  ABORTED: {aborted}" if aborted else ""))
        checkpoint()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if stopped_by_budget:
        checkpoint()
    personalization = None
    if cfg.personalize.steps > 0:
        from fl_core.learn.personalize import personalize
        res = personalize(model, data.clients, steps=cfg.personalize.steps,
                          lr=cfg.personalize.lr or cfg.local.lr, batch_size=cfg.local.batch_size,
                          personal_layers=personal, personal_params=personal_params,
                          generator=torch.Generator().manual_seed(_int_seed(cfg.seed, "personalize")))
        personalization = res.report
    summary = write_outputs(cfg, out, model=model, data=data, metrics=metrics, privacy=privacy,
                            personalization=personalization, stopped_by_budget=stopped_by_budget, log=log)
    return summary
