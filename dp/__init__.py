"""Differential privacy: accountants (RDP, PRV), calibration, budgets, discrete noise, the
distributed discrete Gaussian in secagg's integers, empirical privacy estimators
(``dp.empirical``) and (in ``dp.opacus_adapter``, imported on demand because it pulls in Opacus
and torch) local DP-SGD.

The names below are loaded on first use (PEP 562): ``import dp`` costs next to nothing, and a
process that needs only the protocol never loads scipy or torch."""

import importlib

_WHERE = {
    "Accountant": "dp.accounting", "AccountantKind": "dp.accounting", "EpsilonResult": "dp.accounting",
    "compute_epsilon": "dp.accounting",
    "BudgetTracker": "dp.budget", "PerClientBudgets": "dp.budget", "PrivacyBudget": "dp.budget",
    "calibrate_ddg": "dp.calibration", "calibrate_noise_multiplier": "dp.calibration",
    "DDGConfig": "dp.distributed", "DDGPlan": "dp.distributed", "decode_sum": "dp.distributed",
    "encode_client": "dp.distributed",
    "BudgetExceededError": "dp.errors", "DPConfigError": "dp.errors", "DPError": "dp.errors",
    "ComposedEvent": "dp.events", "DistributedDiscreteGaussianEvent": "dp.events", "GaussianEvent": "dp.events",
    "PoissonSampledEvent": "dp.events", "UnitOfPrivacy": "dp.events",
    "NoiseGenerator": "dp.noise", "discrete_gaussian": "dp.noise", "skellam": "dp.noise",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
