"""Differential privacy: accountants (RDP, PRV), calibration, budgets, discrete noise, the
distributed discrete Gaussian in secagg's integers, and (in ``dp.opacus_adapter``, imported on
demand because it pulls in Opacus) local DP-SGD."""

from .accounting import Accountant, AccountantKind, EpsilonResult, compute_epsilon
from .budget import BudgetTracker, PerClientBudgets, PrivacyBudget
from .calibration import calibrate_ddg, calibrate_noise_multiplier
from .distributed import DDGConfig, DDGPlan, decode_sum, encode_client
from .errors import BudgetExceededError, DPConfigError, DPError
from .events import (ComposedEvent, DistributedDiscreteGaussianEvent, GaussianEvent, PoissonSampledEvent,
                     UnitOfPrivacy)
from .noise import NoiseGenerator, discrete_gaussian, skellam

__all__ = [
    "Accountant", "AccountantKind", "EpsilonResult", "compute_epsilon",
    "BudgetTracker", "PerClientBudgets", "PrivacyBudget",
    "calibrate_ddg", "calibrate_noise_multiplier",
    "DDGConfig", "DDGPlan", "decode_sum", "encode_client",
    "BudgetExceededError", "DPConfigError", "DPError",
    "ComposedEvent", "DistributedDiscreteGaussianEvent", "GaussianEvent", "PoissonSampledEvent", "UnitOfPrivacy",
    "NoiseGenerator", "discrete_gaussian", "skellam",
]
