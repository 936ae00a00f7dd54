"""The privacy plan of a run: one class per DP mode, each owning its check, charge, ledger record,
epsilon, ``privacy.json`` entry and checkpoint state, so that the run loop never asks which mode
it is in.

- ``NoPrivacy`` (``dp.mode = "none"``): secure aggregation only; nothing is checked or charged.
- ``ClientLevelDP`` (``"client"``): each update clipped, distributed discrete Gaussian noise added
  inside secure aggregation (``dp.distributed``); one event per round, unit of privacy one client.
- ``SampleLevelDP`` (``"sample"``): DP-SGD on each client; one event per client visit, unit of
  privacy one example, the guarantee the worst client's.

Every plan charges a round whose release happened, whether or not it aborted afterwards, and
``recharge`` re-charges a release the ledger recorded after the last checkpoint (fresh-noise
releases only; see ``fl_core.run.loop``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from dp import adaptive_clip, xnoise
from dp.accounting import Accountant, AccountantKind
from dp.budget import BudgetTracker, PerClientBudgets, PrivacyBudget
from dp.calibration import calibrate_noise_multiplier, dp_sgd_sampling_rate
from dp.distributed import DDGConfig, DDGPlan
from dp.errors import BudgetExceededError
from dp.events import (Adjacency, ComposedEvent, GaussianEvent, PoissonSampledEvent, UnitOfPrivacy,
                       event_from_dict)

from fl_core.config import DPMode, RunConfig

__all__ = ["PrivacyPlan", "NoPrivacy", "ClientLevelDP", "SampleLevelDP", "privacy_plan", "epsilons",
           "reported_epsilon", "poisson_cohort_cap"]

#: The budget of a plan without ``dp.epsilon_budget`` or ``dp.target_epsilon``: account, never stop.
UNBOUNDED = 1e9


_KINDS = ("rdp", "prv", "pld")


def epsilons(history: Sequence, delta: float, unit: UnitOfPrivacy, adjacency: Adjacency | None = None) -> dict:
    """epsilon at delta under every accountant (RDP, PRV, PLD) for one composed history, the
    tightest, and the accountant that produced each (a PRV or PLD that falls back says so)."""
    out: dict = {}
    for kind in (AccountantKind.RDP, AccountantKind.PRV, AccountantKind.PLD):
        if not history:
            out[kind.value] = 0.0
            continue
        acc = Accountant(kind, unit=unit, adjacency=adjacency)
        for event in history:
            acc.compose(event)
        res = acc.get_privacy_spent(delta)
        out[kind.value] = res.epsilon
        if res.note:
            out[f"{kind.value}_note"] = res.note
    out["tightest"] = min(v for k, v in out.items() if k in _KINDS)
    return out


def _replace_one(history: Sequence, delta: float, unit: UnitOfPrivacy) -> float:
    """epsilon at delta under replace-one (sensitivity doubled), the tighter of RDP and PLD."""
    if not history:
        return 0.0
    return epsilons(history, delta, unit, Adjacency.REPLACE_ONE)["tightest"]


def reported_epsilon(tracker: BudgetTracker, tightest: float) -> dict:
    """The one ε of a run, as every round's line, metrics.jsonl, privacy.json, summary.json and the
    report give it: what the budget's accountant says (the number the budget stops at), with the
    accountant that produced it and, when it fell back (PRV/PLD -> RDP), the one requested and why.
    The other accountants' values stay in the mechanism's entry for comparison."""
    if not tracker.accountant.history:
        return {"epsilon": 0.0, "epsilon_accountant": tracker.accountant.kind.value}
    res = tracker.privacy_spent()
    out = {"epsilon": res.epsilon, "epsilon_accountant": res.accountant.value,
           "epsilon_tightest_of_rdp_and_prv": tightest}
    if res.accountant is not res.requested:
        out["epsilon_accountant_requested"] = res.requested.value
    if res.note:
        out["epsilon_note"] = res.note
    if res.adjacency is not None:  # the neighbouring relation this epsilon is proved for
        out["adjacency"], out["adjacency_means"] = res.adjacency.value, res.adjacency.words
    return out


class PrivacyPlan:
    """What the run promises and how each round is charged (the interface; ``NoPrivacy`` is it bare)."""

    mode: DPMode = DPMode.NONE
    #: The distributed discrete Gaussian plan secure aggregation adds noise with (client level only).
    ddg: DDGPlan | None = None
    #: The most clients a round may hold; a larger (Poisson-sampled) round aborts unreleased.
    cohort_cap: int | None = None

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def stop_reason(self) -> str | None:
        """Why the next round may not run (its release would exceed the budget), or None."""
        return None

    def admit(self, sampled: list[int], sizes: np.ndarray) -> tuple[list[int], list[int]]:
        """The sampled clients that may train this round, and those refused by their budget."""
        return sampled, []

    @property
    def noise_multiplier(self) -> float | None:
        """DP-SGD's noise multiplier (sample level only): local training runs DP-SGD when set."""
        return None

    #: Whether secure aggregation reveals and subtracts the excess noise shares (client level only).
    excess_noise: bool = False

    def encode_updates(self, updates: dict) -> dict:
        """What each client feeds into secure aggregation (adaptive clipping appends its bit)."""
        return updates

    def released(self, outcome) -> dict:
        """Called with the round's outcome before ``charge``: post-process it in place, return metrics."""
        return {}

    def ledger_fields(self, sampled: Sequence[int], events: Mapping[int, object]) -> dict:
        """What the ledger must hold to re-charge this round's release after a crash."""
        return {}

    def charge(self, sampled: Sequence[int], events: Mapping[int, object]) -> None:
        """Charge the round just released."""

    def recharge(self, record: Mapping, log: Callable[[str], None]) -> None:
        """Charge a release that the ledger recorded after the last checkpoint."""

    def epsilon(self) -> float | None:
        """epsilon spent so far under the run's accountant (None without DP)."""
        return None

    def describe(self, metrics: list[dict]) -> dict:
        """This plan's entries of ``privacy.json`` (merged into the common record)."""
        return {"guarantee": "none: no differential privacy in this run (secure aggregation only)"}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


class NoPrivacy(PrivacyPlan):
    """``dp.mode = "none"``."""


class ClientLevelDP(PrivacyPlan):
    """Client-level DP: clipped updates, distributed discrete Gaussian noise inside secure aggregation.

    Fixed-size cohorts are accounted without amplification (q = 1); Poisson sampling at rate q is
    amplified by q.
    """

    mode = DPMode.CLIENT

    def __init__(self, cfg: RunConfig, *, dim: int, min_survivors: int, max_clients: int,
                 cohort_cap: int | None = None):
        super().__init__(cfg)
        dp = cfg.dp
        self.kind = AccountantKind(dp.accountant.value)
        self.adjacency = dp.adjacency or Adjacency.ZERO_OUT
        # A server colluding with secagg's tolerated corrupt fraction of a round's clients knows
        # their noise shares: the noise is calibrated for the honest survivors alone. A round
        # holds at most cohort_cap clients (Poisson sampling: a larger round aborts unreleased).
        self.cohort_cap = max_clients if cohort_cap is None else min(cohort_cap, max_clients)
        self.colluders = math.ceil(cfg.secagg.corrupt * self.cohort_cap)
        q = cfg.sampling_rate if cfg.sampling_rate is not None else 1.0
        common = dict(l2_clip=dp.l2_clip, bits=dp.bits or cfg.secagg.bits, dim=dim, num_clients=max_clients,
                      min_survivors=min_survivors, rounds=cfg.rounds, sampling_rate=q,
                      colluders=self.colluders, adjacency=self.adjacency)
        if dp.noise_multiplier is not None:
            base = DDGConfig(noise_multiplier=dp.noise_multiplier, **common)
        else:
            base = DDGConfig(epsilon=dp.target_epsilon, delta=dp.delta, **common)
        self.clip: adaptive_clip.ClipTracker | None = None
        self.clip_beta: float | None = None
        if dp.adaptive_clip.enabled:
            self._plan_adaptive_clip(base)
        else:
            self.ddg = base.plan()
        self.excess_noise = bool(dp.excess_noise)
        self._charge_next = None  # the event of the noise left in this round's release
        self.round_event = PoissonSampledEvent(q, self.ddg.event) if q < 1 else self.ddg.event
        self.accounting_rate = q
        budget = dp.epsilon_budget if dp.epsilon_budget is not None else dp.target_epsilon
        self.tracker = BudgetTracker(PrivacyBudget(budget if budget is not None else UNBOUNDED, dp.delta,
                                                   unit=UnitOfPrivacy.CLIENT, adjacency=self.adjacency),
                                     accountant=self.kind)

    def _plan_adaptive_clip(self, base: DDGConfig) -> None:
        """Andrew et al. 2021 inside the DDG: updates normalized by the clip, the bit appended."""
        ac = self.cfg.dp.adaptive_clip
        bit_noise = ac.bit_noise or self.cfg.expected_clients_per_round() / 20
        clip_cfg = adaptive_clip.AdaptiveClipConfig(
            initial_clip=self.cfg.dp.l2_clip, target_quantile=ac.target_quantile,
            learning_rate=ac.learning_rate, bit_noise=bit_noise)
        planned = adaptive_clip.plan_ddg(base, clip_cfg)
        self.ddg, self.clip_beta, self.bit_noise = planned.plan, planned.beta, planned.bit_noise
        self.clip = adaptive_clip.ClipTracker(clip_cfg)

    def encode_updates(self, updates: dict) -> dict:
        if self.clip is None:
            return updates
        return {u: adaptive_clip.client_vector(v, clip=self.clip.clip, beta=self.clip_beta)
                for u, v in updates.items()}

    def released(self, outcome) -> dict:
        """The event of the noise the release actually carries (charged next); with adaptive
        clipping, the bit split off the mean and the clip moved."""
        out: dict = {}
        if self.excess_noise:
            left = xnoise.noise_left(self.ddg, survivors=len(outcome.survivors), removed=outcome.noise_removed)
            q = self.accounting_rate
            self._charge_next = PoissonSampledEvent(q, left.event) if q < 1 else left.event
            out["noise_shares_left"] = left.kept
        if self.clip is not None:
            s = len(outcome.survivors)
            total, fraction = adaptive_clip.split_sum(outcome.mean_update.astype(np.float64) * s,
                                                      clip=self.clip.clip, beta=self.clip_beta, survivors=s)
            outcome.mean_update = (total / s).astype(np.float32)
            out.update(clip=self.clip.clip, unclipped_fraction=fraction)
            self.clip.update(fraction)
        return out

    def stop_reason(self) -> str | None:
        try:
            self.tracker.check(self.round_event)
        except BudgetExceededError as e:
            return str(e)
        return None

    def ledger_fields(self, sampled, events) -> dict:
        return {"event": self.round_event.to_dict()}

    def charge(self, sampled, events) -> None:
        event, self._charge_next = self._charge_next or self.round_event, None
        self.tracker.spend(event)

    def recharge(self, record, log) -> None:
        if "event" in record:
            self.tracker.spend(event_from_dict(record["event"]))
            log(f"resume: round {record['round'] + 1} was released before the crash; its fresh-noise release is "
                f"charged (epsilon now {self.tracker.epsilon_so_far:.3f})")

    def epsilon(self) -> float | None:
        return self.tracker.epsilon_so_far

    def describe(self, metrics: list[dict]) -> dict:
        cfg, dp, plan = self.cfg, self.cfg.dp, self.ddg
        history = self.tracker.accountant.history
        eps = epsilons(history, dp.delta, UnitOfPrivacy.CLIENT, self.adjacency)
        survivors = [m["survivors"] for m in metrics if m["survivors"]]
        honest = plan.config.honest_survivors
        wrap_coord, wrap_round = plan.wrap_probability()
        releases = sum(e.count for e in history)
        mechanism = {
            "name": "distributed discrete Gaussian (Kairouz, Liu, Steinke, ICML 2021)",
            "unit_of_privacy": "client",
            "adjacency": self.adjacency.value,
            "neighbouring_relation": ("two runs whose inputs differ in one client's update: "
                                      + ("it is replaced by zero; the client stays in the cohort and still adds "
                                         "its noise share" if self.adjacency is Adjacency.ZERO_OUT
                                         else "it is replaced by any other update (sensitivity doubled)")),
            "epsilon_replace_one": _replace_one(history, dp.delta, UnitOfPrivacy.CLIENT),
            "trust": (f"The adversary may be the server colluding with up to {self.colluders} clients "
                      f"(ceil({cfg.secagg.corrupt:g} x {self.cohort_cap}), secagg's tolerated corrupt fraction of the "
                      f"at most {self.cohort_cap} clients of a round): it learns their noise shares, so the noise is calibrated for the "
                      f"{honest} = {plan.config.min_survivors} - {self.colluders} honest survivors' shares alone. "
                      "Trusted: the honest clients add their noise shares as specified, from secret seeds; secure "
                      "aggregation reveals only the sum of at least min_survivors inputs; no more than "
                      f"{self.colluders} clients collude."),
            "parameters": {
                "l2_clip": plan.config.l2_clip, "bits": plan.bits, "modulus": plan.modulus,
                "rotation": "randomized Hadamard, public per-round seed", "padded_dim": plan.padded_dim,
                "gamma": plan.gamma, "beta": plan.config.beta, "client_sigma_integer_units": plan.client_sigma,
                "central_noise_std": plan.central_sigma, "l2_sensitivity_integer_units": plan.l2_sensitivity,
                "calibrated_for_survivors": plan.config.min_survivors,
                "calibrated_for_honest_survivors": honest,
                "tolerated_colluding_clients": self.colluders,
                "most_clients_per_round": self.cohort_cap,
                "client_sampling_rate_accounted": self.accounting_rate,
                "sampling": ("Poisson" if cfg.sampling_rate is not None
                             else "fixed-size cohort, accounted without amplification"),
                "releases_charged": releases,
            },
            "epsilon": eps, "delta": dp.delta,
            "wrap_probability": {
                "per_coordinate": wrap_coord, "per_round": wrap_round,
                "over_rounds_run": float(-np.expm1(releases * np.log1p(-wrap_round))) if wrap_round < 1 else 1.0,
                "model": (f"the plan's worst case (KLS 2021 Sec. 4.4): {plan.config.num_clients} clients, aligned "
                          f"signal, rounding and noise; the modulus spans {plan.config.k_stddevs:g} standard "
                          "deviations each side; a wrapped sum is a wrong update (utility), never a privacy loss"),
            },
            "dropouts": {
                "calibration_assumed_survivors": plan.config.min_survivors,
                "calibration_assumed_honest_survivors": honest,
                "fewest_survivors_seen": min(survivors) if survivors else None,
                "noise_std_at_fewest": plan.noise_std(min(survivors)) if survivors else None,
                "note": ("noise per client is calibrated for min_survivors minus the tolerated colluders; more "
                         "survivors only add noise"),
                "excess_noise_removal": (
                    "on: the noise shares of survivors beyond min_survivors are revealed and subtracted "
                    "(Dordis, EuroSys 2024); each release is charged for the shares left"
                    if self.excess_noise else "off"),
            },
        }
        if self.clip is not None:
            ac = dp.adaptive_clip
            mechanism["adaptive_clip"] = {
                "method": "Andrew, Thakkar, McMahan, Ramaswamy (NeurIPS 2021), bit inside the secure sum",
                "initial_clip": dp.l2_clip, "target_quantile": ac.target_quantile,
                "learning_rate": ac.learning_rate, "bit_weight": self.clip_beta,
                "bit_noise_std_clients": self.bit_noise, "final_clip": self.clip.clip,
                "note": "updates are sent as [update / clip, bit]; l2_clip above is that vector's bound"}
        budget = self.tracker.budget.epsilon
        return {"mechanisms": [mechanism], **reported_epsilon(self.tracker, eps["tightest"]),
                "delta": dp.delta, "unit_of_privacy": "client",
                "adjacency": mechanism["adjacency"], "neighbouring_relation": mechanism["neighbouring_relation"],
                "epsilon_replace_one": mechanism["epsilon_replace_one"],
                "budget_epsilon": budget if budget < UNBOUNDED else None,
                "accountant_used_for_budget": dp.accountant.value,
                "secure_aggregation": {"min_survivors": plan.config.min_survivors}}

    def state_dict(self) -> dict:
        state = {"tracker": self.tracker.state_dict()}
        if self.clip is not None:
            state["clip"] = self.clip.clip
        return state

    def load_state_dict(self, state) -> None:
        self.tracker.load_state_dict(state["tracker"])
        if self.clip is not None:
            self.clip.clip = float(state["clip"])


class SampleLevelDP(PrivacyPlan):
    """Example-level DP: DP-SGD on each client, each client with its own budget.

    The noise multiplier is calibrated for the median client visited ``ceil(rounds * rate)``
    times; a client whose next visit would exceed its budget sits the round out.
    """

    mode = DPMode.SAMPLE

    def __init__(self, cfg: RunConfig, *, sizes: np.ndarray, num_clients: int):
        super().__init__(cfg)
        dp = cfg.dp
        self.kind = AccountantKind(dp.accountant.value)
        self.adjacency = dp.adjacency or Adjacency.ADD_REMOVE
        median = int(np.median(sizes))
        rate = cfg.sampling_rate if cfg.sampling_rate is not None else cfg.clients_per_round / num_clients
        self.planned_visits = max(1, math.ceil(cfg.rounds * rate))
        if dp.noise_multiplier is not None:
            self._noise_multiplier = dp.noise_multiplier
        else:
            self._noise_multiplier = calibrate_noise_multiplier(
                target_epsilon=dp.target_epsilon, delta=dp.delta, sampling_rate=self._example_rate(median),
                steps=self.planned_visits * self._steps(median), accountant=self.kind, adjacency=self.adjacency)
        budget = dp.epsilon_budget if dp.epsilon_budget is not None else dp.target_epsilon
        self.per_client = PerClientBudgets(PrivacyBudget(budget if budget is not None else UNBOUNDED, dp.delta,
                                                         unit=UnitOfPrivacy.EXAMPLE, adjacency=self.adjacency),
                                           accountant=self.kind)

    @property
    def noise_multiplier(self) -> float:
        return self._noise_multiplier

    def _steps(self, n_examples: int) -> int:
        lc = self.cfg.local
        return lc.steps if lc.steps is not None else lc.epochs * math.ceil(n_examples / lc.batch_size)

    def _example_rate(self, n_examples: int) -> float:
        """The rate the charge will use: what both training backends record (Opacus' rule)."""
        return dp_sgd_sampling_rate(num_examples=n_examples, batch_size=self.cfg.local.batch_size)

    def client_event(self, n_examples: int):
        """The DP-SGD event one visit of a client with n examples will cost (planned steps)."""
        return ComposedEvent(PoissonSampledEvent(self._example_rate(n_examples),
                                                 GaussianEvent(self.noise_multiplier)), self._steps(n_examples))

    def admit(self, sampled, sizes):
        keep, refused = [], []
        for u in sampled:
            try:
                self.per_client.check(u, self.client_event(int(sizes[u])))
                keep.append(u)
            except BudgetExceededError:
                refused.append(u)
        return keep, refused

    def ledger_fields(self, sampled, events) -> dict:
        return {"client_events": {str(u): events[u].to_dict() for u in sampled if events[u] is not None}}

    def charge(self, sampled, events) -> None:
        for u in sampled:  # local DP-SGD ran: each client that trained pays its steps
            if events[u] is not None:
                self.per_client.spend(u, events[u])

    def recharge(self, record, log) -> None:
        client_events = record.get("client_events", {})
        for u, ev in client_events.items():
            self.per_client.spend(int(u), event_from_dict(ev))
        log(f"resume: round {record['round'] + 1}'s DP-SGD steps of {len(client_events)} clients "
            f"were released before the crash and are charged")

    def epsilon(self) -> float:
        """The guarantee is the worst client's."""
        return max((self.per_client.epsilon_so_far(i) for i in self.per_client), default=0.0)

    def describe(self, metrics: list[dict]) -> dict:
        cfg, dp = self.cfg, self.cfg.dp
        # RDP for every client (fast); both accountants for the 3 clients with the largest RDP
        # epsilon, where the worst case lives (PRV takes seconds per history).
        per = {}
        for u in self.per_client:
            history = self.per_client.tracker(u).accountant.history
            per[u] = {"rdp": epsilons_rdp(history, dp.delta, self.adjacency)}
        top = sorted(per, key=lambda k: -per[k]["rdp"])[:3]
        for u in top:
            per[u] = epsilons(self.per_client.tracker(u).accountant.history, dp.delta, UnitOfPrivacy.EXAMPLE,
                              self.adjacency)
        replace_one = max((_replace_one(self.per_client.tracker(u).accountant.history, dp.delta,
                                        UnitOfPrivacy.EXAMPLE) for u in top), default=0.0)
        per = {str(u): v for u, v in per.items()}
        worst_id = max(self.per_client, key=self.per_client.epsilon_so_far, default=None)
        worst = self.per_client.epsilon_so_far(worst_id) if worst_id is not None else 0.0
        mechanism = {
            "name": ("DP-SGD (Abadi et al., CCS 2016) via Opacus, per client" if cfg.local.backend.value == "opacus"
                     else "DP-SGD (Abadi et al., CCS 2016) per client, vectorized over the cohort "
                     "(fl_core.learn.cohort) with Opacus' semantics"),
            "unit_of_privacy": "example",
            "adjacency": self.adjacency.value,
            "neighbouring_relation": {
                Adjacency.ADD_REMOVE: "one client's training data has one example more or one fewer",
                Adjacency.ZERO_OUT: "one example of one client contributes a zero gradient instead of its own",
                Adjacency.REPLACE_ONE: "one example of one client is replaced by any other example",
            }[self.adjacency],
            "epsilon_replace_one": replace_one,
            "trust": ("Each client's DP-SGD noise is its own, drawn from a CSPRNG keystream: the guarantee holds "
                      "even against the server and every other client. Nothing else about a client leaves it "
                      "unnoised: the server averages the survivors' updates with uniform weights (no example "
                      "counts are sent)."),
            "parameters": {"max_grad_norm": dp.l2_clip, "noise_multiplier": self.noise_multiplier,
                           "batch_size": cfg.local.batch_size, "local_epochs": cfg.local.epochs,
                           "local_steps": cfg.local.steps, "grad_sample_mode": dp.grad_sample_mode.value,
                           "planned_visits_per_client": self.planned_visits},
            "wrap_probability": {
                "per_coordinate": 0.0, "per_round": 0.0,
                "model": ("none can wrap: the fixed-point scale is chosen so that the sum of max_clients inputs, each "
                          "clipped to secagg's l2_clip, fits the modulus (secagg.encoding.FixedPointEncoding.for_sum)")},
            "epsilon_worst_client": worst, "worst_client": worst_id, "delta": dp.delta,
            "epsilon_per_client": per,
        }
        budget = self.per_client.budget.epsilon
        reported = (reported_epsilon(self.per_client.tracker(worst_id), per[str(worst_id)].get("tightest", worst))
                    if worst_id is not None else {"epsilon": 0.0, "epsilon_accountant": self.kind.value})
        return {"mechanisms": [mechanism], **reported,
                "epsilon_is": "the worst client's: each client has its own DP-SGD guarantee",
                "delta": dp.delta, "unit_of_privacy": "example",
                "adjacency": mechanism["adjacency"], "neighbouring_relation": mechanism["neighbouring_relation"],
                "epsilon_replace_one": mechanism["epsilon_replace_one"],
                "budget_epsilon": budget if budget < UNBOUNDED else None,
                "accountant_used_for_budget": dp.accountant.value}

    def state_dict(self) -> dict:
        return {"per_client": self.per_client.state_dict()}

    def load_state_dict(self, state) -> None:
        self.per_client.load_state_dict(state["per_client"])


def epsilons_rdp(history: Sequence, delta: float, adjacency: Adjacency | None = None) -> float:
    """epsilon at delta of one example-level history under RDP alone (0 for an empty history)."""
    if not history:
        return 0.0
    acc = Accountant(AccountantKind.RDP, unit=UnitOfPrivacy.EXAMPLE, adjacency=adjacency)
    for event in history:
        acc.compose(event)
    return acc.get_epsilon(delta)


def poisson_cohort_cap(population: int, rate: float) -> int:
    """The most clients a Poisson-sampled round may hold: mean + 7 standard deviations of
    Binomial(population, rate), exceeded with probability about 1e-12 (a larger round aborts)."""
    mean = population * rate
    return min(population, math.ceil(mean + 7.0 * math.sqrt(mean * (1.0 - rate))) + 1)


def privacy_plan(cfg: RunConfig, *, sizes: np.ndarray, dim: int, min_survivors: int, max_clients: int,
                 cohort_cap: int | None = None) -> PrivacyPlan:
    """The plan of ``cfg.dp.mode`` for a run over clients with ``sizes`` examples and ``dim`` parameters;
    ``cohort_cap``: the most clients a round may hold (default ``max_clients``)."""
    if cfg.dp.mode is DPMode.CLIENT:
        return ClientLevelDP(cfg, dim=dim, min_survivors=min_survivors, max_clients=max_clients,
                             cohort_cap=cohort_cap)
    if cfg.dp.mode is DPMode.SAMPLE:
        return SampleLevelDP(cfg, sizes=sizes, num_clients=len(sizes))
    return NoPrivacy(cfg)
