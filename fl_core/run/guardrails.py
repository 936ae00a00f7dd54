"""Guard-rails checked before a run starts: will it learn, and will its rounds go through?

- Signal to noise. The most a released sum can carry is ``m * C`` (m clients, each update clipped
  to norm C, all pointing the same way); the noise added to it has norm about ``sigma * sqrt(d)``
  (sigma per coordinate, d coordinates). When even that best case is far below the noise, the
  model mostly learns noise. For DP-SGD the round's release is the sum of S local steps over
  the round's clients, each a batch of B clipped per-example gradients (sum at most ``B * C``) plus
  independent noise of std ``z * C`` per coordinate: signal at most ``S * B * C``, noise about
  ``sqrt(S) * z * C * sqrt(d)``, which is ``signal_to_noise`` with ``S * B`` summands and noise
  std ``sqrt(S) * z * C``.
- Aborted rounds. A round aborts when fewer than ``min_survivors`` clients reach the masked-input
  stage; with each client dropping independently before stages 0-3 with the configured
  probabilities, the number of survivors is binomial, so the probability is a binomial tail.
  (Aborts at the unmask stage, when some client's masks cannot be recovered, are not counted:
  the figure is a lower bound.)

Each check returns a ``GuardRail`` (data; the loop prints ``message``, privacy.json keeps it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["GuardRail", "SNR_WARN_BELOW", "ABORT_WARN_ABOVE", "signal_to_noise", "abort_probability"]

#: Warn when the best-case signal norm of a release is below this fraction of its noise norm.
#: Calibrated on the examples (examples/README.md): the client-level ε = 1 example (0.376 accuracy)
#: sits at 0.14, ε = 3 at 0.39, ε = 8 at 0.91, the DP-SGD ε = 3 example at 0.47; a config that did
#: not learn (noise std 1.43 over 16,384 coordinates against 8 updates of norm 1: 0.095 accuracy)
#: at 0.044.
SNR_WARN_BELOW = 0.1
#: Warn when a round aborts with at least this probability.
ABORT_WARN_ABOVE = 0.10


@dataclass(frozen=True)
class GuardRail:
    check: str            # "signal_to_noise" or "abort_probability"
    value: float
    warning: bool
    message: str
    inputs: dict

    def as_dict(self) -> dict:
        return asdict(self)


def signal_to_noise(*, summands: int, l2_clip: float, noise_std: float, dim: int, what: str,
                    items: str = "updates") -> GuardRail:
    """Best-case signal norm ``summands * l2_clip`` over noise norm ``noise_std * sqrt(dim)``."""
    signal = summands * l2_clip
    noise = noise_std * math.sqrt(dim)
    ratio = signal / noise if noise > 0 else math.inf
    warn = ratio < SNR_WARN_BELOW
    msg = (f"signal to noise: {what}: the sum of {summands} {items} clipped to norm {l2_clip:g} has norm at most "
           f"{signal:.3g}; the noise (std {noise_std:.3g} per coordinate over {dim:,} coordinates) has norm about "
           f"{noise:.3g}: ratio {ratio:.3g}")
    if warn:
        msg += (f" < {SNR_WARN_BELOW:g}. WARNING: the noise swamps the signal; the model will mostly learn noise. "
                "Raise the clients per round, the clip norm or epsilon, or use a smaller model")
    return GuardRail("signal_to_noise", ratio, warn, msg,
                     {"summands": summands, "l2_clip": l2_clip, "noise_std": noise_std, "dim": dim,
                      "signal_norm_at_most": signal, "noise_norm": noise})


def _binom_cdf_below(m: int, n: int, p: float) -> float:
    """P(Binomial(n, p) < m), each term in log space (math.comb(10000, k) overflows a float)."""
    if p <= 0.0 or p >= 1.0:
        return float((0 if p <= 0.0 else n) < m)
    lp, lq, top = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return min(1.0, math.fsum(math.exp(top - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
                              for k in range(0, min(m, n + 1))))


def abort_probability(*, clients: int, min_survivors: int, drop_before_input: float,
                      sampling_rate: float | None = None) -> GuardRail:
    """Probability that fewer than ``min_survivors`` clients reach the masked-input stage.

    ``clients``: the fixed cohort size, or with ``sampling_rate`` the population each client of
    which is sampled independently (Poisson). ``drop_before_input``: the probability that one
    client drops before stages 0-3 together.
    """
    stay = 1.0 - drop_before_input
    p_each = stay if sampling_rate is None else sampling_rate * stay
    prob = _binom_cdf_below(min_survivors, clients, p_each)
    warn = prob > ABORT_WARN_ABOVE
    who = f"{clients} clients per round" if sampling_rate is None else f"{clients} clients sampled at rate {sampling_rate:g}"
    msg = (f"aborted rounds: with {who}, each dropping with probability {drop_before_input:.3g} before the "
           f"masked-input stage, and min_survivors = {min_survivors}, a round aborts with probability "
           f"{prob:.3g} (at least)")
    if warn:
        msg += (f" > {ABORT_WARN_ABOVE:.0%}. WARNING: many rounds will be charged privacy and release nothing. "
                "Lower secagg.min_survivors or sample more clients")
    return GuardRail("abort_probability", prob, warn, msg,
                     {"clients": clients, "min_survivors": min_survivors, "drop_before_input": drop_before_input,
                      "sampling_rate": sampling_rate})


def check_run(cfg, privacy, *, dim: int, min_survivors: int, clients: int, population: int,
              median_examples: int) -> list[GuardRail]:
    """The guard-rails of a run about to start: ``privacy`` is its plan (``fl_core.run.privacy``),
    ``dim`` the number of aggregated parameters, ``clients`` the most clients in a round,
    ``population`` the clients Poisson sampling draws from, ``median_examples`` of a client."""
    out = []
    if privacy.ddg is not None:
        m = privacy.ddg.config.min_survivors
        out.append(signal_to_noise(summands=m, l2_clip=cfg.dp.l2_clip, noise_std=privacy.ddg.noise_std(m), dim=dim,
                                   what="one round's release (client-level DP, the fewest survivors)"))
    elif privacy.noise_multiplier is not None:
        b = cfg.local.batch_size
        per_round = cfg.clients_per_round if cfg.clients_per_round is not None else population * cfg.sampling_rate
        steps = max(1, round(per_round * privacy.client_event(median_examples).count))
        out.append(signal_to_noise(summands=steps * b, l2_clip=cfg.dp.l2_clip,
                                   noise_std=math.sqrt(steps) * privacy.noise_multiplier * cfg.dp.l2_clip, dim=dim,
                                   items="per-example gradients",
                                   what=f"one round's release (DP-SGD: {steps} local steps of batch {b} over the "
                                        "round's clients)"))
    if cfg.secagg.enabled:
        d = cfg.secagg.dropout
        drop = 1.0 - (1 - d.keys) * (1 - d.shares) * (1 - d.masked_input) * (1 - d.consistency)
        if cfg.clients_per_round is not None:
            out.append(abort_probability(clients=clients, min_survivors=min_survivors, drop_before_input=drop))
        else:
            out.append(abort_probability(clients=population, min_survivors=min_survivors, drop_before_input=drop,
                                         sampling_rate=cfg.sampling_rate))
    return out
