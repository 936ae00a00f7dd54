"""A plain Message-API ClientApp behind ``secagg_mod``; the update is fixed (no training), as in
the baseline's NumPyClient."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_core.secure.flower import secagg_mod

app = ClientApp(mods=[secagg_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    (w,) = msg.content["arrays"].to_numpy_ndarrays()
    return Message(RecordDict({"arrays": ArrayRecord([w + 0.01]), "metrics": MetricRecord({"num-examples": 100})}),
                   reply_to=msg)
