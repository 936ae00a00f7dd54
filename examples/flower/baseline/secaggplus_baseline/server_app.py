"""Flower's documented SecAgg+ server: DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...)); the
fit round (the four SecAgg+ stages) is timed and written to the run config's ``out`` file."""

import json
import time

import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

app = ServerApp()


@app.main()
def main(grid, context: Context) -> None:
    rc = context.run_config
    n, d = int(rc["min-nodes"]), int(rc["dim"])
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                      initial_parameters=ndarrays_to_parameters([np.zeros(d, dtype=np.float32)]))
    secagg = SecAggPlusWorkflow(num_shares=int(rc["num-shares"]), reconstruction_threshold=int(rc["threshold"]),
                                timeout=float(rc["timeout"]))
    seconds = []

    def timed(grid, ctx):
        t0 = time.perf_counter()
        secagg(grid, ctx)
        seconds.append(time.perf_counter() - t0)

    legacy = LegacyContext(context, config=ServerConfig(num_rounds=1), strategy=strategy)
    DefaultWorkflow(fit_workflow=timed)(grid, legacy)
    if rc["out"]:
        with open(str(rc["out"]), "w") as f:
            json.dump({"round_seconds": seconds[0] if seconds else None}, f)
