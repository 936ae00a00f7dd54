"""Vectorized cohort trainer: many simulated clients' local training in one batched step.

The reference path trains the sampled clients one after the other (``fl_core.learn.client.local_train``,
Opacus for DP-SGD). This module stacks the clients' parameters along a leading client axis and
runs every local step of a whole cohort at once with ``torch.func``: ``functional_call`` of one
model over ``vmap`` across clients (each with its own parameters, data and optimizer state) and,
for DP-SGD, ``vmap`` of ``grad`` across the examples of each client's batch, which gives the
per-example gradients that are clipped (Abadi et al., CCS 2016).

Privacy semantics are those of per-client Opacus DP-SGD (``dp.opacus_adapter``), step for step:

- Poisson sampling per client at q = 1 / ceil(n / batch_size), a fresh Bernoulli(q) draw for each
  example and step (Opacus' ``UniformWithReplacementSampler``); variable batch sizes are handled by
  padding to the largest batch of the step and a 0/1 mask, never by truncation;
- each example's gradient (over all trainable parameters) is scaled by
  min(1, C / (||g|| + 1e-6)) (Opacus' ``DPOptimizer.clip_and_accumulate``), the scaled gradients
  are summed, N(0, (z C)^2) noise is added to the sum, and the result is divided by the expected
  batch size int(n q) (Opacus' ``loss_reduction = "mean"`` convention); empty batches still take a
  noisy step, as in Opacus;
- SGD, SGD with momentum and Adam then step per client, exactly as ``torch.optim`` does;
- the privacy event of a client is ``ComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)``,
  the one the Opacus path records.

Given the same per-client ``torch.Generator`` as the reference path, the cohort draws the same
random numbers in the same order (a 62-bit seed from the client's generator; Poisson masks from a
generator seeded with it, including the one draw a torch ``DataLoader`` makes per epoch; noise
from a generator seeded with it + 1, per parameter in ``named_parameters`` order), so a seeded run
reproduces the reference run up to floating point. Without generators every client gets a fresh
``torch.Generator`` seeded with 63 bits from ``os.urandom``.

Clients that have fewer examples or fewer steps are masked, not padded with fake work: a client
whose steps are done leaves the computation, and nothing any client does depends on another's data
or randomness. The cohort is split into chunks whose estimated memory fits ``memory_budget``.

Per-example gradients through ``vmap`` are only as correct as the model's forward is per-example:
layers that mix the examples of a batch (BatchNorm), keep state (running statistics), draw
randomness (dropout) or have no verified rule are refused with ``UnsupportedLayerError`` naming the
layer, and every call checks on a few real examples that the batched forward equals the per-example
forward. Convolutions run as unfold + matmul (im2col), whose per-example weight gradients batch into
one matrix product; ``vmap``'s rule for native convolutions turns them into grouped convolutions
with one group per example, which is correct but far slower on CPU. Linear layers applied once per
example to a vector never build per-example weight gradients: their norms and clipped sum come from
the layer's input and output gradient (see ``_TapLinear``). docs/cohort.md has the details,
the tests that check each claim against Opacus, and the benchmarks.
"""

from __future__ import annotations

import contextvars
import copy
import enum
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent

from fl_core.learn.client import LocalResult, OptimizerName, SampleDP, _validate
from fl_core.learn.data import as_tensors
from fl_core.errors import FLError, bad_field
from fl_core.learn.params import matches_prefix, named_trainable

__all__ = [
    "Backend",
    "UnsupportedLayerError",
    "CohortResult",
    "ClientPlan",
    "plan_client",
    "check_model",
    "clipped_grad_sum",
    "train_cohort",
    "DEFAULT_MEMORY_BUDGET",
]

#: Bytes one chunk of the cohort may use on CPU (estimated); fixed, so that a seeded run chunks,
#: and therefore rounds, the same way on every machine.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Opacus' guard against division by zero in the clip factor C / (norm + eps).
_CLIP_EPS = 1e-6
#: Examples the forward-consistency check runs on.
_PROBE_EXAMPLES = 4


class Backend(enum.Enum):
    """Which code trains the sampled clients of a round (``local.backend`` in a run config)."""

    OPACUS = "opacus"  # the reference: fl_core.learn.client.local_train client after client (Opacus for DP-SGD)
    COHORT = "cohort"  # this module: the whole cohort at once with torch.func


class UnsupportedLayerError(FLError, ValueError):
    """The model has a layer whose per-example semantics the cohort backend cannot guarantee.

    ``layer`` is the module's dotted name (``"<root>"`` for the model itself) and ``layer_type``
    its class name.
    """

    def __init__(self, message: str, *, layer: str, layer_type: str):
        self.layer = layer
        self.layer_type = layer_type
        super().__init__(message)


# --------------------------------------------------------------------------- model checks

_PARAM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.PReLU,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_FREE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Softmax, nn.LogSoftmax, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_SEQUENCE = (nn.RNNBase, nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer,
             nn.TransformerDecoderLayer)


def _refuse(name: str, module: nn.Module, why: str) -> UnsupportedLayerError:
    shown = name or "<root>"
    return UnsupportedLayerError(
        f"layer {shown!r} ({type(module).__name__}) cannot be trained by the cohort backend: {why}",
        layer=shown, layer_type=type(module).__name__)


def check_model(model: nn.Module, *, dp: bool, allow: Sequence[type[nn.Module]] = ()) -> None:
    """Refuse layers whose per-example gradients under ``vmap`` would not be the model's own.

    Like Opacus' ``ModuleValidator``, but for ``torch.func``: every leaf module must be of a type
    known to treat the examples of a batch independently and keep no state (or be listed in
    ``allow`` by a caller who vouches for it). BatchNorm is refused for DP (it mixes examples, so
    clipping one example's gradient bounds nothing) and without DP (its running statistics are
    per-client state that the cohort does not stack).
    """
    allow = tuple(allow)
    for name, m in model.named_modules():
        if list(m.children()):
            continue  # containers: their own forward is checked on real data by the probe
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise _refuse(name, m, "BatchNorm mixes the examples of a batch, so per-example clipping "
                          "would not bound one example's influence; use GroupNorm or LayerNorm"
                          if dp else "its running statistics are per-client state the cohort does not "
                          "stack; use GroupNorm or LayerNorm, or local.backend = 'opacus'")
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats:
            raise _refuse(name, m, "track_running_stats=True keeps running statistics (per-client state); "
                          "use track_running_stats=False")
        if isinstance(m, allow):
            continue
        if isinstance(m, _DROPOUT):
            raise _refuse(name, m, "dropout masks under vmap come from torch's global generator, which "
                          "would make seeded runs irreproducible; remove it or use local.backend = 'opacus'")
        if isinstance(m, _SEQUENCE):
            raise _refuse(name, m, "no verified per-example rule under vmap for this layer; use "
                          "local.backend = 'opacus' (Opacus' DPLSTM / DPMultiheadAttention)")
        if type(m) not in _PARAM_LAYERS + _FREE_LAYERS:
            raise _refuse(name, m, "not among the layers checked for per-example semantics under vmap; "
                          "pass allow=(its type,) if its forward treats each example independently")


# --------------------------------------------------------------------------- im2col convolutions


def _patches(x: torch.Tensor, k, stride, dilation) -> torch.Tensor:
    """im2col of an already padded (N, C, H, W) input: (N, C*kh*kw, oh*ow).

    A strided view and one copy, much faster on CPU than ``F.unfold``'s kernel.
    """
    span = [dilation[i] * (k[i] - 1) + 1 for i in (0, 1)]
    p = x.unfold(2, span[0], stride[0]).unfold(3, span[1], stride[1])  # (N, C, oh, ow, span0, span1)
    p = p[..., ::dilation[0], ::dilation[1]]
    n, _, oh, ow = p.shape[:4]
    return p.permute(0, 1, 4, 5, 2, 3).reshape(n, -1, oh * ow)


class _Conv2dFn(torch.autograd.Function):
    """conv2d (zero padding ``padding``) computed as im2col + matmul, keeping the columns.

    Under ``vmap`` over clients and examples both the forward and the per-example weight
    gradient (output gradient times the saved columns) batch into matrix products, where
    ``vmap``'s rules for the native convolution run one convolution group per client (forward)
    and per example (weight gradient), which is slow on CPU. The input gradient is the usual
    transposed convolution. Returns (output, columns); the columns carry no gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b, stride, padding, dilation, groups):
        if any(padding):
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        n, o = x.shape[0], w.shape[0]
        cols = _patches(x, w.shape[2:], stride, dilation)               # (N, C*kh*kw, L)
        cols = cols.reshape(n, groups, -1, cols.shape[-1])               # (N, G, C/G*kh*kw, L)
        out = (w.reshape(groups, o // groups, -1) @ cols).reshape(n, o, -1)
        if b is not None:
            out = out + b[:, None]
        span = [dilation[i] * (w.shape[2 + i] - 1) + 1 for i in (0, 1)]
        oh, ow = [(x.shape[2 + i] - span[i]) // stride[i] + 1 for i in (0, 1)]
        return out.reshape(n, o, oh, ow), cols

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, w, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.conf = (stride, padding, dilation, groups, b is not None)

    @staticmethod
    def backward(ctx, g, _):
        x, w, cols = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, w, g, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            n, o = g.shape[:2]
            gw = (g.reshape(n, groups, o // groups, -1) @ cols.transpose(-1, -2)).sum(0).reshape(w.shape)
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None


def _conv_im2col(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` through ``_Conv2dFn`` (Conv1d as a 2-D convolution of height 1)."""
    one_d = isinstance(conv, nn.Conv1d)
    padding = (0,) * len(conv.kernel_size)
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):  # as _ConvNd does: pad, then no padding
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    else:
        padding = tuple(conv.padding)
    w = conv.weight
    stride, dilation = tuple(conv.stride), tuple(conv.dilation)
    if one_d:
        x, w = x.unsqueeze(-2), w.unsqueeze(-2)  # (N, C, L) -> (N, C, 1, L)
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
    out = _Conv2dFn.apply(x, w, conv.bias, stride, padding, dilation, conv.groups)[0]
    return out.squeeze(-2) if one_d else out


class _Im2colConv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv_im2col(self, x)


class _Im2colConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv_im2col(self, x)


class _TapLinear(nn.Linear):
    """nn.Linear that, inside ``_dp_client_fn``, records its input and adds a zero "tap".

    The gradient of the loss with respect to the tap is the layer's output gradient g, so one
    example's weight gradient g a^T never has to be built: its norm is ||g|| ||a|| and the
    clipped sum over examples is one matrix product (Goodfellow 2015, "Efficient per-example
    gradient computations"; Li et al., ICLR 2022, "ghost clipping").
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        state = _TAPS.get()
        if state is not None and self._tap_name in state[1]:
            acts, taps = state
            acts[self._tap_name] = x
            out = out + taps[self._tap_name]
        return out


#: (recorded inputs, taps) of the ``_TapLinear`` layers during one per-example forward.
_TAPS: contextvars.ContextVar[tuple[dict, dict] | None] = contextvars.ContextVar("fl_core_cohort_taps", default=None)


@dataclass(frozen=True)
class _Twin:
    """The model's functional copy and how each trainable parameter gets its per-example gradient.

    ``taps`` maps a ``_TapLinear``'s module name to (weight name, bias name or None, out features)
    for the layers whose per-example input is one vector (eligible for the norm identity above).
    """

    module: nn.Module
    taps: dict[str, tuple[str, str | None, int]]


def _twin(model: nn.Module, device: torch.device) -> nn.Module:
    """A private copy of ``model`` (same parameter names): Conv1d/Conv2d run as im2col, Linear can tap."""
    twin = copy.deepcopy(model).to(device).train()
    for name, m in twin.named_modules():
        if type(m) is nn.Conv2d:
            m.__class__ = _Im2colConv2d
        elif type(m) is nn.Conv1d:
            m.__class__ = _Im2colConv1d
        elif type(m) is nn.Linear:
            m.__class__ = _TapLinear
            m._tap_name = name
    for p in twin.parameters():
        p.requires_grad_(False)  # functional_call supplies the trained values; these are constants
    return twin


def _probe(model: nn.Module, twin: nn.Module, x: torch.Tensor) -> _Twin:
    """Check that the batched forward of ``model`` equals the per-example forward of ``twin``
    under vmap, and find the Linear layers that may use the norm identity: called once per
    example, on a (1, in) input, with a trainable weight (and a trainable bias or none)."""
    entered: list[tuple[str, nn.Module]] = []
    calls: dict[str, list[tuple[int, ...]]] = {}

    def pre(mod, args, name):
        entered.append((name, mod))
        if isinstance(mod, _TapLinear):
            calls.setdefault(name, []).append(tuple(args[0].shape))
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: pre(mod, args, name))
             for name, m in twin.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            ref = model(x.to(next(model.parameters()).device)).to(x.device)
            try:
                per = vmap(lambda xi: twin(xi.unsqueeze(0)).squeeze(0))(x)
            except Exception as e:  # noqa: BLE001 - any vmap failure is reported on the layer it hit
                name, mod = entered[-1] if entered else ("", twin)
                raise _refuse(name, mod, f"its forward fails under torch.func.vmap ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e
    finally:
        for h in hooks:
            h.remove()
    if per.shape != ref.shape or not torch.allclose(per, ref, rtol=1e-4, atol=1e-5):
        raise _refuse("", model, "its batched output differs from its per-example output, so its forward "
                      "mixes the examples of a batch (max difference "
                      f"{float((per - ref).abs().max()) if per.shape == ref.shape else 'shape'})")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    taps = {}
    for name, shapes in calls.items():
        m = twin.get_submodule(name)
        w, b = f"{name}.weight" if name else "weight", f"{name}.bias" if name else "bias"
        if (len(shapes) == 1 and len(shapes[0]) == 2 and shapes[0][0] == 1 and w in trainable
                and (m.bias is None or b in trainable)):
            taps[name] = (w, b if m.bias is not None else None, m.out_features)
    return _Twin(twin, taps)


# --------------------------------------------------------------------------- per-client plan


@dataclass(frozen=True)
class ClientPlan:
    """One client's local training, fixed before it starts.

    ``steps``: optimizer steps; ``batches_per_epoch``: ceil(n / batch_size); with DP-SGD,
    ``sampling_rate`` q = 1 / batches_per_epoch and ``expected_batch`` = int(n q), the divisor
    Opacus uses (floored as Opacus does; 1 where that float product rounds to 0).
    """

    examples: int
    steps: int
    batches_per_epoch: int
    sampling_rate: float | None = None
    expected_batch: int | None = None


def plan_client(n: int, *, batch_size: int, epochs: int | None, steps: int | None, dp: bool) -> ClientPlan:
    """The plan of a client with ``n`` examples (Opacus' rules for q and the expected batch)."""
    nb = math.ceil(n / batch_size)
    total = steps if steps is not None else epochs * nb
    if not dp:
        return ClientPlan(examples=n, steps=total, batches_per_epoch=nb)
    q = 1.0 / nb
    return ClientPlan(examples=n, steps=total, batches_per_epoch=nb, sampling_rate=q,
                      expected_batch=int(n * q) or 1)


# --------------------------------------------------------------------------- the batched step


def _sample_loss_fn(twin: nn.Module, loss_fn: Callable) -> Callable:
    def sample_loss(params, x, y):
        return loss_fn(functional_call(twin, params, (x.unsqueeze(0),)), y.unsqueeze(0))
    return sample_loss


def _dp_client_fn(twin: _Twin, loss_fn: Callable, max_grad_norm: float) -> Callable:
    """One client's clipped per-example gradient sum and summed loss over its (masked) batch.

    Per-example gradients come from ``vmap(grad)`` over the examples; those of tapped Linear
    layers from their output gradient and input (see ``_TapLinear``). The per-example norm is
    over all trainable parameters and the clip factor is Opacus' min(1, C / (norm + 1e-6)).
    """
    tapped = {n for w, b, _ in twin.taps.values() for n in (w, b) if n is not None}

    def sample(small, fixed, taps, x, y):
        acts: dict[str, torch.Tensor] = {}
        token = _TAPS.set((acts, taps))
        try:
            out = functional_call(twin.module, {**small, **fixed}, (x.unsqueeze(0),))
        finally:
            _TAPS.reset(token)
        return loss_fn(out, y.unsqueeze(0)), acts

    def client(params, x, y, valid):
        small = {n: v for n, v in params.items() if n not in tapped}
        fixed = {n: v for n, v in params.items() if n in tapped}
        taps = {m: x.new_zeros(1, out) for m, (_, _, out) in twin.taps.items()}
        (g, g_out), (losses, acts) = vmap(grad_and_value(sample, argnums=(0, 2), has_aux=True),
                                          in_dims=(None, None, None, 0, 0))(small, fixed, taps, x, y)
        b = x.shape[0]
        sq = {n: v.reshape(b, -1).norm(2, dim=-1) ** 2 for n, v in g.items()}
        outs = {m: g_out[m].reshape(b, -1) for m in twin.taps}
        ins = {m: acts[m].reshape(b, -1) for m in twin.taps}
        for m, (w, bias, _) in twin.taps.items():
            go2 = (outs[m] * outs[m]).sum(1)
            sq[w] = go2 * (ins[m] * ins[m]).sum(1)  # ||g a^T||_F^2 = ||g||^2 ||a||^2
            if bias is not None:
                sq[bias] = go2
        norms = torch.stack([sq[n] for n in params], dim=1).sum(1).sqrt()
        factor = (max_grad_norm / (norms + _CLIP_EPS)).clamp(max=1.0) * valid
        summed = {n: torch.einsum("i,i...", factor, v) for n, v in g.items()}
        for m, (w, bias, _) in twin.taps.items():
            scaled = outs[m] * factor[:, None]
            summed[w] = scaled.T @ ins[m]
            if bias is not None:
                summed[bias] = scaled.sum(0)
        return {n: summed[n] for n in params}, (losses * valid).sum()
    return client


def _plain_client_fn(sample_loss: Callable) -> Callable:
    """One client's gradient of the mean loss over the real examples of its (padded) batch."""

    def mean_loss(params, x, y, valid):
        losses = vmap(sample_loss, in_dims=(None, 0, 0))(params, x, y)
        return (losses * valid).sum() / valid.sum().clamp(min=1.0)
    return grad_and_value(mean_loss)


class _Optimizer:
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


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CohortResult:
    """What a cohort's local training produced, client by client in input order.

    ``results[i]`` is client i's ``LocalResult`` (as ``local_train`` returns it; no
    ``opacus_epsilon``); ``personal[i]`` maps the ``exclude``d (personal) parameter names to their
    trained values; ``sampled_examples[i]`` counts the examples its batches held over all steps.
    ``chunk_size`` is the largest chunk trained at once.
    """

    results: tuple[LocalResult, ...]
    personal: tuple[dict[str, torch.Tensor], ...]
    sampled_examples: tuple[int, ...]
    chunk_size: int
    chunks: int


def _materialize(data: Dataset | tuple) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = as_tensors(data)
    if tensors is not None:
        return tensors
    x, y = next(iter(DataLoader(data, batch_size=len(data))))
    return torch.as_tensor(x), torch.as_tensor(y)


def _fresh_generator() -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)


def _activations_per_example(twin: nn.Module, x: torch.Tensor) -> int:
    """Floats one example's forward keeps: outputs of the leaf modules, and the im2col columns
    that the convolutions save for their weight gradients."""
    total = [0]

    def hook(m, args, out):
        total[0] += out.numel() if isinstance(out, torch.Tensor) else 0
        if isinstance(m, (_Im2colConv1d, _Im2colConv2d)):  # C k^2 columns per output position
            total[0] += out[0].numel() // m.out_channels * m.in_channels // m.groups * math.prod(m.kernel_size)
    hooks = [m.register_forward_hook(hook) for m in twin.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            twin(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def _chunk_size(plans: Sequence[ClientPlan], *, dim: int, sample_dim: int, acts: int, batch_size: int,
                dp: bool, budget: int) -> int:
    """Clients per chunk so that the estimate below stays within ``budget`` bytes.

    Per client: parameters, start copy, gradient and up to two optimizer buffers (6 d floats),
    plus per example of its largest likely batch the saved activations and their gradients (2 x)
    and, with DP-SGD, twice the per-example gradient floats (``sample_dim``: untapped parameters,
    plus the input and output of each tapped Linear). The likely Poisson batch is the expectation
    plus 3 standard deviations. Checked against peak RSS on CPU (docs/cohort.md): the CNN at 16
    clients, 1.0 GB estimated, 0.6-0.95 GB measured; the MLP at 256 clients, 70 MB vs 64 MB.
    """
    if dp:
        e = max(p.expected_batch for p in plans)
        b = e + 3 * math.sqrt(e) + 1
        per_example = 2 * acts + 2 * sample_dim
    else:
        b, per_example = batch_size, 2 * acts
    per_client = 4 * (6 * dim + b * per_example)
    return max(1, int(budget // per_client))


# --------------------------------------------------------------------------- training


def clipped_grad_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_grad_norm: float,
                     loss_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """Sum over the batch ``(x, y)`` of the per-example gradients of ``model``'s trainable
    parameters, each clipped to ``max_grad_norm`` (what Opacus stores in ``p.summed_grad``).

    The same code as one client's DP-SGD step in ``train_cohort``, before noise; exposed so that it
    can be checked against Opacus on a given batch.
    """
    device = next(model.parameters()).device
    check_model(model, dp=True)
    twin = _probe(model, _twin(model, device), x[:_PROBE_EXAMPLES])
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters() if p.requires_grad}
    client = _dp_client_fn(twin, loss_fn or F.cross_entropy, float(max_grad_norm))
    summed, _ = vmap(client)(params, x.unsqueeze(0), y.unsqueeze(0), torch.ones(1, len(y), device=device))
    return {n: v[0] for n, v in summed.items()}


def train_cohort(model: nn.Module, datasets: Sequence[Dataset | tuple], *, epochs: int | None = None,
                 steps: int | None = None, optimizer: OptimizerName | str = OptimizerName.SGD, lr: float = 0.1,
                 momentum: float = 0.0, batch_size: int = 32, prox_mu: float = 0.0, exclude: Sequence[str] = (),
                 generators: Sequence[torch.Generator] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 dp: SampleDP | None = None, start: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
                 chunk_size: int | None = None, memory_budget: int | None = None,
                 device: torch.device | str | None = None, allow: Sequence[type[nn.Module]] = ()) -> CohortResult:
    """Train one copy of ``model`` per dataset, all at once; ``model`` itself is not changed.

    Options mean what they mean for ``local_train`` (``dp`` switches on per-client DP-SGD with
    Opacus' semantics; its ``grad_sample_mode``, ``accountant``, ``delta`` and
    ``max_physical_batch_size`` concern Opacus only and are ignored). ``generators``: one CPU
    ``torch.Generator`` per client, used as ``local_train`` uses its ``generator`` (so the same
    generators give the same run); None draws each client's seed from ``os.urandom``.
    ``start[i]``: values for some of client i's parameters (e.g. its personal layers) replacing
    the model's. ``loss_fn(logits, y)`` returns the batch mean (default cross-entropy).
    ``chunk_size`` clients train at once (default: as many as fit ``memory_budget`` bytes, by
    default ``DEFAULT_MEMORY_BUDGET`` on CPU and 60% of the free memory on a GPU); a chunk that
    runs out of GPU memory is retried in halves. ``allow``: extra layer types to accept (see
    ``check_model``).
    """
    opt_name = _validate(epochs, steps, optimizer, lr, momentum, batch_size, prox_mu, dp)
    if dp is not None:
        for name in ("max_grad_norm", "noise_multiplier"):
            v = getattr(dp, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad_field(f"dp.{name}", v, "must be a finite number > 0")
    if isinstance(datasets, (Dataset, tuple)) or not isinstance(datasets, Sequence) or not datasets:
        raise bad_field("datasets", type(datasets).__name__, "must be a non-empty list of client datasets")
    k_all = len(datasets)
    if generators is not None and len(generators) != k_all:
        raise bad_field("generators", f"{len(generators)} generators", f"need one per dataset ({k_all})")
    if start is not None and len(start) != k_all:
        raise bad_field("start", f"{len(start)} entries", f"need one per dataset ({k_all}) or None")
    for name, v in (("chunk_size", chunk_size), ("memory_budget", memory_budget)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad_field(name, v, "must be a positive int or None")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_model(model, dp=dp is not None, allow=allow)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise bad_field("model", type(model).__name__, "has no trainable parameters")
    shared = [n for n, _ in named_trainable(model, exclude=exclude)]
    personal = [n for n, _ in named if matches_prefix(n, tuple(exclude))]
    shapes = {n: p.shape for n, p in named}

    data = [_materialize(d) for d in datasets]
    for i, (x, y) in enumerate(data):
        if len(y) == 0:
            raise bad_field(f"datasets[{i}]", "0 examples", "needs at least one training example")
        if x.shape[1:] != data[0][0].shape[1:]:
            raise bad_field(f"datasets[{i}]", tuple(x.shape[1:]), f"example shape differs from datasets[0]'s "
                            f"{tuple(data[0][0].shape[1:])}")
    if start is not None:
        for i, over in enumerate(start):
            for n, v in (over or {}).items():
                if n not in shapes or tuple(v.shape) != tuple(shapes[n]):
                    raise bad_field(f"start[{i}]", n, f"must name trainable parameters with their shapes "
                                    f"({ {k: tuple(s) for k, s in shapes.items()} })")
    twin = _probe(model, _twin(model, device), data[0][0][:_PROBE_EXAMPLES].to(device))
    plans = [plan_client(len(y), batch_size=batch_size, epochs=epochs, steps=steps, dp=dp is not None)
             for _, y in data]
    gens = list(generators) if generators is not None else [_fresh_generator() for _ in data]

    if chunk_size is None:
        budget = memory_budget
        if budget is None:
            budget = (int(0.6 * torch.cuda.mem_get_info(device)[0]) if device.type == "cuda"
                      else DEFAULT_MEMORY_BUDGET)
        acts = _activations_per_example(twin.module, data[0][0][:1].to(device))
        tapped = {n for w, b, _ in twin.taps.values() for n in (w, b) if n is not None}
        sample_dim = sum(p.numel() for n, p in named if n not in tapped) + sum(
            twin.module.get_submodule(m).in_features + out for m, (_, _, out) in twin.taps.items())
        chunk_size = _chunk_size(plans, dim=sum(p.numel() for _, p in named), sample_dim=sample_dim, acts=acts,
                                 batch_size=batch_size, dp=dp is not None, budget=budget)
        chunk_size = math.ceil(k_all / math.ceil(k_all / chunk_size))  # equal chunks, none larger
    cfg = dict(twin=twin, named=named, shared=shared, personal=personal, opt_name=opt_name, lr=lr,
               momentum=momentum, batch_size=batch_size, prox_mu=prox_mu, loss_fn=loss_fn or F.cross_entropy,
               dp=dp, device=device)
    out: list = [None] * k_all
    i, largest, chunks = 0, 0, 0
    while i < k_all:
        size = min(chunk_size, k_all - i)
        ids = range(i, i + size)
        saved = [gens[j].get_state() for j in ids]
        try:
            res = _train_chunk([data[j] for j in ids], [plans[j] for j in ids], [gens[j] for j in ids],
                               [start[j] if start is not None else None for j in ids], **cfg)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            for j, s in zip(ids, saved):
                gens[j].set_state(s)
            chunk_size = size // 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        out[i:i + size] = res
        i, largest, chunks = i + size, max(largest, size), chunks + 1
    return CohortResult(results=tuple(r[0] for r in out), personal=tuple(r[1] for r in out),
                        sampled_examples=tuple(r[2] for r in out), chunk_size=largest, chunks=chunks)


def _train_chunk(data, plans, gens, start, *, twin, named, shared, personal, opt_name, lr, momentum, batch_size,
                 prox_mu, loss_fn, dp, device):
    """Train the clients of one chunk for all their steps; one result triple per client."""
    k = len(data)
    params = {n: p.detach().to(device).unsqueeze(0).repeat(k, *([1] * p.dim())) for n, p in named}
    for i, over in enumerate(start):
        for n, v in (over or {}).items():
            params[n][i].copy_(v.to(device))
    begin = {n: v.clone() for n, v in params.items()}
    opt = _Optimizer(opt_name, lr=lr, momentum=momentum, params=params)
    xs = torch.cat([x for x, _ in data]).to(device)
    ys = torch.cat([y for _, y in data]).to(device)
    sizes = [len(y) for _, y in data]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.long)
    steps = torch.tensor([p.steps for p in plans])
    loss_sum = torch.zeros(k, dtype=torch.float64)
    drawn = torch.zeros(k, dtype=torch.long)

    if dp is not None:
        client = vmap(_dp_client_fn(twin, loss_fn, float(dp.max_grad_norm)))
        std = float(dp.noise_multiplier) * float(dp.max_grad_norm)
        # As dp.opacus_adapter: a 62-bit seed from the client's generator; sampling from seed,
        # noise from seed + 1 (on the training device).
        seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for g in gens]
        sample_gens = [torch.Generator().manual_seed(s) for s in seeds]
        noise_gens = [torch.Generator(device=device).manual_seed(s + 1) for s in seeds]
        expected = torch.tensor([float(p.expected_batch) for p in plans], device=device)
    else:
        client = vmap(_plain_client_fn(_sample_loss_fn(twin.module, loss_fn)))
        perms: list[torch.Tensor | None] = [None] * k

    for t in range(int(steps.max())):
        rows = torch.nonzero(steps > t).flatten()
        active = rows.tolist()
        idx = []
        for j in active:
            pl = plans[j]
            pos = t % pl.batches_per_epoch  # step within the epoch
            if dp is not None:
                if pos == 0:  # a new DataLoader iterator draws its base seed from the sampling generator
                    torch.empty((), dtype=torch.int64).random_(generator=sample_gens[j])
                mask = torch.rand(pl.examples, generator=sample_gens[j]) < pl.sampling_rate
                idx.append(mask.nonzero().flatten())
            else:
                if pos == 0:  # local_train shuffles each epoch with torch.randperm on its generator
                    perms[j] = torch.randperm(pl.examples, generator=gens[j])
                idx.append(perms[j][pos * batch_size:(pos + 1) * batch_size])
        lens = torch.tensor([len(v) for v in idx])
        width = max(1, int(lens.max()))
        local = torch.zeros(len(active), width, dtype=torch.long)
        if int(lens.max()):
            local[:, :int(lens.max())] = torch.nn.utils.rnn.pad_sequence(idx, batch_first=True)
        valid = torch.arange(width)[None, :] < lens[:, None]
        gidx = torch.where(valid, local + offsets[rows][:, None], offsets[rows][:, None]).to(device)
        valid_f = valid.to(device=device, dtype=xs.dtype)
        sub = None if len(active) == k else rows.to(device)
        p_act = params if sub is None else {n: v[sub] for n, v in params.items()}
        if dp is not None:
            summed, losses = client(p_act, xs[gidx], ys[gidx], valid_f)
            noise = {n: torch.empty_like(v) for n, v in summed.items()}
            for r, j in enumerate(active):  # Opacus' order: parameter by parameter, one generator each
                for n, v in noise.items():
                    torch.normal(0.0, std, size=v.shape[1:], generator=noise_gens[j], out=v[r])
            e = expected[rows.to(device)] if sub is not None else expected
            grads = {n: (summed[n] + noise[n]) / e.reshape(-1, *([1] * (summed[n].dim() - 1))) for n in summed}
            loss_sum[rows] += losses.detach().to("cpu", torch.float64)
        else:
            grads, losses = client(p_act, xs[gidx], ys[gidx], valid_f)
            if prox_mu:  # FedProx (Li et al., MLSys 2020, Eq. 2): gradient of mu/2 ||w - w_start||^2
                b_act = begin if sub is None else {n: v[sub] for n, v in begin.items()}
                for n in shared:
                    grads[n] = grads[n] + prox_mu * (p_act[n] - b_act[n])
            loss_sum[rows] += losses.detach().to("cpu", torch.float64)
        drawn[rows] += lens
        opt.step(params, grads, sub, t)

    upd = torch.cat([(params[n] - begin[n]).reshape(k, -1) for n in shared], dim=1) if shared else \
        torch.zeros(k, 0, device=device)
    upd = upd.detach().to("cpu", torch.float32).numpy()
    out = []
    for i, pl in enumerate(plans):
        if dp is not None:
            loss = float(loss_sum[i] / drawn[i]) if drawn[i] else math.nan
            event = ComposedEvent(PoissonSampledEvent(pl.sampling_rate, GaussianEvent(float(dp.noise_multiplier))),
                                  pl.steps)
        else:
            loss, event = float(loss_sum[i] / pl.steps), None
        res = LocalResult(update=upd[i].copy(), num_examples=pl.examples, num_steps=pl.steps, loss=loss, event=event)
        own = {n: params[n][i].detach().to("cpu").clone() for n in personal}
        out.append((res, own, int(drawn[i])))
    return out
