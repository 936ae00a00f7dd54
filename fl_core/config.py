"""The configuration of one run: one declaration per field (type, range, help), read from TOML and
checked up front.

Each section is a frozen pydantic dataclass; a field's type, bounds and help text are declared once,
beside it. ``load_config(path)`` reads TOML and checks every value and every cross-field rule
(``fl_core.config_rules``) before anything runs. All problems are collected and raised together as
one ``ConfigFieldError`` naming each bad field by dotted path (``local.lr``), its value and the
reason; unknown keys are errors too. Constructing a ``RunConfig`` in code runs the same checks.
``dump_config(cfg)`` writes TOML (tomli-w) that ``load_config`` reads back to an equal config. The
enums are the libraries' own (secagg's graph, dp's accountant and grad-sample mode, the learn
layer's names); nothing here imports torch, and no model is built to validate.

Defaults are the default example: digits over 20 IID clients, 10 sampled per round, an MLP,
client-level distributed DP at a target of epsilon = 8 with secure aggregation.

A one-of pair (``local.epochs``/``local.steps``, ``clients_per_round``/``sampling_rate``,
``dp.target_epsilon``/``dp.noise_multiplier``): the first has a default; giving only the second in
the file switches the first off. Giving both is an error.

Minimal file::

    rounds = 30
    [data]
    dataset = "digits"
    num_clients = 20
    [dp]
    mode = "client"
    target_epsilon = 3.0
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import tomli_w
from pydantic import ConfigDict, Field, Strict, StringConstraints, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from dp.accounting import AccountantKind
from dp.grad_sample import GradSampleMode
from secagg.config import GraphKind

from fl_core.config_rules import DPMode, InitMode, cross_problems
from fl_core.errors import ConfigFieldError, ConfigFileError
from fl_core.learn.names import Backend, DatasetName, ModelName, OptimizerName, Partition
from fl_core.learn.strategy import ServerOptName

__all__ = [
    "DPMode", "GradSampleMode", "AccountantKind", "GraphKind", "InitMode", "Backend",
    "DataConfig", "ModelConfig", "LocalConfig", "ServerConfig", "DPConfig", "AdaptiveClipSection", "DropoutConfig",
    "SecAggConfig", "InitConfig", "PersonalizeConfig", "AuditConfig", "RunConfig",
    "load_config", "config_from_dict", "dump_config", "config_problems", "default_config",
]

# Field types: TOML's own types only (no "3" for 3, no true for 1); an int is a fine float.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), StringConstraints(min_length=1)]
Ref = Annotated[str, Strict(), StringConstraints(pattern=r"^[^:\s]+:[^:\s]+$")]  # "module:function"
_SECTION = ConfigDict(extra="forbid", frozen=True)


def _section(cls):
    """A frozen, checked section whose bad fields raise ``ConfigFieldError`` (not pydantic's error)."""
    cls = dataclass(config=_SECTION)(cls)
    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except ValidationError as e:
            problems = _problems(cls, e)
            if cls is RunConfig and not args and any(err["loc"] for err in e.errors()):
                problems += _rule_problems(kwargs, e, problems)
            raise ConfigFieldError(problems) from None

    cls.__init__ = checked_init
    return cls


@_section
class DataConfig:
    """Which built-in dataset and how it is spread over clients (see ``fl_core.learn.data``)."""

    dataset: DatasetName = Field(DatasetName.DIGITS, description="built-in dataset")
    num_clients: Int = Field(20, ge=1, description="clients the data is spread over")
    partition: Partition = Field(Partition.IID, description="how; synthetic needs 'natural'")
    alpha: Float = Field(0.5, gt=0, description="Dirichlet concentration (partition = 'dirichlet')")
    shards_per_client: Int = Field(2, ge=1, description="partition = 'shards'")
    test_fraction: Float = Field(0.2, gt=0, lt=1, description="central test set (digits)")
    client_test_fraction: Float = Field(0.2, ge=0, lt=1, description="each client's own test split")
    public_fraction: Float = Field(0.0, ge=0, lt=1, description="server-side public data (pretraining)")
    num_samples: Int = Field(5000, ge=50, description="mnist1d generator size")
    synthetic_alpha: Float = Field(1.0, ge=0, description="synthetic: model heterogeneity")
    synthetic_beta: Float = Field(1.0, ge=0, description="synthetic: data heterogeneity")
    loader: Ref | None = Field(None, description='"module:function" returning a FederatedDataset (replaces the above)')

    def load(self, *, rng):
        """The federated dataset these fields describe (``fl_core.learn.data.load_federated``)."""
        from fl_core.learn.data import load_federated

        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("dataset", "loader")}
        return load_federated(self.dataset, rng=rng, **kw)


@_section
class ModelConfig:
    """The global model: a built-in one, or ``factory`` building any ``nn.Module`` with no arguments."""

    name: ModelName = Field(ModelName.MLP, description="built-in model")
    hidden: Int = Field(64, ge=1, description="hidden width of the built-in model")
    factory: Ref | None = Field(None, description='"module:function" (or class) building the model')

    def build(self, *, in_features: int, num_classes: int = 10, seed: int | None = None):
        """``fl_core.learn.models.build_model`` with these fields."""
        from fl_core.learn.models import build_model

        return build_model(self.name, in_features=in_features, num_classes=num_classes, hidden=self.hidden, seed=seed)


@_section
class LocalConfig:
    """Local training per client and round (``fl_core.learn.client.local_train``). ``backend``: "opacus",
    the reference, trains the sampled clients one after the other (Opacus for DP-SGD); "cohort"
    trains them all at once with the same semantics (``fl_core.learn.cohort``, docs/cohort.md)."""

    ONE_OF: ClassVar[tuple[tuple[str, str], ...]] = (("epochs", "steps"),)
    epochs: Int | None = Field(2, ge=1, description="local passes over the data (or give steps)")
    steps: Int | None = Field(None, ge=1, description="local minibatch steps (or give epochs)")
    lr: Float = Field(0.1, gt=0, description="local learning rate")
    optimizer: OptimizerName = Field(OptimizerName.SGD, description="local optimizer")
    momentum: Float = Field(0.9, ge=0, lt=1, description="SGD momentum (0 with Adam)")
    batch_size: Int = Field(16, ge=1, description="minibatch size (DP-SGD: expected batch)")
    prox_mu: Float = Field(0.0, ge=0, description="FedProx proximal weight (0 = off)")
    backend: Backend = Field(Backend.OPACUS, description="'opacus' one client after another, or 'cohort'")


@_section
class ServerConfig:
    """Server optimizer (``fl_core.learn.strategy``); fields the chosen optimizer does not use are ignored."""

    optimizer: ServerOptName = Field(ServerOptName.FEDAVG, description="server optimizer")
    lr: Float = Field(1.0, gt=0, description="server learning rate")
    momentum: Float = Field(0.9, ge=0, lt=1, description="fedavgm momentum")
    beta1: Float = Field(0.9, ge=0, lt=1, description="adaptive optimizers' first moment decay")
    beta2: Float = Field(0.99, ge=0, lt=1, description="fedadam/fedyogi second moment decay")
    tau: Float = Field(1e-3, gt=0, description="adaptive optimizers' adaptivity")

    def hparams(self) -> dict[str, float]:
        """The hyperparameters the chosen optimizer takes: ``make_server_optimizer(opt, **hparams())``."""
        from fl_core.learn.strategy import make_server_optimizer

        cls = type(make_server_optimizer(self.optimizer))
        return {k: getattr(self, k) for k in cls.HPARAMS}


@_section
class AdaptiveClipSection:
    """``[dp.adaptive_clip]``: Andrew et al. (NeurIPS 2021) quantile clipping, client mode only.
    The clip starts at ``dp.l2_clip`` and moves geometrically (step ``learning_rate``) toward the
    ``target_quantile`` of the update norms; each client's clipped-or-not bit rides in the secure
    sum, with noise std ``bit_noise`` clients on the count (default: expected clients / 20)."""

    enabled: Bool = Field(False, description="adapt the clip (dp.mode = 'client')")
    target_quantile: Float = Field(0.5, gt=0, lt=1, description="quantile of the update norms aimed at")
    learning_rate: Float = Field(0.2, gt=0, le=10, description="geometric step of the clip")
    bit_noise: Float | None = Field(None, gt=0, le=1e9, description="noise std on the clipped count")


@_section
class DPConfig:
    """Differential privacy. ``target_epsilon``: calibrate the noise so the planned rounds spend
    it; or give ``noise_multiplier`` directly. ``epsilon_budget``: stop before a round would
    exceed it (default: the target). ``l2_clip`` is the update clip (client mode) or per-example
    gradient clip (sample mode). ``bits``: field bits for the distributed noise (default:
    ``secagg.bits``). Other fields are ignored when ``mode = "none"``.
    """

    ONE_OF: ClassVar[tuple[tuple[str, str], ...]] = (("target_epsilon", "noise_multiplier"),)
    mode: DPMode = Field(DPMode.CLIENT, description="'client', 'sample' or 'none'")
    target_epsilon: Float | None = Field(8.0, gt=0, description="epsilon the noise is calibrated for")
    noise_multiplier: Float | None = Field(None, gt=0, description="noise multiplier (instead of a target)")
    epsilon_budget: Float | None = Field(None, gt=0, description="stop before exceeding (default: target)")
    delta: Float = Field(1e-5, gt=0, lt=1, description="delta of (epsilon, delta)-DP")
    l2_clip: Float = Field(1.0, gt=0, description="update clip (client) or per-example clip (sample)")
    bits: Int | None = Field(None, ge=1, description="field bits of the distributed noise (default: secagg.bits)")
    accountant: AccountantKind = Field(AccountantKind.RDP, description="accountant of the budget")
    grad_sample_mode: GradSampleMode = Field(GradSampleMode.HOOKS, description="Opacus' per-example gradients")
    excess_noise: Bool = Field(True, description="client mode: reveal and subtract the survivors' excess noise "
                               "shares (Dordis, EuroSys 2024)")
    adaptive_clip: AdaptiveClipSection = Field(default_factory=AdaptiveClipSection)


_Drop = Annotated[Float, Field(ge=0, lt=1)]


@_section
class DropoutConfig:
    """Probability that a client drops at each secagg stage (simulated), each in [0, 1)."""

    keys: _Drop = 0.0
    shares: _Drop = 0.0
    masked_input: _Drop = 0.0
    consistency: _Drop = 0.0
    unmask: _Drop = 0.0


@_section
class SecAggConfig:
    """Secure aggregation. ``k``: neighbour degree for the sparse graph (even; default chosen
    by the round, O(log n)). ``threshold``: Shamir threshold as a fraction of the neighbourhood,
    t = ceil(threshold * k) (default chosen by the round). ``min_survivors``: fraction of the
    sampled clients below which the round aborts. ``bits``: modulus 2^bits.
    """

    enabled: Bool = Field(True, description="mask the updates (client-level DP needs it)")
    graph: GraphKind = Field(GraphKind.COMPLETE, description="'complete' (SecAgg) or 'sparse' (SecAgg+)")
    corrupt: Float = Field(0.05, ge=0, lt=1, description="tolerated corrupt fraction for the (k, t) rule")
    update_clip: Float = Field(10.0, gt=0, description="L2 clip before fixed-point encoding (no client DP)")
    k: Int | None = Field(None, ge=2, description="sparse graph degree (even)")
    threshold: Float | None = Field(None, gt=0, le=1, description="Shamir threshold as a fraction of k")
    bits: Int = Field(32, ge=1, le=62, description="modulus 2^bits")
    min_survivors: Float = Field(0.5, gt=0, le=1, description="abort below this fraction of the sampled")
    dropout: DropoutConfig = Field(default_factory=DropoutConfig, description="simulated dropouts")


@_section
class InitConfig:
    """Global model initialization: seeded random, or a ``state_dict`` file (``checkpoint``; a
    relative path is taken from the config file's folder)."""

    mode: InitMode = Field(InitMode.RANDOM, description="'random' or 'pretrained'")
    checkpoint: Name | None = Field(None, description="state_dict file (mode = 'pretrained')")


@_section
class PersonalizeConfig:
    """Per-client fine-tuning: ``steps`` local steps (0 = off) after training and every ``every``
    rounds (0 = only at the end); ``personal_layers`` (name prefixes, e.g. ["head"]) never leave
    the clients (FedPer); ``lr`` defaults to ``local.lr``."""

    steps: Int = Field(0, ge=0, description="fine-tuning steps (0 = off)")
    every: Int = Field(0, ge=0, description="also every N rounds (0 = only at the end)")
    personal_layers: tuple[Name, ...] = Field((), description="parameter name prefixes kept on the clients")
    lr: Float | None = Field(None, gt=0, description="fine-tuning learning rate (default local.lr)")


@_section
class AuditConfig:
    """What the run keeps for ``python -m fl_core audit`` (docs/audit.md). ``record_rounds``: keep
    the bytes of every message the server received in the first N rounds, for the server-view
    check (0 = none). ``canaries``: client-level canary clients inserted into rounds (needs
    ``dp.mode = "client"``); ``null_canaries``: never-inserted ones for the null (default 1000:
    they are never sent, so they cost only the audit's time). ``canary_examples``: sample-level
    canary examples, each included with probability 1/2 (needs ``dp.mode = "sample"``)."""

    record_rounds: Int = Field(1, ge=0, description="rounds whose messages are kept")
    canaries: Int = Field(0, ge=0, description="client-level canary clients")
    null_canaries: Int | None = Field(None, ge=2, description="never-inserted canaries (default 1000)")
    canary_examples: Int = Field(0, ge=0, description="sample-level canary examples")


@_section
class RunConfig:
    """One federated run. Constructing it checks every field; ``ConfigFieldError`` names them all."""

    ONE_OF: ClassVar[tuple[tuple[str, str], ...]] = (("clients_per_round", "sampling_rate"),)
    rounds: Int = Field(30, ge=1, description="training rounds")
    clients_per_round: Int | None = Field(10, ge=1, description="fixed-size cohort (or sampling_rate)")
    secure_randomness: Bool = Field(True, description="DP noise and protocol secrets from os.urandom; "
                                    "false: from seed (reproducible, not for production)")
    sampling_rate: Float | None = Field(None, gt=0, le=1, description="Poisson client sampling rate")
    seed: Int = Field(0, ge=0, lt=2**63, description="run seed")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    personalize: PersonalizeConfig = Field(default_factory=PersonalizeConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _rules(self, info):
        bad = (info.context or {}).get("bad", frozenset())
        problems = cross_problems(self, bad)
        if problems:
            raise ConfigFieldError(problems)
        return self

    def expected_clients_per_round(self) -> float:
        """clients_per_round, or sampling_rate * num_clients under Poisson sampling."""
        if self.clients_per_round is not None:
            return float(self.clients_per_round)
        return (self.sampling_rate or 0.0) * self.data.num_clients


# --------------------------------------------------------------------------- pydantic's errors, ours

_REASONS = {
    "int_type": "must be an integer", "int_from_float": "must be an integer", "float_type": "must be a number",
    "bool_type": "must be true or false", "string_type": "must be a string", "tuple_type": "must be a list",
    "dataclass_type": "must be a table", "dataclass_exact_type": "must be a table",
    "finite_number": "must be a finite number", "string_too_short": "must not be empty",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _section_at(cls: type, loc: tuple) -> type | None:
    for part in loc:
        field = cls.__pydantic_fields__.get(part)
        if field is None or not dataclasses.is_dataclass(field.annotation):
            return None
        cls = field.annotation
    return cls


def _reason(cls: type, err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        section = _section_at(cls, err["loc"][:-1])
        names = [f.name for f in dataclasses.fields(section)] if section else []
        close = difflib.get_close_matches(str(err["loc"][-1]), names, n=1, cutoff=0.6)
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "") + f" (valid keys here: {names})"
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {next(iter(ctx.values()))}"
    if kind == "enum":
        return f"must be one of [{ctx.get('expected', '').replace(' or ', ', ')}]"
    if kind == "string_pattern_mismatch":
        return 'must be "module:function"'
    return _REASONS.get(kind, err["msg"])


def _problems(cls: type, e: ValidationError) -> list[tuple[str, str]]:
    """Each bad field once, as (dotted path, "got VALUE; reason")."""
    problems, seen = [], set()
    for err in e.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigFieldError):  # a cross-field rule: its problems carry their paths
            found = inner.problems
        else:
            loc = tuple(p for p in err["loc"] if isinstance(p, str))  # a list item: the list's field
            shown = err["input"].value if isinstance(err["input"], enum.Enum) else err["input"]
            known = err["type"] not in ("unexpected_keyword_argument", "extra_forbidden")
            found = [(".".join(loc) or "(config)", f"got {shown!r:.200}; {_reason(cls, err)}" if known
                      else _reason(cls, err))]
        for path, why in found:
            if path not in seen:
                seen.add(path)
                problems.append((path, why))
    return problems


def _rule_problems(table: Mapping, e: ValidationError, found: list) -> list[tuple[str, str]]:
    """The cross-field rules' problems, found by checking ``table`` again without its bad fields
    (their defaults stand in) and skipping the rules that involve them."""
    bad = {path for path, _ in found}
    repaired = _without(table, [tuple(p for p in err["loc"] if isinstance(p, str)) for err in e.errors()])
    try:
        TypeAdapter(RunConfig).validate_python(repaired, context={"bad": frozenset(bad)})
    except ValidationError as again:
        return [(p, why) for p, why in _problems(RunConfig, again) if p not in bad]
    return []


def _without(table: Mapping, locs: list[tuple]) -> dict:
    out = _deep_copy(table)
    for loc in locs:
        node = out
        for part in loc[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and loc:
            node.pop(loc[-1], None)
    return out


def _deep_copy(table: Mapping) -> dict:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in table.items()}


def config_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """Every cross-field problem of a built ``cfg`` as ``(dotted path, reason)`` (its fields are
    valid by construction); empty when valid."""
    return cross_problems(cfg, frozenset())


# --------------------------------------------------------------------------- TOML in


def config_from_dict(table: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None,
                     check_files: bool = True) -> RunConfig:
    """Build and check a ``RunConfig`` from parsed TOML. ``init.checkpoint`` is resolved against
    ``base_dir`` and, with ``check_files``, must exist. Raises one ``ConfigFieldError`` naming
    every bad field."""
    if not isinstance(table, Mapping):
        raise ConfigFieldError([("(config)", f"got {type(table).__name__}; must be a table")])
    table = _deep_copy(table)
    for path, section in ((None, table), ("local", table.get("local")), ("dp", table.get("dp"))):
        cls = {None: RunConfig, "local": LocalConfig, "dp": DPConfig}[path]
        for a, b in cls.ONE_OF if isinstance(section, dict) else ():
            if b in section and a not in section:  # giving only the second switches the first off
                section[a] = None
    extra = []
    init = table.get("init")
    if isinstance(init, dict) and isinstance(init.get("checkpoint"), str) and init["checkpoint"]:
        path = Path(init["checkpoint"]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        init["checkpoint"] = str(path.resolve())
        if check_files and not path.is_file():
            extra.append(("init.checkpoint", f"got {str(path)!r}; file does not exist"))
    try:
        cfg = RunConfig(**table)
    except ConfigFieldError as e:
        seen = {p for p, _ in extra}
        raise ConfigFieldError(extra + [(p, why) for p, why in e.problems if p not in seen]) from None
    if extra:
        raise ConfigFieldError(extra)
    return cfg


DEFAULT_EXAMPLE = Path(__file__).parent / "default_example.toml"


def default_config() -> RunConfig:
    """The default example: what ``python -m fl_core run`` and ``make demo`` train."""
    return load_config(DEFAULT_EXAMPLE)


def load_config(path: str | os.PathLike, *, check_files: bool = True) -> RunConfig:
    """Read a TOML run config; every bad field is named in one ``ConfigFieldError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFileError(path, f"{e.strerror or e}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(path, f"TOML syntax error: {e}") from None
    return config_from_dict(table, base_dir=path.parent, check_files=check_files)


# --------------------------------------------------------------------------- TOML out


def _table(obj: Any) -> dict:
    out: dict = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = _table(v)
        elif v is not None:
            out[f.name] = v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
    return out


def dump_config(cfg: RunConfig) -> str:
    """The config as TOML (None fields are left out; ``load_config`` reads it back equal)."""
    return "# fl_core run configuration\n" + tomli_w.dumps(_table(cfg))
