"""plots.png of a run: test accuracy, ε against the target (DP runs only) and, when personalization
ran, each client's accuracy before and after fine-tuning. Titled with the run's name, DP mode and
unit of privacy. matplotlib is imported here only."""

from __future__ import annotations

import math
from pathlib import Path


def plot_run(path: Path, *, metrics: list[dict], title: str, target_epsilon: float | None = None,
             epsilon_label: str = "epsilon so far", personalization: dict | None = None) -> list[str]:
    """Write the figure to ``path``; return the panel titles (what a test can check)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [m["round"] for m in metrics]
    eps = [m.get("epsilon") for m in metrics]
    has_dp = any(e is not None for e in eps)
    clients = (personalization or {}).get("clients") or []
    panels = ["test accuracy"] + (["epsilon"] if has_dp else []) + (["personalization"] if clients else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.9), squeeze=False)
    ax = dict(zip(panels, axes[0]))
    a = ax["test accuracy"]
    a.plot(rounds, [m["accuracy"] if m.get("accuracy") is not None else math.nan for m in metrics], marker=".")
    aborted = [m["round"] for m in metrics if m.get("aborted")]
    if aborted:
        a.scatter(aborted, [0] * len(aborted), marker="x", color="C3", label="aborted round")
        a.legend(loc="lower right", fontsize=8)
    a.set_xlabel("round"), a.set_ylabel("test accuracy"), a.set_ylim(0, 1), a.grid(alpha=0.3)
    a.set_title("test accuracy (central test split)", fontsize=10)
    if has_dp:
        e = ax["epsilon"]
        e.plot(rounds, [x if x is not None else math.nan for x in eps], marker=".", color="C3", label="spent")
        if target_epsilon is not None:
            e.axhline(target_epsilon, color="k", ls="--", lw=1, label=f"target {target_epsilon:g}")
        e.set_xlabel("round"), e.set_ylabel(epsilon_label), e.grid(alpha=0.3), e.set_ylim(bottom=0)
        e.legend(loc="lower right", fontsize=8)
        e.set_title("privacy spent", fontsize=10)
    if clients:
        p = ax["personalization"]
        order = sorted(range(len(clients)), key=lambda i: clients[i]["global_accuracy"])
        xs = range(len(order))
        p.plot(xs, [clients[i]["global_accuracy"] for i in order], "o", ms=4, label="global model")
        p.plot(xs, [clients[i]["personalized_accuracy"] for i in order], "^", ms=4, label="personalized")
        p.set_xticks(list(xs), [str(clients[i]["client"]) for i in order], fontsize=6)
        least = personalization.get("worst10_min_test_examples")
        xlabel = "client (sorted by global accuracy)"
        if least is not None:  # clients the worst-10% figure leaves out: too few test examples to judge
            for tick, i in zip(p.get_xticklabels(), order):
                if clients[i]["test_examples"] < least:
                    tick.set_color("0.6")
            xlabel += f"; grey: < {least} test examples"
        p.set_xlabel(xlabel), p.set_ylabel("accuracy on own test split")
        p.set_ylim(0, 1.05), p.grid(alpha=0.3), p.legend(loc="lower right", fontsize=8)
        p.set_title("personalization", fontsize=10)
    for name in ("test accuracy", "epsilon"):
        if name in ax:
            ax[name].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels
