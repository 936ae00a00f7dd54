"""The audit's empirical privacy: client-level canaries (Andrew et al., ICLR 2024) and sample-level
canary examples (Steinke, Nasr, Jagielski, NeurIPS 2023), scored from the run's model trajectory;
the estimators' math is ``dp.empirical``, the canaries themselves ``fl_core.run.canaries``."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from dp.empirical import gaussian_fit_estimate, one_run_audit

from fl_core.audit.rundata import RunRecords
from fl_core.audit.stats import CONFIDENCE
from fl_core.run.canaries import ClientCanaries, ExampleCanaries, read_trajectory

def _cosines(directions: np.ndarray, delta: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(delta)
    return directions @ delta / norm if norm > 0 else np.zeros(len(directions))


def client_canaries(run: RunRecords, delta: float) -> dict | None:
    info = (run.meta or {}).get("client_canaries")
    if not info:
        return None
    c = ClientCanaries(seed=bytes.fromhex(run.meta["canary_seed"]), dim=info["dim"], inserted=info["inserted"],
                       null=info["null"], l2_clip=info["l2_clip"], first_id=info["first_id"], rate=info["rate"],
                       per_round=info["per_round"])
    traj = read_trajectory(run.dir, c.dim).astype(np.float64)
    inserted = np.arange(c.inserted)
    null = np.arange(c.inserted, c.inserted + c.null)
    steps = np.diff(traj, axis=0)
    live = np.flatnonzero(np.linalg.norm(steps, axis=1) > 0)  # aborted rounds left the model unchanged
    final, per_round = np.empty(c.inserted + c.null), np.empty(c.inserted + c.null)
    for start in range(0, c.inserted + c.null, 64):  # 64 directions at a time: memory O(64 d)
        js = np.arange(start, min(start + 64, c.inserted + c.null))
        dirs = c.directions(js)
        final[js] = _cosines(dirs, traj[-1] - traj[0])
        per_round[js] = np.max([_cosines(dirs, steps[t]) for t in live], axis=0) if len(live) else 0.0
    est = gaussian_fit_estimate(final[inserted], final[null], delta=delta, confidence=CONFIDENCE)
    # the exact null: (cos + 1) / 2 ~ Beta((d-1)/2, (d-1)/2) for a uniform direction
    a = (c.dim - 1) / 2
    ks = stats.kstest((final[null] + 1) / 2, stats.beta(a, a).cdf)
    per_round_est = None
    if len(live):
        per_round_est = gaussian_fit_estimate(per_round[inserted], per_round[null], delta=delta,
                                              confidence=CONFIDENCE).as_dict()
    participation = np.zeros(c.inserted, dtype=int)
    for js in run.meta.get("canary_schedule", {}).values():
        participation[np.asarray(js, dtype=int)] += 1
    return {
        "method": "Andrew et al., ICLR 2024 (arXiv:2302.03098): cosine of the final model delta with each canary",
        "inserted": c.inserted, "null": c.null, "dim": c.dim, "rounds": int(len(traj) - 1),
        "participation_mean": float(participation.mean()) if c.inserted else 0.0,
        "participation_min": int(participation.min()) if c.inserted else 0,
        "final_model": est.as_dict(),
        "per_round_max": per_round_est,
        "null_vs_exact_cosine_distribution": {"ks_statistic": float(ks.statistic), "p": float(ks.pvalue)},
    }


def example_canaries(run: RunRecords, delta: float) -> dict | None:
    info = (run.meta or {}).get("example_canaries")
    if not info:
        return None
    from fl_core.learn.data import as_tensors
    from fl_core.learn.params import vector_to_model
    from fl_core.run.setup import build_data_and_model

    cfg = run.cfg
    data, model = build_data_and_model(cfg, None)
    canaries = ExampleCanaries(seed=bytes.fromhex(run.meta["canary_seed"]), count=info["count"],
                               num_clients=info["num_clients"])
    trains = [as_tensors(c.train) for c in data.clients]
    lo, hi = min(float(t[0].min()) for t in trains), max(float(t[0].max()) for t in trains)
    x, y = canaries.examples(data.input_shape, data.num_classes, lo, hi)
    personal = tuple(cfg.personalize.personal_layers)
    traj = read_trajectory(run.dir, run.meta["dim"])

    def losses(params: np.ndarray) -> np.ndarray:
        vector_to_model(params, model, exclude=personal)
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), y, reduction="none").numpy()

    scores = losses(traj[0]) - losses(traj[-1])  # how much training lowered each canary's loss
    res = one_run_audit(scores, canaries.included(), delta=delta, confidence=CONFIDENCE)
    out = res.as_dict()
    out["method"] = ("Steinke, Nasr, Jagielski, NeurIPS 2023 (arXiv:2305.08846), Theorem 3; score = loss drop "
                     "of each canary example from the initial to the final model")
    return out
