"""One error tree for the whole protocol.

Split as in h11: ``LocalProtocolError`` means *you* misused the library (bad configuration,
wrong-length input, calling a party out of order); ``RemoteProtocolError`` means a *peer* sent
something it must not (malformed bytes, wrong session, replay, forged share); ``AbortedError``
means the round cannot finish safely and has revealed nothing more. A party that raised a
remote error may keep going (the bad message is dropped); a party that aborted stays aborted.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error the library raises on purpose."""


class LocalProtocolError(SecAggError):
    """The caller misused the library: bad arguments, bad configuration, wrong call order."""


class ConfigError(LocalProtocolError, ValueError):
    """A round configuration or parameter is invalid; the message names the field and value."""


class OverflowRiskError(ConfigError):
    """The sum over the configured number of clients could wrap the modulus."""


class InputError(LocalProtocolError, ValueError):
    """A client's input vector has the wrong length, dtype, or values out of range."""


class RemoteProtocolError(SecAggError):
    """A peer sent a message it must not: malformed, out of stage, replayed or forged."""


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode to a well-formed message of the expected kind."""


class AuthenticationError(RemoteProtocolError):
    """A ciphertext or signature failed verification. Deliberately opaque."""


class UnexpectedMessageError(RemoteProtocolError):
    """A message that is not legal in the party's current stage (out of order, or a replay)."""


class WrongSessionError(RemoteProtocolError):
    """A message of another round (session id mismatch): stale or replayed."""


class UnknownClientError(RemoteProtocolError):
    """A message from or about a client that is not in the round, or not a neighbour."""


class DuplicateMessageError(RemoteProtocolError):
    """A second message from the same client in the same stage."""


class RefusedRequestError(RemoteProtocolError):
    """A client refused a server request that would break the protocol's guarantees, such as
    revealing both shares of one peer or accepting a survivor list that is not a subset of
    the earlier one. The client aborts: it reveals nothing more in this round."""


class RoundMismatchError(RemoteProtocolError):
    """A peer's round digest differs from ours: the parties were given different round parameters
    (another t, k, client list, verify keys, ...). A client that sees one aborts for good."""


class ShamirError(SecAggError):
    """Secret sharing failed: too few, duplicate, malformed or inconsistent shares."""


class InsufficientSharesError(ShamirError):
    """Fewer shares than the threshold."""


class DuplicateShareError(ShamirError):
    """Two shares carry the same x-coordinate."""


class MalformedShareError(ShamirError, DecodeError):
    """A share is out of the field or has the wrong size."""


class InconsistentSharesError(ShamirError, RemoteProtocolError):
    """More than t shares were given and they do not lie on one polynomial of degree t-1."""


class AbortedError(SecAggError):
    """The round was aborted (e.g. fewer than ``min_survivors`` clients left). Nothing was revealed."""
