"""Flower's documented SecAgg+ server: DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...)); the
fit round (the four SecAgg+ stages) is timed and written to the run config's ``out`` file.

``poll-interval`` < 3 (not Flower's behaviour; a comparison row only): the workflow runs on a grid
whose send_and_receive pulls replies that often instead of the Deployment Engine grid's 3 s."""

import json
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Context, Message
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

app = ServerApp()


class PollingGrid(Grid):
    """``grid`` with send_and_receive pulling every ``poll`` seconds; everything else delegated."""

    def __init__(self, grid: Grid, poll: float) -> None:
        self.grid, self.poll = grid, poll

    def set_run(self, run_id):
        return self.grid.set_run(run_id)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        waiting = {m for m in self.grid.push_messages(list(messages)) if m}
        end = time.monotonic() + (timeout if timeout is not None else float("inf"))
        replies = []
        while waiting and time.monotonic() < end:
            got = list(self.grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(self.poll)
        return replies


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
    poll = float(rc["poll-interval"])
    DefaultWorkflow(fit_workflow=timed)(grid if poll >= 3 else PollingGrid(grid, poll), legacy)
    if rc["out"]:
        with open(str(rc["out"]), "w") as f:
            json.dump({"round_seconds": seconds[0] if seconds else None}, f)
