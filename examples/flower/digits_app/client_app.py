"""The ClientApp: a plain Flower train handler; ``mods=[secagg_mod]`` is the one change. The
trained weights never leave the node: only masked (and, with DP, noised) words do.

This module imports no torch: every protocol message after the setup runs in a fresh process
that imports it, and only the train handler (run on the setup message) loads the training code."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fl_core.secure.flower import secagg_mod

app = ClientApp(mods=[secagg_mod])  # was: app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    from digits_app import task

    model = task.build_model(context.run_config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = task.load_data(context.run_config, int(context.node_config["num-partitions"]))
    n, loss = task.train(model, data.client(int(context.node_config["partition-id"])).train, context.run_config)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": loss})})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation, untouched by secure aggregation: metrics only, no update."""
    from flwr.app import MetricRecord, RecordDict

    from digits_app import task

    model = task.build_model(context.run_config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = task.load_data(context.run_config, int(context.node_config["num-partitions"]))
    test = data.client(int(context.node_config["partition-id"])).test
    loss, acc = task.evaluate(model, test)
    metrics = MetricRecord({"num-examples": len(test), "eval-loss": loss, "eval-accuracy": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
