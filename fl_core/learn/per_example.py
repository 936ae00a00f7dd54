"""Per-example gradients under ``torch.func.vmap``: which layers are safe, and the functional twin.

The cohort trainer (``fl_core.learn.cohort``) runs each client's per-example gradients through
``vmap``. That is only as correct as the model's forward is per-example, so ``check_model`` refuses
layers that mix the examples of a batch, keep state, draw randomness or have no verified rule, and
``make_twin`` checks on real examples that the batched forward equals the per-example forward.
The twin runs convolutions as im2col + matmul (``vmap`` turns native ones into one group per
example, slow on CPU) and lets Linear layers applied once per example skip per-example weight
gradients (``_TapLinear``). ``dp_client_fn`` and ``plain_client_fn`` are one client's step.
"""

from __future__ import annotations

import contextvars
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from fl_core.errors import FLError

__all__ = ["UnsupportedLayerError", "check_model", "Twin", "make_twin", "dp_client_fn", "plain_client_fn",
           "sample_loss_fn", "activations_per_example", "PROBE_EXAMPLES"]

#: Opacus' guard against division by zero in the clip factor C / (norm + eps).
_CLIP_EPS = 1e-6
#: Examples the forward-consistency check runs on.
PROBE_EXAMPLES = 4


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
class Twin:
    """The model's functional copy and how each trainable parameter gets its per-example gradient.

    ``taps`` maps a ``_TapLinear``'s module name to (weight name, bias name or None, out features)
    for the layers whose per-example input is one vector (eligible for the norm identity above).
    """

    module: nn.Module
    taps: dict[str, tuple[str, str | None, int]]

    @property
    def tapped(self) -> set[str]:
        """Parameter names whose per-example gradients come from the norm identity."""
        return {n for w, b, _ in self.taps.values() for n in (w, b) if n is not None}


def make_twin(model: nn.Module, device: torch.device, probe_x: torch.Tensor | None) -> Twin:
    """``model``'s twin on ``device``, checked on ``probe_x`` (a few real examples; None: unchecked,
    nothing tapped: only for testing the layers themselves)."""
    twin = _copy_twin(model, device)
    return Twin(twin, {}) if probe_x is None else _probe(model, twin, probe_x)


def _copy_twin(model: nn.Module, device: torch.device) -> nn.Module:
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


def _probe(model: nn.Module, twin: nn.Module, x: torch.Tensor) -> Twin:
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
    return Twin(twin, taps)



# --------------------------------------------------------------------------- the batched step


def sample_loss_fn(twin: nn.Module, loss_fn: Callable) -> Callable:
    def sample_loss(params, x, y):
        return loss_fn(functional_call(twin, params, (x.unsqueeze(0),)), y.unsqueeze(0))
    return sample_loss


def dp_client_fn(twin: Twin, loss_fn: Callable, max_grad_norm: float) -> Callable:
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


def plain_client_fn(sample_loss: Callable) -> Callable:
    """One client's gradient of the mean loss over the real examples of its (padded) batch."""

    def mean_loss(params, x, y, valid):
        losses = vmap(sample_loss, in_dims=(None, 0, 0))(params, x, y)
        return (losses * valid).sum() / valid.sum().clamp(min=1.0)
    return grad_and_value(mean_loss)


def activations_per_example(twin: nn.Module, x: torch.Tensor) -> int:
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

