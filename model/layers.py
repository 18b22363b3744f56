"""Conv2d and Linear layers in three forms: classical, 4-branch BM and 1.5-branch BM.

Classical layers are plain :class:`torch.nn.Conv2d` / :class:`torch.nn.Linear` (valid padding,
stride 1 for convs). The BM forms below have the same constructor geometry, the same ``weight``
and ``bias`` shapes (so a classical layer converts by copying them, formula (2) of the paper), and
a pluggable max approximation ``op`` (:class:`model.maxops.MaxOp`, alpha fixed or learnable).

Conventions shared by both BM forms: a conv weight is ``(O, C, k, k)``, a linear weight ``(O, n)``;
``n`` (``fan_in``) is ``C*k*k`` or ``n``; the branch ``B(u, v) = exp(op_i(ln u_i + ln v_oi))``
is :func:`model.maxops.branch`. With ``op`` the hard max, ``B(u, v) = max_i u_i v_oi``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .maxops import MaxOp, branch

__all__ = [
    "BM4Conv2d",
    "BM4Linear",
    "BM15Conv2d",
    "BM15Linear",
    "BMLayer",
    "BM4Layer",
    "BM15Layer",
    "convert",
    "pow2_ceil",
    "pow2_round",
    "layer_form",
]


def pow2_ceil(x: float) -> float:
    """Smallest power of two ``>= x`` (x > 0)."""
    return 2.0 ** math.ceil(math.log2(x))


def pow2_round(x: float) -> float:
    """Power of two nearest to ``x`` in the log domain (x > 0)."""
    return 2.0 ** round(math.log2(x))


class BMLayer(nn.Module):
    """Common geometry of the BM layers: ``kind`` is ``"conv"`` or ``"linear"``."""

    def __init__(
        self,
        kind: str,
        in_ch: int,
        out_ch: int,
        k: int,
        op: MaxOp | None,
        *,
        stride: int = 1,
        padding: int = 0,
    ):
        super().__init__()
        if kind not in ("conv", "linear"):
            raise ValueError(f"kind must be 'conv' or 'linear', not {kind!r}")
        if kind == "linear" and (k != 1 or stride != 1 or padding != 0):
            raise ValueError("a linear layer has k = 1, stride 1 and no padding")
        if stride < 1 or padding < 0:
            raise ValueError(f"stride must be >= 1 and padding >= 0, not {stride}, {padding}")
        self.kind = kind
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, k
        self.stride, self.padding = int(stride), int(padding)
        shape = (out_ch, in_ch, k, k) if kind == "conv" else (out_ch, in_ch)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        ref = nn.Conv2d(in_ch, out_ch, k) if kind == "conv" else nn.Linear(in_ch, out_ch)
        with torch.no_grad():
            self.weight.copy_(ref.weight)
            self.bias.copy_(ref.bias)
        self.op = op if op is not None else MaxOp("max")

    @property
    def fan_in(self) -> int:
        return self.in_ch * self.k * self.k

    def _bias_shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1) if self.kind == "conv" else t.view(1, -1)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """Zero padding, and for a 1x1 conv the stride (a subsampling of the input)."""
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        if self.stride > 1 and self.k == 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return x

    def post(self, y: torch.Tensor) -> torch.Tensor:
        """The stride of a ``k > 1`` conv: the stride-1 output, subsampled."""
        if self.stride > 1 and self.k > 1:
            y = y[:, :, :: self.stride, :: self.stride]
        return y

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_i x_i`` over each input window of the prepared input (:meth:`prep`):
        ``(B, 1, Ho, Wo)`` (stride 1) or ``(B, 1)``."""
        if self.kind == "linear":
            return x.sum(1, keepdim=True)
        s = x.sum(1, keepdim=True)
        return F.avg_pool2d(s, self.k, stride=1, divisor_override=1)

    def set_op(self, op: MaxOp) -> None:
        self.op = op.to(self.weight.device)

    def extra_repr(self) -> str:
        r = f"kind={self.kind!r}, in_ch={self.in_ch}, out_ch={self.out_ch}, k={self.k}"
        if self.stride != 1 or self.padding:
            r += f", stride={self.stride}, padding={self.padding}"
        return r


class BM4Layer(BMLayer):
    """4-branch BM neuron (eq. 1 of the paper).

    ``y = B(x+, w+) - B(x+, w-) - B(x-, w+) + B(x-, w-) + bias`` with ``x+ = max(x, 0)``,
    ``x- = max(-x, 0)`` and likewise for ``w`` (zero parts are ``ln 0 = -inf``: no term). Branches
    whose input part is all zero (e.g. ``x-`` after a ReLU) are skipped; they are exactly 0.

    Attributes
    ----------
    weight, bias : Parameter
        The classical weight and bias; conversion copies them (formula (2)).
    op : MaxOp
        The max or its approximation, with its alpha.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        x = self.prep(x)
        # both weight parts in one branch call: the branch normalises each output channel by its
        # own largest weight, so stacking w+ over w- changes nothing but halves the input's work
        # (its power, its normalisation) and gives the convolution twice the output channels
        wpn = torch.cat([w.clamp(min=0), (-w).clamp(min=0)], 0)
        o = w.shape[0]
        bp = branch(x.clamp(min=0), wpn, self.op)
        y = bp[:, :o] - bp[:, o:]
        if bool((x < 0).any()):
            bn = branch((-x).clamp(min=0), wpn, self.op)
            y = y - bn[:, :o] + bn[:, o:]
        return self.post(y) + self._bias_shape(self.bias)


class BM15Layer(BMLayer):
    """1.5-branch BM neuron (section 3 of the paper, corrections read as sums).

    (With ``corr_channels`` the coefficient of ``sum x`` is per output channel,
    ``corr_x * 2**e_c``: see :meth:`corr`.)

    ``y = B(x + dx, w_pos) - corr_x * sum_i x_i - corr_w * sum_i w_i - n*dx*dw + bias``

    with ``w_pos = clamp(w + dw, min=dw * w_floor)``. At ``corr_x = dw``, ``corr_w = dx`` and LSE
    with alpha = 1, this is the classical neuron exactly (for ``w > -dw``).

    Attributes
    ----------
    weight : Parameter
        Classical weight ``w``; the branch uses ``w + dw`` clamped to ``>= dw * w_floor``.
    bias : Parameter
        Per-channel bias ``b``.
    dx : buffer, scalar
        Input shift (``x + dx > 0`` for the log). After a ReLU it may be 0 (zero input means
        ``ln 0 = -inf``, the hardware's zero flag).
    dw : buffer, scalar
        Weight shift, a power of two chosen so that ``w + dw > 0`` (see :func:`convert`).
    corr_x : Parameter or buffer, scalar
        Coefficient of the window-sum correction ``corr_x * sum x`` (``dw`` in the paper). The
        integer datapath needs it to be a power of two (a shift): see :meth:`snap_corr`.
    corr_w : Parameter or buffer, scalar
        Coefficient of ``sum_i w_i`` (``dx`` in the paper). It folds into the bias.
    op : MaxOp
        The max or its approximation, with its alpha.
    w_floor : float
        Relative floor of ``w + dw`` (default ``2**-12``).

    :meth:`folded_bias` gives ``bias - corr_w * sum w - n*dx*dw`` per channel, so that
    ``y = B(x + dx, w_pos) - corr_x * sum x + folded_bias``, which is what the integer datapath
    computes (:mod:`model.reference`).
    """

    def __init__(
        self,
        kind,
        in_ch,
        out_ch,
        k,
        op=None,
        *,
        dx: float = 0.0,
        dw: float = 1.0,
        learn_corr: bool = False,
        corr_channels: bool = False,
        w_floor: float = 2.0**-12,
        stride: int = 1,
        padding: int = 0,
    ):
        super().__init__(kind, in_ch, out_ch, k, op, stride=stride, padding=padding)
        if dx < 0:
            raise ValueError(f"dx must be >= 0, not {dx!r}")
        if dw <= 0:
            raise ValueError(f"dw must be > 0, not {dw!r}")
        self.register_buffer("dx", torch.tensor(float(dx)))
        self.register_buffer("dw", torch.tensor(float(dw)))
        self.w_floor = float(w_floor)
        cx, cw = torch.tensor(float(dw)), torch.tensor(float(dx))
        if learn_corr:
            self.corr_x = nn.Parameter(cx)
            self.corr_w = nn.Parameter(cw)
        else:
            self.register_buffer("corr_x", cx)
            self.register_buffer("corr_w", cw)
        # per output channel: corr_x * 2**(CORR_LOG_SCALE * corr_log[c]), integer exponents after
        # snap_corr (one shift each); the scale lets Adam move an exponent by ~1 in a few hundred
        # steps
        self.corr_log = nn.Parameter(torch.zeros(out_ch)) if corr_channels else None

    CORR_LOG_SCALE = 16.0

    def w_pos(self) -> torch.Tensor:
        """The positive weights ``w + dw`` of the branch, clamped."""
        return (self.weight + self.dw).clamp(min=float(self.dw) * self.w_floor)

    def corr(self) -> torch.Tensor:
        """The correction coefficient: ``corr_x``, or per channel ``corr_x * 2**corr_log``
        (shaped to broadcast over the output)."""
        if self.corr_log is None:
            return self.corr_x
        return self._bias_shape(self.corr_x * torch.exp2(self.corr_exponents()))

    def corr_exponents(self) -> torch.Tensor:
        """Per-channel log2 offsets of the correction from ``corr_x`` (zeros without them)."""
        if self.corr_log is None:
            return torch.zeros(self.out_ch, device=self.weight.device)
        return self.CORR_LOG_SCALE * self.corr_log

    def folded_bias(self) -> torch.Tensor:
        red = tuple(range(1, self.weight.dim()))
        sw = self.weight.sum(red)
        return self.bias - self.corr_w * sw - self.fan_in * self.dx * self.dw

    def forward(self, x: torch.Tensor, *, return_parts: bool = False):
        x = self.prep(x)  # padding is zeros of x, before the shift dx
        e = self.post(branch(x + self.dx, self.w_pos(), self.op))
        s = self.post(self.window_sum(x))
        y = e - self.corr() * s + self._bias_shape(self.folded_bias())
        return (y, e, s) if return_parts else y

    def set_dw(self, dw: float) -> None:
        """Change ``dw`` keeping ``w + dw`` (the branch) unchanged."""
        with torch.no_grad():
            self.weight.add_(float(self.dw) - dw)
            self.dw.fill_(dw)

    def snap_corr(self, *, freeze: bool = True) -> float:
        """Round ``corr_x`` to the nearest power of two (in log2); optionally stop learning it."""
        with torch.no_grad():
            v = pow2_round(max(float(self.corr_x.detach()), 1e-30))
            self.corr_x.fill_(v)
            if self.corr_log is not None:
                self.corr_log.copy_(self.corr_exponents().round() / self.CORR_LOG_SCALE)
        if freeze and isinstance(self.corr_x, nn.Parameter):
            self.corr_x.requires_grad_(False)
        if freeze and self.corr_log is not None:
            self.corr_log.requires_grad_(False)
        return v

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", dx={float(self.dx):.3g}, dw={float(self.dw):.3g}"
            + f", corr_x={float(self.corr_x.detach()):.4g}"
        )


def BM4Conv2d(
    in_ch: int, out_ch: int, kernel_size: int, *, op: MaxOp | None = None, **kw
) -> BM4Layer:
    return BM4Layer("conv", in_ch, out_ch, kernel_size, op, **kw)


def BM4Linear(in_features: int, out_features: int, *, op: MaxOp | None = None) -> BM4Layer:
    return BM4Layer("linear", in_features, out_features, 1, op)


def BM15Conv2d(in_ch: int, out_ch: int, kernel_size: int, *, op=None, **kw) -> BM15Layer:
    return BM15Layer("conv", in_ch, out_ch, kernel_size, op, **kw)


def BM15Linear(in_features: int, out_features: int, *, op=None, **kw) -> BM15Layer:
    return BM15Layer("linear", in_features, out_features, 1, op, **kw)


def layer_form(layer: nn.Module) -> str:
    """``"classical"``, ``"bm4"`` or ``"bm15"``."""
    if isinstance(layer, BM15Layer):
        return "bm15"
    if isinstance(layer, BM4Layer):
        return "bm4"
    return "classical"


def _geometry(layer: nn.Module):
    """``(kind, in, out, k, {stride, padding})`` of a conv or linear layer, classical or BM."""
    if isinstance(layer, nn.Conv2d):
        pad, st, ks = layer.padding, layer.stride, layer.kernel_size
        if (
            layer.groups != 1
            or isinstance(pad, str)
            or len({*pad}) != 1
            or len({*st}) != 1
            or ks[0] != ks[1]
            or layer.dilation != (1, 1)
            or layer.padding_mode != "zeros"
        ):
            raise ValueError("only square, undilated, ungrouped, zero-padded convolutions convert")
        geo = {"stride": st[0], "padding": pad[0]}
        return "conv", layer.in_channels, layer.out_channels, ks[0], geo
    if isinstance(layer, nn.Linear):
        return "linear", layer.in_features, layer.out_features, 1, {}
    if isinstance(layer, BMLayer):
        geo = {"stride": layer.stride, "padding": layer.padding} if layer.kind == "conv" else {}
        return layer.kind, layer.in_ch, layer.out_ch, layer.k, geo
    raise TypeError(f"cannot convert {type(layer).__name__}")


def convert(
    layer: nn.Module,
    form: str,
    *,
    op: MaxOp | None = None,
    dx: float = 0.0,
    dw: float | None = None,
    learn_corr: bool = False,
    corr_channels: bool = False,
    dw_margin: float = 1.0,
) -> nn.Module:
    """Convert a trained layer to ``form`` ("classical", "bm4" or "bm15"), keeping weights.

    Formula (2): the weight and bias are copied. For ``"bm15"`` with ``dw=None`` the shift is the
    smallest power of two above ``dw_margin * max(-w)``, so that every ``w + dw > 0``; the
    corrections start at ``corr_x = dw`` and ``corr_w = dx`` (exact at LSE alpha = 1).
    Converting a BM layer to ``"classical"`` copies ``weight`` and the folded bias.
    """
    kind, cin, cout, k, geo = _geometry(layer)
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(cout)
    if form == "classical":
        new = nn.Conv2d(cin, cout, k, **geo) if kind == "conv" else nn.Linear(cin, cout)
        bias = layer.folded_bias().detach() if isinstance(layer, BM15Layer) else b
    elif form == "bm4":
        new = BM4Layer(kind, cin, cout, k, op, **geo)
        bias = b
    elif form == "bm15":
        if dw is None:
            neg = float((-w).max().clamp(min=1e-8))
            dw = pow2_ceil(neg * dw_margin * (1 + 1e-6))
        new = BM15Layer(
            kind,
            cin,
            cout,
            k,
            op,
            dx=dx,
            dw=dw,
            learn_corr=learn_corr,
            corr_channels=corr_channels,
            **geo,
        )
        bias = b
    else:
        raise ValueError(f"form must be 'classical', 'bm4' or 'bm15', not {form!r}")
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(bias)
    return new
