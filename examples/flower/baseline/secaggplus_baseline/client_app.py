"""Flower's documented SecAgg+ client: a NumPyClient behind ``secaggplus_mod``."""

from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp


class FixedUpdate(NumPyClient):
    def fit(self, parameters, config):
        return [parameters[0] + 0.01], 100, {}


app = ClientApp(client_fn=lambda context: FixedUpdate().to_client(), mods=[secaggplus_mod])
