"""The ServerApp: Flower's own FedAvg, started on ``SecureGrid(grid, settings)`` instead of
``grid``; the ``secagg-``/``dp-`` run-config keys carry the secure aggregation and DP settings."""

import json
import time

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_core.secure.flower import SecureGrid, SecureSettings

from digits_app import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    settings = SecureSettings.from_run_config(rc)
    model = task.build_model(rc)
    test = task.load_data(rc, 2).test  # the central test split needs no partition

    def evaluate(round_number: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, test)
        return MetricRecord({"test-loss": loss, "accuracy": acc})

    secure = SecureGrid(grid, settings, on_step=_test_hooks(rc))
    strategy = FedAvg(fraction_train=float(rc["fraction-train"]), fraction_evaluate=float(rc["fraction-evaluate"]),
                      min_available_nodes=int(rc["min-nodes"]), min_train_nodes=int(rc["min-nodes"]),
                      min_evaluate_nodes=int(rc["min-nodes"]))
    result = strategy.start(grid=secure, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=int(rc["num-server-rounds"]),
                            evaluate_fn=None if settings.test_dim else evaluate)
    if rc.get("result-file"):
        with open(str(rc["result-file"]), "w") as f:
            json.dump({"nodes": {str(k): v for k, v in secure.nodes.items()}, "epsilon": secure.epsilon,
                       "delta": settings.delta if settings.epsilon else None,
                       "stopped_by_budget": secure.stopped_by_budget,
                       "rounds": [r.to_dict() for r in secure.rounds],
                       "server_eval": {str(k): dict(v) for k, v in result.evaluate_metrics_serverapp.items()},
                       "client_eval": {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()}}, f)


def _test_hooks(rc):
    """Test only: log each exchange (by the protocol stage it collects) to progress-file, then wait
    test-pause seconds, so a test can act (e.g. kill a SuperNode) between two exchanges of a round."""
    path, pause = str(rc.get("progress-file", "")), float(rc.get("test-pause", 0.0))
    if not path:
        return None

    def on_step(round_number, stage, clients):
        with open(path, "a") as f:
            f.write(json.dumps({"round": round_number, "stage": stage.key, "clients": list(clients),
                                "time": time.time()}) + "\n")
        time.sleep(pause)
    return on_step
