"""The node's side of the configuration: its node config keys, its protocol id, its signing key
and its policy (what it requires of a round), read from its own node config only."""

from __future__ import annotations

import json

from flwr.app import Context

from secagg.errors import ConfigError
from secagg.hazmat.sign import SigningKey

from fl_core.secure.transport import NodePolicy

#: node config (``flower-supernode --node-config``): key -> meaning (docs/flower.md)
NODE_CONFIG_KEYS = {
    "partition-id": "the node's protocol id (and data partition); required",
    "secagg-signing-key-file": "active mode: file with 64 hex digits, the node's Ed25519 signing key",
    "secagg-trust-file": "active mode: JSON {client id: 64 hex digits} of every client's verify key; "
                         "the node takes part only in active rounds with exactly these keys",
    "secagg-min-threshold": "refuse rounds whose Shamir threshold t is smaller",
    "secagg-min-k": "refuse rounds in which this node has fewer neighbours",
    "secagg-min-survivors": "refuse rounds whose min_survivors (absolute) is smaller",
    "secagg-min-bits": "refuse rounds with narrower words",
    "dp-max-epsilon": "refuse rounds that promise a larger epsilon, or no DP",
    "secagg-allow-plain-train": "also serve train messages without a secure round (off: a raw update "
                                "never leaves the node)",
}


def _node_value(context: Context, key: str, kind, default):
    v = context.node_config.get(key, default)
    if v is default:
        return v
    if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ConfigError(f"node config {key}={v!r} must be a non-negative int")
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
        raise ConfigError(f"node config {key}={v!r} must be a positive number")
    return kind(v)


def partition_client_id(context: Context) -> int:
    """The node's protocol id: its ``partition-id`` from the node config."""
    value = _node_value(context, "partition-id", int, None)
    if value is None:
        raise ConfigError("node config partition-id is required (the node's protocol id)")
    return value


def file_signing_key(context: Context) -> SigningKey | None:
    """Active mode: the node's Ed25519 key from ``secagg-signing-key-file``; None when absent."""
    path = context.node_config.get("secagg-signing-key-file")
    if not path:
        return None
    with open(str(path)) as f:
        return SigningKey.from_private(bytes.fromhex(f.read().strip()))


def read_trust_file(path: str) -> dict[int, bytes]:
    """``{client id: verify key}`` from a JSON object of hex strings; ConfigError naming the file."""
    try:
        with open(path) as f:
            raw = json.load(f)
        keys = {int(u): bytes.fromhex(pk) for u, pk in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"trust file {path!r} is not a JSON object of client id -> hex key: {e}") from None
    bad = [u for u, pk in keys.items() if len(pk) != 32]
    if bad:
        raise ConfigError(f"trust file {path!r}: keys of clients {bad[:5]} are not 32 bytes")
    return keys


def node_policy(context: Context) -> NodePolicy:
    """The node's own requirements of a round, from its node config only."""
    trust = context.node_config.get("secagg-trust-file")
    return NodePolicy(verify_keys=read_trust_file(str(trust)) if trust else None,
                      min_threshold=_node_value(context, "secagg-min-threshold", int, 1),
                      min_k=_node_value(context, "secagg-min-k", int, 1),
                      min_survivors=_node_value(context, "secagg-min-survivors", int, 2),
                      min_bits=_node_value(context, "secagg-min-bits", int, 1),
                      max_epsilon=_node_value(context, "dp-max-epsilon", float, None))

