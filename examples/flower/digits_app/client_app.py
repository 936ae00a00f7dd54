"""The ClientApp: a plain Flower train handler; ``SecureClientApp`` in place of ``ClientApp`` is the
one change. The trained weights never leave the node: only masked, noised words do."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fl_core.secure.flower import SecureClientApp

from digits_app import task

app = SecureClientApp()  # was: app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = task.build_model(context.run_config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = task.load_data(context.run_config, int(context.node_config["num-partitions"]))
    n, loss = task.train(model, data.client(int(context.node_config["partition-id"])).train, context.run_config)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": loss})})
    return Message(content, reply_to=msg)
