"""The federated training loop: sample, train locally, aggregate securely, update, account, record.

``run(config, out_dir)`` trains ``rounds`` rounds (or until the next round would exceed the ε
budget), checkpointing after every round, and leaves in ``out_dir`` the files named in
``fl_core.run.rundir``: ``metrics.jsonl``, ``config.resolved.toml``, ``privacy.json``, ``plots.png``,
``model.pt``, ``summary.json`` and the server's message digests ``transcript.jsonl``.
``run(config, out_dir, resume=True)`` continues from the last checkpoint and ends with the same
result as an uninterrupted run when ``secure_randomness = false`` (every random choice of round r is
derived from (seed, r)).

Privacy ledger. Before a round's aggregate is released, its privacy event is appended (and
fsynced) to ``privacy_ledger.jsonl``. If the process dies after a release but before the round's
checkpoint, the resumed run counts that release: with fresh (CSPRNG) noise the re-run round is a
second release and is charged again; with seeded noise the re-run reproduces the identical
release, so it is charged once.

How each DP mode checks and charges a round is the privacy plan's (``fl_core.run.privacy``); this
module only calls it in order.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from secagg.config import GraphKind as SecAggGraph
from secagg.simulate import ProtocolStage

from fl_core.config import DPMode, RunConfig, dump_config
from fl_core.errors import CheckpointError
from fl_core.learn.client import SampleDP, evaluate, local_train
from fl_core.learn.cohort import Backend, train_cohort
from fl_core.learn.params import model_to_vector, vector_to_model
from fl_core.learn.strategy import make_server_optimizer
from fl_core.run import rundir
from fl_core.run.canaries import AuditRecorder
from fl_core.run.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from fl_core.run.guardrails import check_run
from fl_core.run.observer import RunObserver
from fl_core.run.privacy import PrivacyPlan, poisson_cohort_cap, privacy_plan
from fl_core.run.report import RunSummary, write_outputs
from fl_core.run.setup import (as_run_config, build_data_and_model, derive_seed, fit_to_data, int_seed,
                              load_run_data)
from fl_core.secure.round import RoundAborted, SecureRoundSpec, secure_mean

__all__ = ["run", "RunSummary", "RunObserver", "load_run_data", "build_data_and_model", "LEDGER", "CHECKPOINT_DIR"]

LEDGER = rundir.LEDGER  # kept: tests and scripts import these names from here
CHECKPOINT_DIR = rundir.CHECKPOINT_DIR


def _local_generator(cfg: RunConfig, r: int, u: int, *, dp: bool) -> torch.Generator:
    """Client u's training randomness in round r, for either backend: DP-SGD's sampling and noise
    from a seed drawn from os.urandom in production runs, otherwise (and for shuffling) from the
    run's seed."""
    if dp and cfg.secure_randomness:
        return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)
    return torch.Generator().manual_seed(int_seed(cfg.seed, "local", r, u))


def _round_spec(cfg: RunConfig, *, min_survivors: int, max_clients: int, example_cap: int) -> SecureRoundSpec:
    drop, sa = cfg.secagg.dropout, cfg.secagg
    return SecureRoundSpec(
        enabled=sa.enabled, graph=SecAggGraph(sa.graph.value), bits=sa.bits, min_survivors=min_survivors, k=sa.k,
        threshold_fraction=sa.threshold, corrupt=sa.corrupt, update_clip=sa.update_clip, max_clients=max_clients,
        example_cap=example_cap,
        dropout={ProtocolStage.KEYS: drop.keys, ProtocolStage.SHARES: drop.shares,
                 ProtocolStage.MASKED_INPUT: drop.masked_input, ProtocolStage.CONSISTENCY: drop.consistency,
                 ProtocolStage.UNMASK: drop.unmask})


class _Trainer:
    """One run's state and its steps; ``run`` below is the order they happen in."""

    def __init__(self, cfg: RunConfig, out: Path, *, data, model, resume: bool, log, observer: RunObserver):
        self.cfg, self.out, self.log, self.observer = cfg, out, log, observer
        self.say = log
        self.recorder = AuditRecorder(cfg, out, resume=resume)  # canaries and records for `fl_core audit`
        self.data = self.recorder.augment_data(data)
        self.model = model
        self.personal = tuple(cfg.personalize.personal_layers)
        self.params = model_to_vector(model, exclude=self.personal)
        n_clients = self.data.num_clients
        self.recorder.setup_clients(dim=len(self.params), num_clients=n_clients)
        expected = cfg.expected_clients_per_round() + self.recorder.expected_canaries()
        max_clients = ((cfg.clients_per_round if cfg.clients_per_round is not None else n_clients)
                       + self.recorder.max_canaries())
        min_survivors = min(max(2, math.ceil(cfg.secagg.min_survivors * expected)), max_clients)
        self.sizes = self.data.num_examples()
        cap = None if cfg.sampling_rate is None else (
            poisson_cohort_cap(n_clients, cfg.sampling_rate) + self.recorder.max_canaries())
        self.privacy: PrivacyPlan = privacy_plan(cfg, sizes=self.sizes, dim=len(self.params),
                                                 min_survivors=min_survivors, max_clients=max_clients,
                                                 cohort_cap=cap)
        self.guard_rails = check_run(cfg, self.privacy, dim=len(self.params), min_survivors=min_survivors,
                                     clients=max_clients, population=n_clients,
                                     median_examples=int(np.median(self.sizes)))
        self.opt = make_server_optimizer(cfg.server.optimizer, **cfg.server.hparams())
        self.spec = _round_spec(cfg, min_survivors=min_survivors, max_clients=max_clients,
                                example_cap=int(self.sizes.max()))
        self.personal_params: dict[int, dict[str, torch.Tensor]] = {}
        self.metrics: list[dict] = []
        self.round_privacy: dict = {}  # the privacy plan's metrics of the round just released
        self.start = 0
        self.stopped_by_budget = False
        self.resolved = dump_config(cfg)

    # --------------------------------------------------------------- start and resume

    def begin(self, resume: bool) -> None:
        """Restore the checkpoint (``resume``) or clear the files of an earlier run, then record the config."""
        out = self.out
        for rail in self.guard_rails:  # before anything runs: will it learn, will its rounds go through
            self.log(rail.message)
        if resume:
            self._resume()
        vector_to_model(self.params, self.model, exclude=self.personal)
        rundir.write_atomic(out / rundir.CONFIG, self.resolved)
        self.recorder.start(self.params, self.start)
        if not has_checkpoint(out / rundir.CHECKPOINT_DIR):
            self.checkpoint()  # before the first release: a missing checkpoint later means a lost one

    def _resume(self) -> None:
        out = self.out
        resolved_path = out / rundir.CONFIG
        if not resolved_path.exists():
            raise CheckpointError(f"--resume: {out} holds no run (no {rundir.CONFIG})")
        if resolved_path.read_text() != self.resolved:
            raise CheckpointError(f"--resume: {resolved_path} differs from the config given: a resumed run keeps its "
                                  f"own config (`fl-core run --resume {out}` reads that file); to train with another "
                                  "config start a new run with --out NEW_DIR")
        if has_checkpoint(out / rundir.CHECKPOINT_DIR):  # else: killed before the first release (check_resumable)
            state = load_checkpoint(out / rundir.CHECKPOINT_DIR)  # CheckpointError if cut short or altered
            if state["config"] != self.resolved:
                raise CheckpointError(f"--resume: {out / rundir.CHECKPOINT_DIR / rundir.CHECKPOINT_FILE} was written by "
                                      f"another config than {resolved_path}: the directory mixes two runs. Restore the "
                                      "matching checkpoint, or start a new run with --out NEW_DIR")
            self.start = int(state["round"])
            self.params = np.asarray(state["params"], dtype=np.float32)
            self.opt.load_state_dict(state["server_optimizer"])
            self.privacy.load_state_dict(state["privacy"])
            self.metrics = list(state["metrics"])
            self.stopped_by_budget = bool(state.get("stopped_by_budget", False))
            self.personal_params = {int(k): {n: torch.as_tensor(np.asarray(v)) for n, v in d.items()}
                                    for k, d in state.get("personal_params", {}).items()}
        # files appended during the crashed round are cut back to what the checkpoint covers
        rundir.write_jsonl(out / rundir.METRICS, self.metrics)
        rundir.filter_jsonl(out / rundir.TRANSCRIPT, lambda rec: rec.get("round", 0) <= self.start)
        # every release after the checkpoint is lost to it; with fresh noise each was distinct
        for rec in rundir.read_jsonl(out / rundir.LEDGER):
            if rec["round"] >= self.start and rec["noise"] == "csprng":
                self.privacy.recharge(rec, self.log)  # seeded noise: the re-run reproduces it, charged once

    def checkpoint(self) -> None:
        """Everything a resume needs, written atomically; covers the rounds in ``metrics``."""
        save_checkpoint(self.out / rundir.CHECKPOINT_DIR, {
            "round": len(self.metrics), "params": self.params, "server_optimizer": self.opt.state_dict(),
            "privacy": self.privacy.state_dict(), "metrics": self.metrics, "config": self.resolved,
            "stopped_by_budget": self.stopped_by_budget,
            "personal_params": {str(k): {n: v.numpy() for n, v in d.items()}
                                for k, d in self.personal_params.items()},
        })

    # --------------------------------------------------------------- one round

    def sample(self, rng: np.random.Generator) -> list[int]:
        cfg, n = self.cfg, self.data.num_clients
        if cfg.clients_per_round is not None:
            return sorted(rng.choice(n, size=cfg.clients_per_round, replace=False).tolist())
        return sorted(np.flatnonzero(rng.random(n) < cfg.sampling_rate).tolist())

    def train_clients(self, r: int, sampled: list[int]) -> tuple[dict, dict, dict, dict]:
        """Local training of the sampled clients: (updates, example counts, losses, privacy events)."""
        cfg, lc, personal = self.cfg, self.cfg.local, self.personal
        dp = None
        if self.privacy.noise_multiplier is not None:
            dp = SampleDP(max_grad_norm=cfg.dp.l2_clip, noise_multiplier=self.privacy.noise_multiplier,
                          grad_sample_mode=cfg.dp.grad_sample_mode.value, accountant=cfg.dp.accountant.value,
                          delta=None,  # no per-visit Opacus epsilon: 1 s each; the run accounts
                          secure_noise=cfg.secure_randomness)  # noise keystream keyed from os.urandom
        gens = {u: _local_generator(cfg, r, u, dp=dp is not None) for u in sampled}
        results = {}
        backend = self.backend = lc.backend
        if backend is Backend.COHORT and sampled:  # vectorized only where measured faster here
            from fl_core.learn.probe import pick_backend
            backend = self.backend = pick_backend(
                self.model, self.data.client(sampled[0]).train, clients=len(sampled), dp=dp,
                batch_size=lc.batch_size, optimizer=lc.optimizer, lr=lc.lr, momentum=lc.momentum).backend
        if backend is Backend.COHORT and sampled:  # all sampled clients at once, same semantics
            cohort = train_cohort(self.model, [self.data.client(u).train for u in sampled], epochs=lc.epochs,
                                  steps=lc.steps, optimizer=lc.optimizer, lr=lc.lr, momentum=lc.momentum,
                                  batch_size=lc.batch_size, prox_mu=lc.prox_mu, exclude=personal,
                                  generators=[gens[u] for u in sampled], dp=dp,
                                  start=[self.personal_params.get(u) for u in sampled])
            for u, res, own in zip(sampled, cohort.results, cohort.personal):
                results[u] = res
                if personal:
                    self.personal_params[u] = own
        for u in sampled if backend is Backend.OPACUS else ():  # the reference: one client after the other
            local = copy.deepcopy(self.model)
            if personal and u in self.personal_params:
                own = dict(local.named_parameters())
                with torch.no_grad():
                    for name, value in self.personal_params[u].items():
                        own[name].copy_(value)
            results[u] = local_train(local, self.data.client(u).train, epochs=lc.epochs, steps=lc.steps,
                                     optimizer=lc.optimizer, lr=lc.lr, momentum=lc.momentum,
                                     batch_size=lc.batch_size, prox_mu=lc.prox_mu, exclude=personal,
                                     generator=gens[u], dp=dp)
            if personal:
                self.personal_params[u] = {n: p.detach().clone() for n, p in local.named_parameters()
                                           if any(n == q or n.startswith(q + ".") for q in personal)}
        return ({u: res.update for u, res in results.items()}, {u: res.num_examples for u, res in results.items()},
                {u: res.loss for u, res in results.items()}, {u: res.event for u, res in results.items()})

    def release(self, r: int, rng: np.random.Generator, sampled: list[int], updates: dict, examples: dict,
                events: Mapping) -> tuple[object | None, str | None]:
        """Ledger first, then the secure round, then the charge: (outcome or None, why it aborted)."""
        cfg = self.cfg
        record = {"round": r, "noise": "csprng" if cfg.secure_randomness else "seeded", "sampled": len(sampled),
                  **self.privacy.ledger_fields(sampled, events)}
        rundir.append_jsonl(self.out / rundir.LEDGER, record, sync=True)
        for u, upd in self.recorder.canary_updates(r).items():  # audit canaries: clients like any other
            updates[u], examples[u] = upd, 1
        outcome, aborted = None, None
        try:
            if len(sampled) < 2:
                raise RoundAborted(f"{len(sampled)} clients sampled")
            cap = self.privacy.cohort_cap
            if cap is not None and len(updates) > cap:  # more colluders than the noise is calibrated for
                raise RoundAborted(f"{len(updates)} clients in the round, more than the {cap} the noise "
                                   "calibration tolerates colluders for")
            outcome = secure_mean(self.privacy.encode_updates(updates), examples, spec=self.spec,
                                  ddg=self.privacy.ddg, round_seed=derive_seed(cfg.seed, "public-round-seed", r),
                                  rng=rng, secure_randomness=cfg.secure_randomness,
                                  transcript=self.recorder.transcript(r), excess_noise=self.privacy.excess_noise,
                                  on_inputs=lambda words: self.observer.on_inputs(r, words),
                                  weighted=cfg.dp.mode is DPMode.NONE)  # under DP no count leaves a client
        except RoundAborted as e:
            aborted = str(e)
        self.round_privacy = {} if outcome is None else self.privacy.released(outcome)
        self.privacy.charge(sampled, events)  # charged whether or not the round aborted
        self.observer.after_release(r)
        return outcome, aborted

    def round(self, r: int) -> None:
        cfg = self.cfg
        t_round = time.perf_counter()
        rng = np.random.default_rng(int_seed(cfg.seed, "round", r))
        sampled = self.sample(rng)
        reason = self.privacy.stop_reason()  # the privacy check before anything runs
        if reason is not None:
            self.say(f"stopping before round {r + 1}: {reason}")
            self.stopped_by_budget = True
            return
        sampled, refused = self.privacy.admit(sampled, self.sizes)
        t0 = time.perf_counter()
        updates, examples, losses, events = self.train_clients(r, sampled)
        t1 = time.perf_counter()
        outcome, aborted = self.release(r, rng, sampled, updates, examples, events)
        t2 = time.perf_counter()
        if outcome is not None:
            self.params = self.opt.step(self.params, outcome.mean_update)
            vector_to_model(self.params, self.model, exclude=self.personal)
            rundir.append_jsonl(self.out / rundir.TRANSCRIPT, {"round": r + 1, "messages": outcome.digests})
        self.recorder.end_round(r, self.params, outcome)
        m = self.round_metrics(r, sampled, refused, losses, outcome, aborted)
        m["seconds"] = time.perf_counter() - t_round
        m.update(training_seconds=t1 - t0, secure_aggregation_seconds=t2 - t1, backend=self.backend.value)
        self.metrics.append(m)
        rundir.append_jsonl(self.out / rundir.METRICS, m)
        eps = m["epsilon"]
        self.say(f"round {r + 1:>3}/{cfg.rounds}  sampled {len(sampled):>3}  survivors {m['survivors']:>3}  "
                 f"train loss {m['loss']:.4f}  test acc {m['accuracy']:.4f}  "
                 f"epsilon {'off' if eps is None else f'{eps:.3f}'}"
                 + (f"  sat out (over budget) {len(refused)}" if refused else "")
                 + (f"  ABORTED: {aborted}" if aborted else ""))
        self.checkpoint()

    def round_metrics(self, r: int, sampled, refused, losses, outcome, aborted) -> dict:
        """The line of ``metrics.jsonl`` for round r (without its duration)."""
        cfg = self.cfg
        test_loss, acc = evaluate(self.model, self.data.test)
        eps = self.privacy.epsilon()
        m = {"round": r + 1, "sampled": len(sampled), "survivors": len(outcome.survivors) if outcome else 0,
             "loss": float(np.mean([losses[u] for u in sampled])) if sampled else float("nan"),
             "test_loss": test_loss, "accuracy": acc, "epsilon": eps,
             "delta": cfg.dp.delta if eps is not None else None, "refused_by_budget": len(refused),
             "aborted": aborted, "seconds": None, **self.round_privacy}
        if outcome is not None:
            m.update({"k": outcome.k, "threshold": outcome.threshold,
                      "upload_bytes_per_client": outcome.upload_bytes_per_client,
                      "secagg_seconds": outcome.seconds})
        if self.recorder.client is not None:
            m["canaries"] = len(self.recorder.schedule.get(str(r), []))
        pz = cfg.personalize
        if pz.steps > 0 and pz.every > 0 and (r + 1) % pz.every == 0 and r + 1 < cfg.rounds:
            rep = self.personalize(int_seed(cfg.seed, "personalize", r))  # a progress view: copies are discarded
            m["personalization"] = {k: v for k, v in rep.as_dict().items() if not k.endswith("_acc")}
        return m

    def personalize(self, seed: int):
        from fl_core.learn.personalize import personalize

        pz, lc = self.cfg.personalize, self.cfg.local
        return personalize(self.model, self.data.clients, steps=pz.steps, lr=pz.lr or lc.lr,
                           batch_size=lc.batch_size, personal_layers=self.personal,
                           personal_params=self.personal_params,
                           generator=torch.Generator().manual_seed(seed)).report

    def finish(self) -> RunSummary:
        cfg = self.cfg
        if self.stopped_by_budget:
            self.checkpoint()
        report = self.personalize(int_seed(cfg.seed, "personalize")) if cfg.personalize.steps > 0 else None
        return write_outputs(cfg, self.out, model=self.model, data=self.data, metrics=self.metrics,
                             privacy=self.privacy, personalization=report,
                             stopped_by_budget=self.stopped_by_budget, log=self.log,
                             guard_rails=[rail.as_dict() for rail in self.guard_rails])


def run(config, out_dir: str | os.PathLike, *, model=None, data=None, resume: bool = False,
        progress: bool = True, config_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
        observer: RunObserver | None = None) -> RunSummary:
    """Train federatedly with secure aggregation and DP; see the module docstring.

    ``config``: a ``RunConfig``, the path of a TOML file, or a TOML-shaped dict. ``model``: an
    ``nn.Module`` class or zero-argument factory replacing ``[model]`` (called under the run's
    seed); ``data``: a ``FederatedDataset`` replacing ``[data]``. ``config_dir``: where a relative
    ``init.checkpoint`` is found (default: the config file's folder). ``observer``: hooks for tools
    and tests (``RunObserver``).
    """
    cfg, config_dir = as_run_config(config, config_dir)
    torch.set_num_threads(1)  # tiny models: one thread is fastest and keeps runs reproducible
    data, model = build_data_and_model(cfg, config_dir, model=model, data=data)
    cfg = fit_to_data(cfg, data)  # given or loaded data: its own client count
    out = Path(out_dir)
    if resume:
        rundir.check_resumable(out)  # before anything is touched: a lost checkpoint after releases is refused
    elif rundir.holds_run(out):
        rundir.clear_for_new_run(out)  # a new run here: the old ledger moves to previous_ledgers/, never deleted
    out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(cfg, out, data=data, model=model, resume=resume, log=log, observer=observer or RunObserver())
    trainer.begin(resume)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.rounds, initial=trainer.start, desc="rounds", unit="round", leave=False,
                   disable=None)  # None: only on a terminal
        trainer.say = bar.write
    try:
        for r in range(trainer.start, cfg.rounds):
            if trainer.stopped_by_budget:
                break
            trainer.round(r)
            if bar is not None and not trainer.stopped_by_budget:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return trainer.finish()
