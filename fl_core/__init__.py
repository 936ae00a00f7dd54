"""Private federated training: the loop (``run``), its config, data, models, local training,
server optimizers, checkpoints and personalization. ``python -m fl_core run`` is the CLI."""

from .audit import audit_run, write_audit
from .client import LocalResult, SampleDP, evaluate, local_train
from .config import RunConfig, default_config, dump_config, load_config
from .data import FederatedDataset, load_federated
from .errors import CheckpointError, ConfigFieldError, FLError, ShapeMismatchError
from .models import build_model
from .params import load_pretrained, model_to_vector, vector_to_model
from .run import RunSummary, run
from .strategy import make_server_optimizer

__all__ = [
    "run", "RunSummary", "audit_run", "write_audit", "RunConfig", "default_config", "load_config", "dump_config",
    "FederatedDataset", "load_federated", "build_model", "local_train", "evaluate", "LocalResult", "SampleDP",
    "model_to_vector", "vector_to_model", "load_pretrained", "make_server_optimizer",
    "FLError", "ConfigFieldError", "ShapeMismatchError", "CheckpointError",
]
