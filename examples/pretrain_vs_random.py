"""Pretrained vs random initialization of the global model at the same epsilon.

The server pretrains the model on a public split of digits (20%, in the clear: public data),
then the federation trains privately (client-level distributed DP, epsilon = 3) on the rest,
once from the pretrained weights and once from a random start. Usage:

    python examples/pretrain_vs_random.py [--epsilon 3] [--out runs/pretrain]
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import torch

from fl_core import evaluate, local_train
from fl_core.config import config_from_dict
from fl_core.run.loop import load_run_data, run

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=Path("runs/pretrain"))
    p.add_argument("--rounds", type=int, default=None, help="override the config's rounds")
    p.add_argument("--server-lr", type=float, default=None)
    a = p.parse_args()
    base = tomllib.loads((HERE / "digits_ddp_eps3.toml").read_text())
    base["dp"]["target_epsilon"] = a.epsilon
    base["data"]["public_fraction"] = 0.2
    if a.rounds:
        base["rounds"] = a.rounds
    if a.server_lr:
        base["server"]["lr"] = a.server_lr
    a.out.mkdir(parents=True, exist_ok=True)

    random_cfg = config_from_dict(base)
    data = load_run_data(random_cfg)  # the same split the runs will use
    model = random_cfg.model.build(in_features=data.in_features, num_classes=data.num_classes, seed=1)
    torch.manual_seed(0)
    local_train(model, data.public, epochs=30, lr=0.1, momentum=0.9, batch_size=16,
                generator=torch.Generator().manual_seed(0))
    public_acc = evaluate(model, data.test)[1]
    ckpt = a.out / "pretrained_public.pt"
    torch.save(model.state_dict(), ckpt)
    print(f"pretrained on {len(data.public)} public examples (server, in the clear): "
          f"test accuracy {public_acc:.4f}")

    pre = dict(base, init={"mode": "pretrained", "checkpoint": str(ckpt.resolve())})
    # A pretrained start needs less private training: the same epsilon spent over 5 rounds
    # (less noise per round) with a gentler server step.
    finetune = dict(pre, rounds=5, server=dict(base["server"], lr=0.3))
    results = {}
    for name, cfg in [("random", random_cfg), ("pretrained", config_from_dict(pre)),
                      ("pretrained_finetune", config_from_dict(finetune))]:
        s = run(cfg, a.out / name, progress=False, log=lambda m: None)
        results[name] = {"accuracy": s.final_accuracy, "epsilon": s.epsilon}
        print(f"{name:>19}: final accuracy {s.final_accuracy:.4f} at epsilon {s.epsilon:.3f}")
    for name in ("pretrained", "pretrained_finetune"):
        gain = results[name]["accuracy"] - results["random"]["accuracy"]
        print(f"{name}: {100 * gain:+.1f} points over random init at the same epsilon")
    results["public_only_accuracy"] = public_acc
    (a.out / "comparison.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
