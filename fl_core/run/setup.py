"""What a run starts from: its config (from any of the forms ``fl_core.run`` accepts), its data and
its model (built in, named by a ``"module:function"`` entry, or given), and the seeds derived from
the run seed."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fl_core.config import InitMode, RunConfig, config_from_dict, load_config
from fl_core.errors import ConfigFieldError, bad_field
from fl_core.learn.data import FederatedDataset
from fl_core.learn.params import load_pretrained, matches_prefix

__all__ = ["as_run_config", "build_data_and_model", "fit_to_data", "load_run_data", "resolve_object", "derive_seed", "int_seed"]


def derive_seed(seed: int, *parts) -> bytes:
    """32 bytes derived from the run seed and a label (round, client, purpose)."""
    h = hashlib.sha256(b"fl_core/v1")
    for p in (seed, *parts):
        h.update(str(p).encode() + b"|")
    return h.digest()


def int_seed(seed: int, *parts) -> int:
    """A 63-bit integer seed derived as ``derive_seed``."""
    return int.from_bytes(derive_seed(seed, *parts)[:8], "big") >> 1


def as_run_config(config, config_dir: str | os.PathLike | None = None) -> tuple[RunConfig, Path | None]:
    """``config`` (a ``RunConfig``, a TOML path, or a TOML-shaped dict) as a checked ``RunConfig``,
    and the folder relative paths in it are taken from (the file's, unless ``config_dir`` is given)."""
    base = Path(config_dir) if config_dir is not None else None
    if isinstance(config, RunConfig):
        return config, base
    if isinstance(config, (str, os.PathLike)):
        return load_config(config), base if base is not None else Path(config).parent
    if isinstance(config, Mapping):
        return config_from_dict(config, base_dir=base), base
    raise ConfigFieldError([("config", f"got {type(config).__name__}; must be a RunConfig, a path to a TOML "
                             "file or a dict shaped like one")])


def resolve_object(spec: str, field: str) -> Callable:
    """The callable a ``"module:function"`` config entry names (imported now)."""
    mod_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise bad_field(field, spec, f"cannot be imported ({type(e).__name__}: {e})") from None
    if not callable(obj):
        raise bad_field(field, spec, f"names a {type(obj).__name__}, not a function or class")
    return obj


def load_run_data(cfg: RunConfig) -> FederatedDataset:
    """The exact data a run with this config trains on (its split is derived from the seed), e.g.
    to pretrain on its ``public`` part before the run."""
    if cfg.data.loader is not None:
        data = resolve_object(cfg.data.loader, "data.loader")()
        if not isinstance(data, FederatedDataset):
            raise bad_field("data.loader", cfg.data.loader,
                            f"returned a {type(data).__name__}; must return a fl_core.FederatedDataset")
        return data
    return cfg.data.load(rng=np.random.default_rng(int_seed(cfg.seed, "data")))


def _custom_model(factory, field: str, spec, seed: int) -> nn.Module:
    if not callable(factory):
        raise bad_field(field, spec, "must be an nn.Module class or a function of no arguments returning one")
    with torch.random.fork_rng(devices=[]):  # the factory's initialisation follows the run seed
        torch.manual_seed(seed)
        model = factory()
    if not isinstance(model, nn.Module):
        raise bad_field(field, spec, f"returned a {type(model).__name__}; must return a torch.nn.Module")
    return model


def fit_to_data(cfg: RunConfig, data: FederatedDataset) -> RunConfig:
    """``cfg`` with ``data.num_clients`` set to the given data's client count, checked again (so
    that ``clients_per_round``, ``dp.delta`` and the rest are checked against the real clients)."""
    if data.num_clients == cfg.data.num_clients:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_clients=data.num_clients))


def _check_personal_layers(cfg: RunConfig, net: nn.Module) -> None:
    """``personalize.personal_layers`` against the model the run trains (the config checks the
    built-in models by name; a given or factory-built one is known only now)."""
    layers = cfg.personalize.personal_layers
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    unused = [x for x in layers if not any(matches_prefix(n, (x,)) for n in names)]
    if unused:
        raise bad_field("personalize.personal_layers", list(layers), f"prefixes {unused} match no layer of the "
                        f"model (layers: {names})")
    if layers and all(matches_prefix(n, tuple(layers)) for n in names):
        raise bad_field("personalize.personal_layers", list(layers), "leaves no shared layer to train")


def build_data_and_model(cfg: RunConfig, config_dir: Path | None, *, model=None,
                         data: FederatedDataset | None = None) -> tuple[FederatedDataset, nn.Module]:
    """The run's data and initial global model: given ones first, then ``data.loader`` /
    ``model.factory`` entries, then the built-in ones; ``init.mode = "pretrained"`` loads the
    state_dict into whichever it is."""
    if data is None:
        data = load_run_data(cfg)
    elif not isinstance(data, FederatedDataset):
        raise bad_field("data", type(data).__name__, "must be a fl_core.FederatedDataset "
                        "(e.g. FederatedDataset.from_tensors)")
    seed = int_seed(cfg.seed, "model")
    if model is not None:
        net = _custom_model(model, "model", getattr(model, "__name__", type(model).__name__), seed)
    elif cfg.model.factory is not None:
        net = _custom_model(resolve_object(cfg.model.factory, "model.factory"), "model.factory",
                            cfg.model.factory, seed)
    else:
        net = cfg.model.build(in_features=data.in_features, num_classes=data.num_classes, seed=seed)
    _check_personal_layers(cfg, net)
    if cfg.init.mode is InitMode.PRETRAINED:
        path = Path(cfg.init.checkpoint)
        if not path.is_absolute() and config_dir is not None:
            path = config_dir / path
        load_pretrained(net, path)
    return data, net
