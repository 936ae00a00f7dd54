"""Private federated training: the loop (``run``), its config, data, models, local training,
server optimizers, checkpoints and personalization. ``python -m fl_core run`` is the CLI.

The names below are loaded on first use (PEP 562), so ``import fl_core`` and the light modules
(``fl_core.secure``: what a Flower node runs for every protocol message) load no torch."""

import importlib

_WHERE = {
    "audit_run": "fl_core.audit.checks", "write_audit": "fl_core.audit.checks",
    "LocalResult": "fl_core.learn.client", "SampleDP": "fl_core.learn.client", "evaluate": "fl_core.learn.client",
    "local_train": "fl_core.learn.client",
    "RunConfig": "fl_core.config", "default_config": "fl_core.config", "dump_config": "fl_core.config",
    "load_config": "fl_core.config",
    "FederatedDataset": "fl_core.learn.data", "load_federated": "fl_core.learn.data",
    "CheckpointError": "fl_core.errors", "ConfigFieldError": "fl_core.errors", "FLError": "fl_core.errors",
    "ShapeMismatchError": "fl_core.errors",
    "build_model": "fl_core.learn.models",
    "load_pretrained": "fl_core.learn.params", "model_to_vector": "fl_core.learn.params",
    "vector_to_model": "fl_core.learn.params",
    "RunSummary": "fl_core.run.report",
    "make_server_optimizer": "fl_core.learn.strategy",
    "secure_aggregate": "fl_core.secure.aggregate", "SecureAggregate": "fl_core.secure.aggregate",
    "RoundAborted": "fl_core.secure.aggregate",
}

__all__ = [
    "run", "RunSummary", "audit_run", "write_audit", "RunConfig", "default_config", "load_config", "dump_config",
    "FederatedDataset", "load_federated", "build_model", "local_train", "evaluate", "LocalResult", "SampleDP",
    "model_to_vector", "vector_to_model", "load_pretrained", "make_server_optimizer",
    "FLError", "ConfigFieldError", "ShapeMismatchError", "CheckpointError",
    "secure_aggregate", "SecureAggregate", "RoundAborted",
]


def __getattr__(name: str):
    if name == "run":  # the callable fl_core.run package (fl_core.run.loop.run when called)
        return importlib.import_module("fl_core.run")
    if name not in _WHERE:
        raise AttributeError(f"module 'fl_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
