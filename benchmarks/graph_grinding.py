"""How much a server gains by grinding session ids when the session id seeds the graph.

    python benchmarks/graph_grinding.py --json benchmarks/results/graph_grinding.json

Model (docs/graph.md section 7): the corrupt set C (c = ceil(corrupt * n) clients) and one honest
target are fixed; the server tries G session ids, builds the Harary graph of each (the graph is a
function of the session id when no graph_seed is given) and keeps the one where the target has the
most corrupt neighbours. For each G we repeat this R times and report the mean and largest "best
of G", how often the best reaches the break point (t corrupt neighbours in semi-honest mode, 2t - k
in active mode: docs/graph.md sections 3 and 6), the exact chance of that, 1 - (1 - p)^G with
p = P[hypergeometric(n - 1, c, k) >= break point], and the time one try costs. With a
deployment-supplied graph_seed (secagg.graph.beacon_seed) G = 1: the server's session id no longer
changes the graph (tests/secagg/test_graph_grinding.py checks that).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from secagg.graph import choose_k_t, harary_permutation


def tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X ~ hypergeometric(population, marked, draws), exact."""
    total = math.comb(population, draws)
    return sum(math.comb(marked, j) * math.comb(population - marked, draws - j)
               for j in range(max(at_least, 0), min(marked, draws) + 1)) / total


def corrupt_neighbours(order: tuple[int, ...], target: int, k: int, corrupt: set[int]) -> int:
    n, p = len(order), order.index(target)
    return sum(order[(p + s) % n] in corrupt for s in range(-(k // 2), k // 2 + 1) if s)


def grind(n: int, *, dropout: float, corrupt: float, active: bool, tries: list[int], repeats: int,
          seed: int) -> dict:
    k, t = choose_k_t(n, dropout=dropout, corrupt=corrupt, active=active)
    c = math.ceil(corrupt * n - 1e-9)
    rng = np.random.default_rng(seed)
    ids = tuple(range(n))
    bad = set(int(u) for u in rng.choice(n, size=c, replace=False))
    target = next(u for u in ids if u not in bad)
    breaks_at = 2 * t - k if active else t
    expected = k * c / (n - 1)
    rows, spent, count = [], 0.0, 0
    for g in tries:
        best = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            top = max(corrupt_neighbours(harary_permutation(ids, seed=rng.bytes(32)), target, k, bad)
                      for _ in range(g))
            spent += time.perf_counter() - t0
            count += g
            best.append(top)
        p = tail(n - 1, c, k, breaks_at)
        rows.append({"tries": g, "mean_best": round(float(np.mean(best)), 2), "max_best": int(max(best)),
                     "reached_break_point": sum(b >= breaks_at for b in best), "repeats": repeats,
                     "p_break_exact": -math.expm1(g * math.log1p(-p)) if p < 1 else 1.0,
                     "log2_p_break": math.log2(-math.expm1(g * math.log1p(-p))) if 0 < p < 1 else
                     (0.0 if p >= 1 else None)})
    p_one = tail(n - 1, c, k, breaks_at)
    return {"log2_p_break_one_try": math.log2(p_one) if p_one > 0 else None, "n": n, "dropout": dropout, "corrupt": corrupt, "mode": "active" if active else "semi-honest",
            "k": k, "t": t, "corrupt_clients": c, "break_point": breaks_at,
            "expected_corrupt_neighbours": round(expected, 3), "seconds_per_try": spent / count, "rows": rows}


TRIES = [1, 10, 100, 300, 1000, 3000]


def markdown_table(result: dict) -> str:
    """The table docs/graph.md section 7 prints (tests/secagg/test_graph_grinding.py compares them)."""
    head = ("| n | mode | k | t | breaks at | E[corrupt nb.], 1 try | "
            + " | ".join(f"best of {g}: mean (max)" for g in TRIES)
            + f" | log₂ P[break], 1 try | log₂ P[break], {TRIES[-1]} tries | ms per try |")
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]

    def log2(x):
        return "−∞" if x is None else f"{x:.1f}".replace("-", "−")
    for r in result["configs"]:
        rows = {row["tries"]: row for row in r["rows"]}
        cells = [f"{rows[g]['mean_best']} ({rows[g]['max_best']})" for g in TRIES]
        lines.append(f"| {r['n']} | {r['mode']} | {r['k']} | {r['t']} | {r['break_point']} | "
                     f"{r['expected_corrupt_neighbours']} | " + " | ".join(cells)
                     + f" | {log2(r['log2_p_break_one_try'])} | {log2(rows[TRIES[-1]]['log2_p_break'])} | "
                     f"{r['seconds_per_try'] * 1e3:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    out = {"machine": platform.machine(), "python": platform.python_version(), "configs": []}
    for n, tries in ((100, TRIES), (1000, TRIES)):
        for active in (False, True):
            r = grind(n, dropout=0.05, corrupt=0.05, active=active, tries=tries, repeats=a.repeats, seed=n)
            out["configs"].append(r)
            print(f"n={n} {r['mode']}: (k, t) = ({r['k']}, {r['t']}), c = {r['corrupt_clients']} corrupt clients, "
                  f"breaks at {r['break_point']} corrupt neighbours, E = {r['expected_corrupt_neighbours']}, "
                  f"{r['seconds_per_try'] * 1e3:.3f} ms per try")
            for row in r["rows"]:
                print(f"  G={row['tries']:>6}: best mean {row['mean_best']:>5}, max {row['max_best']:>3}, "
                      f"reached {row['reached_break_point']}/{row['repeats']}, exact P {row['p_break_exact']:.3g} (log2 {row['log2_p_break']})")
    print(markdown_table(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
