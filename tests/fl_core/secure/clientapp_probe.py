"""Handle one Flower message the way a Deployment Engine node does: in this fresh interpreter,
import the app's ClientApp module and call it once. Prints one JSON line: whether torch and the
example's training module got loaded, the reply's record keys, the error if any, the seconds.

Usage: python clientapp_probe.py JOB.json (written by test_flower.py)."""

import json
import sys
import time

t0 = time.perf_counter()


def inflate(d):
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
    return inflate_object_from_contents(d["root"], {k: bytes.fromhex(v) for k, v in d["objects"].items()})


def main(path: str) -> None:
    job = json.loads(open(path).read())
    sys.path.insert(0, job["app_dir"])
    from flwr.app import Context
    from flwr.supercore.task_identity import TaskIdentity
    for name, value in (("run_id", 1), ("node_id", job["node_id"]), ("task_id", 0)):
        setattr(TaskIdentity, name, value)
    from digits_app.client_app import app
    msg, state = inflate(job["message"]), inflate(job["state"])
    ctx = Context(run_id=1, node_id=job["node_id"], node_config=job["node_config"], state=state,
                  run_config=job["run_config"])
    error, keys = None, None
    try:
        reply = app(msg, ctx)
        keys = sorted(reply.content.config_records.get("secagg", {}))
    except Exception as e:  # reported, the test decides
        error = f"{type(e).__name__}: {e}"
    print(json.dumps({"torch": "torch" in sys.modules, "task": "digits_app.task" in sys.modules,
                      "scipy": "scipy" in sys.modules,
                      "reply_keys": keys, "error": error, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main(sys.argv[1])
