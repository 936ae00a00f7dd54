"""SGD (with momentum) and Adam over parameters stacked along a leading client axis.

The cohort trainer steps every client's optimizer at once; each client's arithmetic is
``torch.optim``'s, so a cohort run reproduces ``local_train`` client by client.
"""

from __future__ import annotations

import torch

from fl_core.learn.client import OptimizerName

__all__ = ["StackedOptimizer"]


class StackedOptimizer:
    """SGD (with momentum) and Adam over stacked parameters, with torch.optim's arithmetic."""

    def __init__(self, kind: OptimizerName, *, lr: float, momentum: float, params: dict[str, torch.Tensor]):
        self.kind, self.lr, self.momentum = kind, lr, momentum
        self.betas, self.eps = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as local_train uses
        self.state: dict[str, list[torch.Tensor]] = {}
        if kind is OptimizerName.ADAM:
            self.state = {n: [torch.zeros_like(p), torch.zeros_like(p)] for n, p in params.items()}
        elif momentum:
            self.state = {n: [torch.zeros_like(p)] for n, p in params.items()}

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], rows: torch.Tensor | None,
             t: int) -> None:
        """Apply step number ``t`` (0-based) to the clients in ``rows`` (all when None)."""
        for n, g in grads.items():
            p = params[n] if rows is None else params[n][rows]
            st = self.state.get(n, [])
            st = st if rows is None else [s[rows] for s in st]
            if self.kind is OptimizerName.ADAM:  # torch.optim.Adam, single-tensor path
                b1, b2 = self.betas
                m, v = st
                m = m.lerp(g, 1 - b1)
                v = (v * b2).addcmul(g, g, value=1 - b2)
                step_size = self.lr / (1 - b1 ** (t + 1))
                denom = (v.sqrt() / ((1 - b2 ** (t + 1)) ** 0.5)).add(self.eps)
                new, st = p.addcdiv(m, denom, value=-step_size), [m, v]
            elif self.momentum:  # torch.optim.SGD: buf = momentum * buf + g (buf = g at step 0)
                buf = g.clone() if t == 0 else (st[0] * self.momentum).add(g)
                new, st = p.add(buf, alpha=-self.lr), [buf]
            else:
                new = p.add(g, alpha=-self.lr)
            if rows is None:
                params[n] = new
                if st:
                    self.state[n] = st
            else:
                params[n].index_copy_(0, rows, new)
                for full, part in zip(self.state.get(n, []), st):
                    full.index_copy_(0, rows, part)

