"""Our secure aggregation and distributed DP in a Flower app (flwr >= 1.42, Message API).

Client: ``ClientApp(mods=[secagg_mod])``, as Flower users add ``secaggplus_mod``; the user's
``@app.train()`` handler is unchanged, but its reply (trained arrays, metrics) never leaves the
node: the mod turns the update into words (with our DP noise when the round has DP), masks them,
and sends only protocol bytes. ``SecureClientApp()`` is the same ClientApp with the mod in place.
Server: ``strategy.start(grid=SecureGrid(grid, settings), ...)`` with any Message-API strategy
(FedAvg, FedAdam, FedProx, your own). The strategy samples the nodes and builds the train
messages as it always does; ``SecureGrid`` turns each train exchange into one secure round over
the sampled nodes and hands the strategy one train reply: the survivors' mean model (received
arrays + securely summed mean update), weighted by the survivor count (DDG) or their total examples.
Evaluate messages pass through untouched.

The mapping onto Flower (docs/flower.md):
- every message of ours is a ``train`` message (the type the strategy used) whose ConfigRecord
  ``"secagg"`` holds ``op`` ("hello", "setup", "step" or "input") and ``data`` (our bytes); the
  shares step ("input", the one whose reply is the masked input) also carries the strategy's own
  records (the model, its config), so the user's training runs there, as with Flower's
  secaggplus_mod; no other message reaches the user's handler, and the update is never saved
  between messages.
- a node's protocol state lives in ``Context.state["secagg-state"]`` (one bytes value), because on
  the Deployment Engine every message runs in a fresh ClientApp process.
- a node whose reply misses the step's timeout, or comes back as an error, is a dropout.
- protocol ids: semi-honest, the server numbers the nodes and names each one's id in its setup
  (no extra round trip); active mode, the nodes' ``partition-id``, learnt in one hello round trip
  the first time a node is sampled, each node proving its id with its signing key.
- each step pulls the replies every ``secagg-poll-interval`` s (0.1; Flower's own
  ``Grid.send_and_receive`` pulls every 3 s on the Deployment Engine).
- what a node requires of a round (its trust file of verify keys, its floors, its epsilon cap)
  comes from its own node config (secagg's ``ClientPolicy``, ``node_policy``), never from the server.

The package, by side: ``messages`` (our record names, a model's arrays as one vector), ``node``
(the node config and the node's policy), ``mod`` (the node: ``secagg_mod``, ``SecureClientApp``),
``settings`` (the run config: ``SecureSettings``, ``RUN_CONFIG_KEYS``) and ``grid`` (the server:
``SecureGrid`` over any Flower Grid). Every name is importable from ``fl_core.secure.flower``.
"""

from fl_core.secure.flower.grid import GridExchange, RoundRecord, SecureGrid
from fl_core.secure.flower.messages import RECORD, STATE_RECORD, arrays_to_vector, model_record, vector_to_arrays
from fl_core.secure.flower.mod import SecureClientApp, secagg_mod
from fl_core.secure.flower.node import (NODE_CONFIG_KEYS, file_signing_key, node_max_epsilon, node_policy,
                                        partition_client_id, read_trust_file)
from fl_core.secure.flower.settings import RUN_CONFIG_KEYS, SecureSettings

__all__ = ["secagg_mod", "SecureClientApp", "SecureGrid", "SecureSettings", "GridExchange", "RoundRecord",
           "node_policy", "node_max_epsilon", "arrays_to_vector", "vector_to_arrays", "RECORD", "STATE_RECORD", "RUN_CONFIG_KEYS",
           "NODE_CONFIG_KEYS", "model_record", "partition_client_id", "file_signing_key", "read_trust_file"]
