"""Private federated training: the loop (``run``), its config, data, models, local training,
server optimizers, checkpoints and personalization. ``python -m fl_core run`` is the CLI."""

from fl_core.audit.checks import audit_run, write_audit
from fl_core.learn.client import LocalResult, SampleDP, evaluate, local_train
from fl_core.config import RunConfig, default_config, dump_config, load_config
from fl_core.learn.data import FederatedDataset, load_federated
from fl_core.errors import CheckpointError, ConfigFieldError, FLError, ShapeMismatchError
from fl_core.learn.models import build_model
from fl_core.learn.params import load_pretrained, model_to_vector, vector_to_model
from fl_core.run.loop import RunSummary, run
from fl_core.learn.strategy import make_server_optimizer

__all__ = [
    "run", "RunSummary", "audit_run", "write_audit", "RunConfig", "default_config", "load_config", "dump_config",
    "FederatedDataset", "load_federated", "build_model", "local_train", "evaluate", "LocalResult", "SampleDP",
    "model_to_vector", "vector_to_model", "load_pretrained", "make_server_optimizer",
    "FLError", "ConfigFieldError", "ShapeMismatchError", "CheckpointError",
]
