"""Secure aggregation: SecAgg (Bonawitz et al. 2017) with the SecAgg+ sparse graph (Bell et al. 2020).

Sans-I/O parties (``ClientParty``, ``ServerParty``) exchange frozen messages whose one byte
encoding lives in ``secagg.wire``; ``simulate`` drives n clients and a server in one process.
"""

from .client import ClientParty
from .config import GraphKind, Mode, RoundConfig
from .encoding import FixedPointEncoding, clip_coordinates, clip_l2
from .errors import (AbortedError, AuthenticationError, ConfigError, DecodeError, InputError,
                     LocalProtocolError, OverflowRiskError, RefusedRequestError, RemoteProtocolError,
                     SecAggError, ShamirError)
from .graph import choose_k_t, complete_graph, harary_graph
from .server import RoundResult, ServerParty
from .simulate import DropoutSchedule, ProtocolStage, SimulationResult, Transcript, plain_sum, simulate

__all__ = [
    "ClientParty", "ServerParty", "RoundConfig", "RoundResult", "GraphKind", "Mode",
    "FixedPointEncoding", "clip_l2", "clip_coordinates", "choose_k_t", "complete_graph", "harary_graph",
    "simulate", "SimulationResult", "DropoutSchedule", "ProtocolStage", "Transcript", "plain_sum",
    "SecAggError", "LocalProtocolError", "RemoteProtocolError", "AbortedError", "ConfigError",
    "OverflowRiskError", "InputError", "DecodeError", "AuthenticationError", "RefusedRequestError",
    "ShamirError",
]
