"""The node's side of the configuration: its node config keys, its protocol id, its signing key
and its policy (what it requires of a round: secagg's ``ClientPolicy`` and an epsilon cap), read
from its own node config only."""

from __future__ import annotations

import json

from flwr.app import Context

from secagg.config import ClientPolicy
from secagg.errors import ConfigError
from secagg.hazmat.sign import SigningKey

#: node config (``flower-supernode --node-config``): key -> meaning (docs/flower.md)
NODE_CONFIG_KEYS = {
    "partition-id": "the node's protocol id (and data partition); required",
    "secagg-signing-key-file": "active mode: file with 64 hex digits, the node's Ed25519 signing key",
    "secagg-trust-file": "active mode: JSON {client id: 64 hex digits} of every client's verify key; "
                         "the node takes part only in active rounds with exactly these keys (without it, "
                         "it refuses every active round: it never takes verify keys from the server)",
    "secagg-min-threshold": "refuse rounds whose Shamir threshold t is smaller (default 2)",
    "secagg-min-k": "refuse rounds whose neighbour count k is smaller (default 2)",
    "secagg-min-survivors": "refuse rounds whose min_survivors (absolute) is smaller (default 2)",
    "secagg-min-bits": "refuse rounds with narrower words",
    "secagg-min-corrupt-neighbours": "active mode: refuse rounds whose (k, t) tolerate fewer corrupt neighbours "
                                     "(max_corrupt_neighbours, 2t > k + c)",
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


#: node config key -> ClientPolicy field (the floors); an absent key keeps ClientPolicy's default
_FLOOR_KEYS = {"secagg-min-threshold": "min_threshold", "secagg-min-k": "min_k",
               "secagg-min-survivors": "min_survivors", "secagg-min-bits": "min_bits",
               "secagg-min-corrupt-neighbours": "min_corrupt_neighbours"}


def node_policy(context: Context) -> ClientPolicy:
    """What the node holds itself and checks every setup against (secagg's ``ClientPolicy``): the
    verify keys of its trust file and its floors, from its node config only."""
    trust = context.node_config.get("secagg-trust-file")
    floors = {field: _node_value(context, key, int, None) for key, field in _FLOOR_KEYS.items()}
    return ClientPolicy(verify_keys=read_trust_file(str(trust)) if trust else None,
                        **{field: v for field, v in floors.items() if v is not None})


def node_max_epsilon(context: Context) -> float | None:
    """The largest epsilon the node accepts (``dp-max-epsilon``); None: no cap."""
    return _node_value(context, "dp-max-epsilon", float, None)
