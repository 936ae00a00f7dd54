"""The node: ``secagg_mod`` serves our protocol on train messages, and ``SecureClientApp`` is a
ClientApp with it in place. The user's train reply never leaves the node: only protocol bytes do."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg.errors import LocalProtocolError, RefusedRequestError

from fl_core.secure.flower.messages import (RECORD, STATE_RECORD, config_record, float_arrays, model_record,
                                            update_vector)
from fl_core.secure.flower.node import file_signing_key, node_max_epsilon, node_policy, partition_client_id
from fl_core.secure.inputs import InputKind
from fl_core.secure.transport import RoundSetup, client_begin, client_step, saved_client_id, saved_setup


def _reply(msg: Message, **values) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(values)}), reply_to=msg)


def secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower Mod: serve our protocol on train messages; everything else passes through.

    A train message without a secure round setup is refused (an error reply) unless the node
    config sets ``secagg-allow-plain-train``, so a server that skips secure aggregation never
    receives a raw update. Only the shares step ("input") reaches the train handler."""
    if msg.metadata.message_type.split(".")[0] != "train":
        return call_next(msg, context)
    rec = config_record(msg.content)
    if rec is None:
        if context.node_config.get("secagg-allow-plain-train", False) is True:
            return call_next(msg, context)
        raise RefusedRequestError("this node sends updates only through secure aggregation; it got a train "
                                  "message without a secure round setup")
    op = rec.get("op")
    if op == "hello":
        key = file_signing_key(context)
        return _reply(msg, **{"client-id": partition_client_id(context),
                              "verify-key": b"" if key is None else key.public})
    if op == "setup":
        setup = RoundSetup.from_bytes(bytes(rec["data"]))
        u = _protocol_id(setup, rec, context)
        res = client_begin(setup, client_id=u, policy=node_policy(context), max_epsilon=node_max_epsilon(context),
                           signing_key=file_signing_key(context))
        context.state[STATE_RECORD] = ConfigRecord({"state": res.state})
        return _reply(msg, data=res.reply, **{"partition-id": partition_client_id(context)})
    if op not in ("step", "input"):
        raise LocalProtocolError(f"unknown secagg op {op!r}")
    saved = config_record(context.state, STATE_RECORD)
    if saved is None:
        raise LocalProtocolError("no secure round in progress on this node (no saved state)")
    state = saved["state"]
    words = _train_and_encode(msg, context, call_next, state) if op == "input" else None
    if isinstance(words, Message):
        return words  # the train handler's error reply
    res = client_step(state, bytes(rec["data"]), signing_key=file_signing_key(context), words=words)
    context.state[STATE_RECORD] = ConfigRecord({"state": res.state})
    if res.error is not None:
        raise res.error  # Flower returns it as an error reply: the server counts a dropout
    return _reply(msg, data=res.reply)


def _protocol_id(setup: RoundSetup, rec, context: Context) -> int:
    """Semi-honest rounds: the id the server gave this node in the setup (no hello round trip).
    Active rounds: the node's own partition-id, the id its signing key is registered under in the
    trust file (the server learnt it in the hello); a setup naming another id is refused."""
    own = partition_client_id(context)
    if setup.config.verify_keys is not None or "client-id" not in rec:
        if "client-id" in rec and int(rec["client-id"]) != own:
            raise RefusedRequestError(f"the setup names this node client {rec['client-id']}, its id is {own}")
        return own
    return int(rec["client-id"])


def _train_and_encode(msg: Message, context: Context, call_next, state: bytes):
    """The shares step carries the strategy's records: run the user's train handler on them and
    encode ``trained - received``; the reply and its metrics stay here. (Training at this step, as
    Flower's secaggplus_mod does, keeps the input out of the state saved between messages.)"""
    setup, u = saved_setup(state), saved_client_id(state, signing_key=file_signing_key(context))
    if setup.input.kind is InputKind.WORDS:  # test words: the train handler does not run
        return setup.input.encoder().encode(None, client_id=u, round_number=setup.round_number,
                                            round_seed=setup.round_seed)
    key, record = model_record(msg.content)
    sent = float_arrays(record)  # decoded before the handler runs (it may change the message)
    result = call_next(msg, context)
    if result.has_error():
        return result
    _, trained = model_record(result.content, key)
    update = update_vector(sent, trained)
    del sent
    examples = None
    for m in result.content.values():
        if isinstance(m, MetricRecord) and "num-examples" in m:
            examples = int(m["num-examples"])
    del result, trained  # the trained model and its metrics stay on this node
    return setup.input.encoder().encode(update, client_id=u, round_number=setup.round_number,
                                        round_seed=setup.round_seed, num_examples=examples, overwrite_update=True)


class SecureClientApp(ClientApp):
    """``ClientApp(mods=[secagg_mod, *mods])``: a ClientApp whose train updates leave the node only
    masked, through our protocol. Register the train handler as usual."""

    def __init__(self, *, mods=None) -> None:
        super().__init__(mods=[secagg_mod, *(mods or [])])

