"""Flower's FedAvg on ``SecureGrid``: the secure rounds are timed and written to the ``out`` file
(per round: seconds, hello seconds, the seconds of each protocol step's round trip, bytes)."""

import json

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_core.secure.flower import SecureGrid, SecureSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    n, d = int(rc["min-nodes"]), int(rc["dim"])
    secure = SecureGrid(grid, SecureSettings.from_run_config(rc))
    strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=n, min_train_nodes=n)
    res = strategy.start(grid=secure, initial_arrays=ArrayRecord([np.zeros(d, dtype=np.float32)]),
                         num_rounds=int(rc["num-server-rounds"]))
    (w,) = res.arrays.to_numpy_ndarrays()
    if rc["out"]:
        with open(str(rc["out"]), "w") as f:
            json.dump({"rounds": [r.to_dict() for r in secure.rounds],
                       "max_abs_error": float(np.max(np.abs(w - 0.01)))}, f)
