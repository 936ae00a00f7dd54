"""The ServerApp: ``SecureFedAvg`` in place of Flower's ``FedAvg``; the run config carries the
rounds, the epsilon budget and the secure aggregation parameters."""

import json
import time

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fl_core.secure.flower import SecureFedAvg, SecureSettings

from digits_app import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    settings = SecureSettings.from_run_config(rc)
    model = task.build_model(rc)
    test = task.load_data(rc, max(settings.min_nodes, 2)).test  # the central test split needs no partition

    def evaluate(round_number: int, arrays: ArrayRecord) -> dict:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, test)
        return {"test-loss": loss, "accuracy": acc}

    on_step = _test_hooks(rc)
    result = SecureFedAvg(settings).start(
        grid, initial_arrays=None if settings.test_dim else ArrayRecord(model.state_dict()),
        evaluate_fn=None if settings.test_dim else evaluate, on_step=on_step)
    if rc.get("result-file"):
        with open(str(rc["result-file"]), "w") as f:
            json.dump({"nodes": {str(k): v for k, v in result.nodes.items()}, "epsilon": result.epsilon,
                       "delta": result.delta, "stopped_by_budget": result.stopped_by_budget,
                       "rounds": [r.to_dict() for r in result.rounds]}, f)


def _test_hooks(rc):
    """Test only: log each step to progress-file, then wait test-pause seconds, so a test can act
    (e.g. kill a SuperNode) between two steps of a round."""
    path, pause = str(rc.get("progress-file", "")), float(rc.get("test-pause", 0.0))
    if not path:
        return None

    def on_step(round_number, step, clients):
        with open(path, "a") as f:
            f.write(json.dumps({"round": round_number, "step": step.value, "clients": list(clients),
                                "time": time.time()}) + "\n")
        time.sleep(pause)
    return on_step
