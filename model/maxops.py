"""Max and its continuous approximations, and the morphological "branch" built on them.

A bipolar morphological (BM) neuron replaces ``sum_i u_i v_i`` (``u`` inputs, ``v`` weights, both
``>= 0``) by the *branch* ``exp(op_i(ln u_i + ln v_i))`` where ``op`` is a max or one of its
approximations (METHOD.md section 2). A zero ``u_i`` or ``v_i`` is ``ln 0 = -inf``: that term
takes no part (the hardware's zero flag), and a window with no positive term gives 0.

``op`` for a vector ``z`` and temperature ``alpha``:

- ``"max"``:    ``max_i z_i``. The branch is ``max_i u_i v_i`` (a max-times product).
- ``"lse"``:    ``(1/alpha) ln sum_i exp(alpha z_i)``. The branch is
  ``(sum_i (u_i v_i)^alpha)^(1/alpha)``; at ``alpha = 1`` it is exactly ``sum_i u_i v_i``, the
  classical neuron.
- ``"smorph"``: ``sum_i z_i e^{alpha z_i} / sum_i e^{alpha z_i}`` (softmax-weighted mean of z).
- ``"lmorph"``: the Lehmer mean ``sum_i p_i^(alpha+1) / sum_i p_i^alpha``. It needs positive
  arguments, which the logs ``z`` are not, so it is taken over the products ``p_i = u_i v_i``
  (the branch is the Lehmer mean itself). It also tends to ``max_i p_i``.

All tend to the max as alpha grows. Every smooth form is a ratio of convolutions of powers of ``u``
and ``v``, so :func:`branch` computes it with ``conv2d`` (or a matmul), stabilised: the sample's
``max u`` and the channel's ``max v`` are factored out before raising to ``alpha`` and multiplied
back afterwards, and all-zero windows are masked, so neither overflow nor NaN gradients occur.
The hard max on the CPU uses a native max-times kernel (``model/native/kernels.cc``, built at
first use with the machine's C++ compiler: windows read in place, SIMD over the outputs, argmax
tracked), else ``tropical-gemm``'s max-times product with argmax tracking and a scatter
(``index_add_``) backward. The smooth branches' float64 convolutions (alpha above 4) also run
through native kernels on the CPU, and so do their float32 elementwise chains (powers, the
quotient, the chain rule back to the inputs and alpha), each fused into one pass.
:func:`branch_naive` is the direct unfold-and-reduce definition the fast paths are tested against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KINDS", "MaxOp", "branch", "branch_naive", "maxtimes_conv"]

KINDS = ("max", "lse", "smorph", "lmorph")

try:  # pragma: no cover - exercised whenever the package is installed
    import tropical_gemm as _tg
except ImportError:  # pragma: no cover
    _tg = None

_DEN_MIN_F64 = 1e-290
_DEN_MIN_F32 = 1e-30
_F64_ALPHA = 4.0  # above this alpha, smooth branches are computed in float64
_CHUNK = 1 << 23  # elements of an im2col buffer per tropical-gemm call
_CHUNK_DEV = 1 << 28  # elements of the product tensor per call on an accelerator
_LANES = 16  # native kernels (kernels.cc): output columns are padded to a multiple of this


def _lanes(n: int) -> int:
    return -(-n // _LANES) * _LANES


class MaxOp(nn.Module):
    """A max approximation with its temperature.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    alpha : float
        Temperature (ignored by ``"max"``). Values below ``alpha_min`` are clamped in use.
    learnable : bool
        Make ``alpha`` a trainable scalar parameter (per layer: each layer owns its MaxOp).
    alpha_min : float
        Lower clamp of alpha. 1 keeps the power ``u**alpha`` differentiable at ``u = 0``.
    """

    def __init__(
        self,
        kind: str = "max",
        *,
        alpha: float = 1.0,
        learnable: bool = False,
        alpha_min: float = 1.0,
    ):
        super().__init__()
        self.grad_alpha = 0.0  # "max" in training: > 0 takes the backward of LSE at this alpha
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.alpha_min = float(alpha_min)
        t = torch.tensor(float(alpha))
        if learnable:
            self.alpha_param = nn.Parameter(t)
        else:
            self.register_buffer("alpha_param", t)

    @property
    def alpha(self) -> torch.Tensor:
        return self.alpha_param.clamp(min=self.alpha_min)

    @property
    def learnable(self) -> bool:
        return isinstance(self.alpha_param, nn.Parameter) and self.alpha_param.requires_grad

    def set_alpha(self, alpha: float) -> None:
        with torch.no_grad():
            self.alpha_param.fill_(float(alpha))

    def freeze(self) -> None:
        """Stop learning alpha; keep its current value."""
        if isinstance(self.alpha_param, nn.Parameter):
            self.alpha_param.requires_grad_(False)

    def reduce(self, z: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``op`` applied to log-domain terms ``z`` (``-inf`` allowed) along ``dim``.

        For ``"lmorph"`` the Lehmer mean is taken over ``exp(z)`` and its log returned.
        """
        a = self.alpha.to(z.dtype)
        if self.kind == "max":
            return z.amax(dim)
        if self.kind == "lse":
            return torch.logsumexp(a * z, dim) / a
        m = z.amax(dim, keepdim=True)
        empty = ~torch.isfinite(m.squeeze(dim))  # every term is -inf: the result is -inf
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        zs = torch.where(torch.isfinite(z), z - m, torch.full_like(z, -torch.inf))
        if self.kind == "smorph":
            wts = torch.softmax(a * zs, dim)
            r = torch.where(wts > 0, wts * zs, torch.zeros_like(z)).sum(dim)
        else:
            r = torch.logsumexp((a + 1) * zs, dim) - torch.logsumexp(a * zs, dim)
        r = r + m.squeeze(dim)
        return torch.where(empty, torch.full_like(r, -torch.inf), r)

    def extra_repr(self) -> str:
        if self.kind == "max":
            return "kind='max'"
        a = float(self.alpha.detach())
        return f"kind={self.kind!r}, alpha={a:.4g}, learnable={self.learnable}"


# -- hard max: max-times product through tropical-gemm ----------------------------------------
def _tropical(cols: np.ndarray, pk: np.ndarray):
    if cols.dtype == np.float64:
        c, a = _tg.maxmul_matmul_with_argmax_f64(cols, pk)
    else:
        c, a = _tg.maxmul_matmul_with_argmax(cols, pk)
    return np.asarray(c), np.asarray(a)


def _maxtimes_cols(cols: torch.Tensor, pk: torch.Tensor):
    """``out[m, o] = max_k cols[m, k] * pk[k, o]`` and its argmax over k (int32: ``k`` is an
    im2col column, far below 2**31)."""
    if _tg is not None and cols.device.type == "cpu":
        c, a = _tropical(cols.numpy(), pk.numpy())
        m, o = cols.shape[0], pk.shape[1]
        return torch.from_numpy(c).view(m, o), torch.from_numpy(a).view(m, o)
    # accelerators (and CPUs without tropical-gemm): materialise the products chunk by chunk
    val, arg = (cols[:, :, None] * pk[None]).max(1)
    return val, arg.int()


class _MaxTimesConv(torch.autograd.Function):
    """``y[b, o, i, j] = max_{c,ky,kx} u[b, c, i+ky, j+kx] * v[o, c, ky, kx]`` (valid, stride 1).

    Inputs must be >= 0 and weights > 0. Ties go to one argmax; the gradient flows to it only.
    """

    @staticmethod
    def forward(ctx, u, v):
        b, c, h, w = u.shape
        o, _, k, _ = v.shape
        ho, wo = h - k + 1, w - k + 1
        kk = k * k * c
        uh = u.detach().permute(0, 2, 3, 1).contiguous()
        pk = v.detach().permute(2, 3, 1, 0).reshape(kk, o).contiguous()
        s = uh.stride()
        dev = u.device
        lib = _native_lib(u)
        if lib is not None:  # the native kernel reads the windows in place: no im2col buffer
            op = _lanes(o)
            if op != o:
                pk = F.pad(pk, (0, op - o)).contiguous()
            out = torch.empty(b, ho, wo, op, dtype=u.dtype)
            am = torch.empty(b, ho, wo, op, dtype=torch.int32)
            fwd = lib.maxtimes_forward_f64 if u.dtype == torch.float64 else lib.maxtimes_forward_f32
            fwd(uh.data_ptr(), pk.data_ptr(), out.data_ptr(), am.data_ptr(), b, h, w, c, k, op)
            ctx.save_for_backward(uh, pk, am)
            ctx.shape, ctx.native = (b, c, h, w, k), (lib, o, op)
            return out[..., :o].permute(0, 3, 1, 2)
        ctx.native = None
        out = torch.empty(b, ho, wo, o, dtype=u.dtype, device=dev)
        am = torch.empty(b, ho, wo, o, dtype=torch.int32, device=dev)
        chunk = _CHUNK if dev.type == "cpu" else _CHUNK_DEV // max(1, o)
        step = max(1, chunk // max(1, ho * wo * kk))
        for b0 in range(0, b, step):
            nb = min(step, b - b0)
            view = uh[b0 : b0 + nb].as_strided(
                (nb, ho, wo, k, k, c), (s[0], s[1], s[2], s[1], s[2], s[3])
            )
            val, arg = _maxtimes_cols(view.reshape(nb * ho * wo, kk), pk)
            out[b0 : b0 + nb] = val.view(nb, ho, wo, o)
            am[b0 : b0 + nb] = arg.view(nb, ho, wo, o)
        ctx.save_for_backward(uh, pk, am)
        ctx.shape = (b, c, h, w, k)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g):
        uh, pk, am = ctx.saved_tensors
        b, c, h, w, k = ctx.shape
        if ctx.native is not None:
            return _native_backward(ctx, g, uh, pk, am)
        kk, o = pk.shape
        ho, wo = h - k + 1, w - k + 1
        gh = g.permute(0, 2, 3, 1).contiguous().view(-1)
        dev = g.device
        # int32 indices (an input element, a weight): half the traffic of int64
        it = torch.int32 if b * h * w * c < 2**31 else torch.long

        def ar(n):
            return torch.arange(n, device=dev, dtype=it)

        ky = ar(k).view(k, 1, 1)
        kx = ar(k).view(1, k, 1)
        cc = ar(c).view(1, 1, c)
        off = (ky * (w * c) + kx * c + cc).reshape(kk)
        base = (
            ar(b).view(b, 1, 1, 1) * (h * w * c)
            + ar(ho).view(1, ho, 1, 1) * (w * c)
            + ar(wo).view(1, 1, wo, 1) * c
        )
        # the input element of each output's argmax, and its weight (in pk); index_select
        # takes int32 indices as they are (advanced indexing would widen them to int64)
        idx = (base + off.index_select(0, am.view(-1)).view_as(am)).view(-1)
        kv = (am * o + ar(o).to(am.dtype)).view(-1)
        gu = gv = None
        if ctx.needs_input_grad[0]:
            gu = torch.zeros(b * h * w * c, dtype=g.dtype, device=dev)
            gu.index_add_(0, idx, gh * pk.view(-1).index_select(0, kv))
            gu = gu.view(b, h, w, c).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            gv = torch.zeros(kk * o, dtype=g.dtype, device=dev)
            gv.index_add_(0, kv, gh * uh.view(-1).index_select(0, idx))
            gv = gv.view(k, k, c, o).permute(3, 2, 0, 1)
        return gu, gv


def _native(x: torch.Tensor, *, portable_is_slow: bool):
    """The native kernels for a float32/64 CPU tensor, or ``None``. Below 256-bit SIMD they are
    used only where the portable path is slower still (no tropical-gemm for the hard max)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    from .native import kernels

    lib = kernels()
    if lib is None or (lib.vec_bytes < 32 and not portable_is_slow):
        return None
    return lib


def _native_lib(u: torch.Tensor):
    """The native max-times kernels for ``u``, or ``None`` (tropical-gemm's path)."""
    return _native(u, portable_is_slow=_tg is None)


def _native_backward(ctx, g, uh, pk, am):
    """:class:`_MaxTimesConv`'s backward through the native kernel: each output's gradient goes
    to its argmax's input element and weight, accumulated in one pass."""
    lib, o, op = ctx.native
    b, c, h, w, k = ctx.shape
    gh = g.permute(0, 2, 3, 1).to(uh.dtype).contiguous()
    need_u, need_v = ctx.needs_input_grad[:2]
    gu = torch.zeros(b, h, w, c, dtype=uh.dtype) if need_u else None
    gv = torch.zeros(k * k * c, op, dtype=uh.dtype) if need_v else None
    bwd = lib.maxtimes_backward_f64 if uh.dtype == torch.float64 else lib.maxtimes_backward_f32
    bwd(
        uh.data_ptr(), pk.data_ptr(), am.data_ptr(), gh.data_ptr(),
        gu.data_ptr() if need_u else None, gv.data_ptr() if need_v else None,
        b, h, w, c, k, o, op,
    )  # fmt: skip
    if need_u:
        gu = gu.permute(0, 3, 1, 2)
    if need_v:
        gv = gv[:, :o].reshape(k, k, c, o).permute(3, 2, 0, 1)
    return gu, gv


def maxtimes_conv(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hard-max branch ``max_i u_i v_i`` for a conv (4-D) or linear (2-D) geometry."""
    if u.dim() == 2:
        return _MaxTimesConv.apply(u[:, :, None, None], v[:, :, None, None])[:, :, 0, 0]
    return _MaxTimesConv.apply(u, v)


# -- smooth branches through convolutions -------------------------------------------------------
def _conv(a, b):
    if a.dim() == 2:
        return a @ b.t()
    lib = _native_f64(a, b)
    return _native_conv(lib, a, b) if lib is not None else F.conv2d(a, b)


def _native_f64(x: torch.Tensor, w: torch.Tensor):
    """The native kernels for a float64 convolution on the CPU without autograd (PyTorch's CPU
    float64 convolution has no fast path), or ``None``."""
    if x.dtype != torch.float64 or x.dim() != 4:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return None
    return _native(x, portable_is_slow=False)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _native_conv(lib, x, w):
    """``F.conv2d(x, w)`` (valid, stride 1) through the native float64 kernel. The result is
    made contiguous as PyTorch's is: a channels-last one would change the order, so the rounding,
    of later reductions (a bias gradient) with the batch's layout."""
    b, c, h, wd = x.shape
    o, _, k, _ = w.shape
    op = _lanes(o)
    wk = F.pad(w.permute(2, 3, 1, 0), (0, op - o)).reshape(k * k * c, op).contiguous()
    out = torch.empty(b, h - k + 1, wd - k + 1, op, dtype=x.dtype)
    xh = _nhwc(x)  # held: the kernel reads it after data_ptr() returns
    lib.conv_f64(xh.data_ptr(), wk.data_ptr(), out.data_ptr(), b, h, wd, c, k, op)
    return out[..., :o].permute(0, 3, 1, 2).contiguous()


def _native_conv_backward(lib, g, x, w, need_x: bool, need_w: bool):
    """:func:`_conv_backward` through the native float64 kernels: the input gradient is the
    convolution of the zero-padded ``g`` with the flipped weight, the weight gradient one pass
    over the windows."""
    b, c, h, wd = x.shape
    o, _, k, _ = w.shape
    op = _lanes(o)
    gh = F.pad(g.permute(0, 2, 3, 1), (0, op - o)).contiguous()
    gx = gw = None
    if need_x:
        cp = _lanes(c)
        gpad = F.pad(gh, (0, 0, k - 1, k - 1, k - 1, k - 1)).contiguous()
        wt = F.pad(w.flip(2, 3).permute(2, 3, 0, 1), (0, cp - c, 0, op - o))
        wt = wt.reshape(k * k * op, cp).contiguous()
        out = torch.empty(b, h, wd, cp, dtype=x.dtype)
        hp, wp = gpad.shape[1:3]
        lib.conv_f64(gpad.data_ptr(), wt.data_ptr(), out.data_ptr(), b, hp, wp, op, k, cp)
        gx = out[..., :c].permute(0, 3, 1, 2).contiguous()
    if need_w:
        gwk = torch.zeros(k * k * c, op, dtype=x.dtype)
        xh = _nhwc(x)
        lib.conv_wgrad_f64(xh.data_ptr(), gh.data_ptr(), gwk.data_ptr(), b, h, wd, c, k, op)
        gw = gwk[:, :o].reshape(k, k, c, o).permute(3, 2, 0, 1)
    return gx, gw


def _safe_pow(x, a):
    """``x**a`` for ``x >= 0`` with the value and gradient 0 at ``x = 0``."""
    xs = torch.where(x > 0, x, torch.ones_like(x))
    return torch.where(x > 0, xs**a, torch.zeros_like(x))


def _safe_xlogx_pow(x, a):
    """``x**a * ln x`` with the limit 0 at ``x = 0``."""
    xs = torch.where(x > 0, x, torch.ones_like(x))
    return torch.where(x > 0, xs**a * torch.log(xs), torch.zeros_like(x))


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _conv_backward(g, x, w, need_x: bool, need_w: bool):
    """Input and weight gradients of :func:`_conv` (``x @ w.t()`` or a valid conv2d)."""
    if x.dim() == 2:
        return (g @ w if need_x else None), (g.t() @ x if need_w else None)
    lib = _native_f64(x, w)
    if lib is not None:
        return _native_conv_backward(lib, g, x, w, need_x, need_w)
    gx, gw, _ = torch.ops.aten.convolution_backward(
        g, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x, need_w, False]
    )
    return gx, gw


def _logpos(x):
    """``ln x`` where ``x > 0``, else 0 (paired with a power that is 0 there)."""
    return torch.where(x > 0, x, torch.ones_like(x)).log()


# -- the smooth branch's elementwise chains (powers, masks, the chain rule through them) ---------
def _ew_powers(x, a, kind: str):
    """The powers a branch convolves: ``x^a``; S-morph also ``ln x`` and ``x^a ln x``."""
    p = x.pow(a)
    if kind != "smorph":
        return p, None, None
    lx = _logpos(x)
    return p, lx, p * lx


def _ew_finish(den, num, scale, a, kind: str, den_min: float):
    """The branch from its convolutions: ``den^(1/a)``, ``num/den`` or ``exp(num/den)``, times
    ``scale``; 0 for an empty window. Also the masks the backward needs."""
    ok = den > 0
    dens = torch.where(ok, den, torch.ones_like(den))
    if kind == "lse":
        r = dens.pow(1.0 / a)
    elif kind == "lmorph":
        r = num / dens
    else:
        r = torch.exp(num / dens)
    out = torch.where(ok, r * scale, torch.zeros_like(r))
    return out, dens, den >= den_min, ok


def _ew_grad_out(g, out, dens, num, live, scale, a, kind: str):
    """The gradients of the denominator's and numerator's convolutions (``None``: no numerator)."""
    zero = torch.zeros_like(g)
    if kind == "lse":
        return torch.where(live, g * out / (a * dens), zero), None
    if kind == "lmorph":  # r = num / den
        gnum = torch.where(live, g * scale / dens, zero)
        return torch.where(live, -g * out / dens, zero), gnum
    # r = exp(num / den); den^2 underflows, so divide twice
    gnum = torch.where(live, g * out / dens, zero)
    return torch.where(live, -g * out * (num / dens) / dens, zero), gnum


def _ew_through(x, p, lx, gp, g2, a, kind: str):
    """The chain rule from the powers' gradients ``gp`` (of ``x^a``) and ``g2`` (of ``x^(a+1)``
    for L-morph, of ``x^a ln x`` for S-morph) to ``x``: ``x^a`` gives ``a p / x``, ``x^(a+1)``
    ``(a+1) p``, ``x^a ln x`` ``(p / x)(a ln x + 1)``; 0 where ``x = 0``."""
    xs = torch.where(x > 0, x, torch.ones_like(x))
    d = gp * (a * p / xs)
    if kind == "lmorph":
        d = d + g2 * ((a + 1) * p)
    elif kind == "smorph":
        d = d + g2 * (p / xs) * (a * lx + 1)
    return torch.where(x > 0, d, torch.zeros_like(x))


def _ew_by_alpha(x, p, lx, gp, g2, kind: str):
    """Alpha's gradient through one side's powers: d/da of ``x^a`` is ``x^a ln x``, of
    ``x^(a+1)`` ``x^(a+1) ln x``, of ``x^a ln x`` ``x^a (ln x)^2``."""
    lx = _logpos(x) if lx is None else lx
    d = gp * p * lx
    if kind == "lmorph":
        d = d + g2 * (p * x) * lx
    elif kind == "smorph":
        d = d + g2 * p * lx * lx
    return d.sum()


def _ew_lse_exponent(g, out, dens, ok, a):
    """LSE's alpha gradient through the exponent of ``den^(1/a)`` (held windows too)."""
    return -torch.where(ok, g * out * torch.log(dens), torch.zeros_like(g)).sum() / (a * a)


# -- the same chains through the native kernels (float32 on the CPU, one pass each) -------------
_KIND_CODE = {"lse": 0, "lmorph": 1, "smorph": 2}


def _native_ew(un: torch.Tensor, vn: torch.Tensor):
    """The native elementwise passes for contiguous float32 CPU ``un, vn``, or ``None``."""
    if un.dtype != torch.float32 or not (un.is_contiguous() and vn.is_contiguous()):
        return None
    return _native(un, portable_is_slow=True)


def _ptr(t: torch.Tensor | None):
    """``t``'s data pointer for a native call, or ``None`` (a null pointer) for no tensor."""
    return t.data_ptr() if t is not None else None


def _held(t: torch.Tensor | None):
    """``t`` contiguous (a copy held by the caller until the native call returns), or ``None``."""
    return t.contiguous() if t is not None else None


def _nat_powers(lib, x, a, kind: str):
    """:func:`_ew_powers` in one native pass."""
    p = torch.empty_like(x)
    lx, pl = (torch.empty_like(x), torch.empty_like(x)) if kind == "smorph" else (None, None)
    lib.smooth_powers_f32(
        x.data_ptr(), x.numel(), a, p.data_ptr(), _ptr(lx), _ptr(pl), torch.get_num_threads()
    )  # fmt: skip
    return p, lx, pl


def _geometry(den: torch.Tensor):
    """``B, O, S`` and the batch stride of a conv or linear output whose samples are each
    contiguous (S-morph's ``den`` is half of a two-part convolution's output)."""
    b, o = den.shape[:2]
    s = den[0, 0].numel()
    return b, o, s, den.stride(0)


def _nat_finish(lib, den, num, scale, a, kind: str):
    """:func:`_ew_finish` in one native pass: the output, and ``den`` as the backward wants it
    (it re-derives the masks from ``den``)."""
    if not (den[0].is_contiguous() and den.stride(1) == den[0, 0].numel()):
        den = den.contiguous()
    b, o, s, dstride = _geometry(den)
    out = torch.empty(den.shape, dtype=den.dtype)
    num, scale = _held(num), _held(scale)
    lib.smooth_finish_f32(
        den.data_ptr(), _ptr(num), scale.data_ptr(), b, o, s, dstride, a, _KIND_CODE[kind],
        out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out, den


def _nat_grad_out(lib, g, out, den, num, scale, a, kind: str, lse_alpha: bool):
    """:func:`_ew_grad_out` (and LSE's exponent term) in one native pass. S-morph's two
    gradients are written side by side, as the one convolution against ``[pv, pv ln vn]``
    wants them; returns ``gden, gnum, gcat`` (``gcat``: both, S-morph only) and the term."""
    b, o, s, dstride = _geometry(den)
    g = g.contiguous()
    gcat = None
    if kind == "smorph":
        gcat = torch.empty((b, 2 * o) + tuple(den.shape[2:]), dtype=den.dtype)
        gden, gnum = gcat[:, :o], gcat[:, o:]
        ostride = 2 * o * s
    else:
        gden = torch.empty(den.shape, dtype=den.dtype)
        gnum = torch.empty_like(gden) if kind == "lmorph" else None
        ostride = o * s
    num, scale = _held(num), _held(scale)
    ga = lib.smooth_grad_out_f32(
        g.data_ptr(), out.data_ptr(), den.data_ptr(), _ptr(num), scale.data_ptr(), b, o, s,
        dstride, ostride, a, _DEN_MIN_F32, _KIND_CODE[kind], int(lse_alpha), gden.data_ptr(),
        _ptr(gnum), torch.get_num_threads(),
    )  # fmt: skip
    return gden, gnum, gcat, ga


def _nat_through(lib, x, p, lx, gp, g2, a, kind: str, need_x: bool, need_a: bool):
    """:func:`_ew_through` and :func:`_ew_by_alpha` in one native pass: ``x``'s gradient (or
    ``None``) and alpha's (a float)."""
    gx = torch.empty_like(x) if need_x else None
    gp, g2 = _held(gp), _held(g2)
    ga = lib.smooth_through_f32(
        x.data_ptr(), p.data_ptr(), _ptr(lx), gp.data_ptr(), _ptr(g2), x.numel(), a,
        _KIND_CODE[kind], int(need_a), _ptr(gx), torch.get_num_threads(),
    )  # fmt: skip
    return gx, ga


class _SmoothBranch(torch.autograd.Function):
    """A smooth branch of normalised ``un, vn`` (``<= 1``) at alpha ``at`` (a 0-d tensor, learnable
    or not), times ``scale``, with a hand-written backward (alpha's by the chain rule through
    the powers: ``d x^a / da = x^a ln x``).

    It computes what the generic path of :func:`branch` computes, with the same masks (an empty
    window gives 0; a window whose sum of powers ``den < _DEN_MIN`` keeps its value but passes no
    gradient), and keeps only the powers for the backward: ``a un^(a-1)`` is ``a pu / un``, not a
    second ``pow``. S-morph convolves ``pu`` against ``pv`` and ``pv ln vn`` in one call.
    ``scale`` (and the normalisers behind it) carry no gradient, as in the generic path.
    In float32 on the CPU the elementwise chains run as native passes (``_nat_*``), which keep
    ``den`` itself and re-derive the masks from it.
    """

    @staticmethod
    def forward(ctx, un, vn, at, kind: str, scale):
        a = float(at)
        lib = _native_ew(un, vn)
        if lib is not None:
            (pu, lu, pul), (pv, lv, pvl) = (_nat_powers(lib, x, a, kind) for x in (un, vn))
        else:
            (pu, lu, pul), (pv, lv, pvl) = (_ew_powers(x, a, kind) for x in (un, vn))
        num = None
        if kind == "smorph":
            den, num = _conv(pu, torch.cat([pv, pvl], 0)).split(vn.shape[0], 1)
            num = num + _conv(pul, pv)
        else:
            den = _conv(pu, pv)
            if kind == "lmorph":
                num = _conv(pu * un, pv * vn)
        ctx.a, ctx.kind, ctx.native = a, kind, lib
        if lib is not None:  # the backward re-derives the masks from den
            out, den = _nat_finish(lib, den, num, scale, a, kind)
            ctx.save_for_backward(un, vn, pu, pv, den, num, out, scale, lu, lv, pul, pvl)
            return out
        den_min = _DEN_MIN_F64 if den.dtype == torch.float64 else _DEN_MIN_F32
        out, dens, live, ok = _ew_finish(den, num, scale, a, kind, den_min)
        ctx.save_for_backward(un, vn, pu, pv, dens, num, out, scale, lu, lv, pul, pvl, live, ok)
        return out

    @staticmethod
    def backward(ctx, g):
        un, vn, pu, pv, dens, num, out, scale, lu, lv, pul, pvl, *masks = ctx.saved_tensors
        a, kind, lib = ctx.a, ctx.kind, ctx.native
        need_a = ctx.needs_input_grad[2]
        # alpha's gradient goes through the powers of both sides: compute both
        need_u, need_v = ctx.needs_input_grad[0] or need_a, ctx.needs_input_grad[1] or need_a
        gcat = None
        if lib is not None:  # dens is the raw den here
            lse_a = need_a and kind == "lse"
            gden, gnum, gcat, ga_exp = _nat_grad_out(lib, g, out, dens, num, scale, a, kind, lse_a)
        else:
            live, ok = masks
            gden, gnum = _ew_grad_out(g, out, dens, num, live, scale, a, kind)
        if kind == "lse":
            gpu, gpv = _conv_backward(gden, pu, pv, need_u, need_v)
            gx = {"u": (gpu, None), "v": (gpv, None)}
        elif kind == "lmorph":
            gpu, gpv = _conv_backward(gden, pu, pv, need_u, need_v)
            gpu1, gpv1 = _conv_backward(gnum, pu * un, pv * vn, need_u, need_v)
            gx = {"u": (gpu, gpu1), "v": (gpv, gpv1)}
        else:
            o = vn.shape[0]
            gcat = torch.cat([gden, gnum], 1) if gcat is None else gcat
            gpu, gpvs = _conv_backward(gcat, pu, torch.cat([pv, pvl], 0), need_u, need_v)
            gpul, gpv2 = _conv_backward(gnum, pul, pv, need_u, need_v)
            gpv, gpvl = gpvs.split(o, 0) if need_v else (None, None)
            gpv = gpv + gpv2 if need_v else None
            gx = {"u": (gpu, gpul), "v": (gpv, gpvl)}

        if lib is not None:
            nu, nv = ctx.needs_input_grad[:2]
            gu, ga_u = (
                _nat_through(lib, un, pu, lu, *gx["u"], a, kind, nu, need_a)
                if need_u
                else (None, 0.0)
            )
            gv, ga_v = (
                _nat_through(lib, vn, pv, lv, *gx["v"], a, kind, nv, need_a)
                if need_v
                else (None, 0.0)
            )
            ga = torch.tensor(ga_u + ga_v + ga_exp, dtype=g.dtype) if need_a else None
            return gu, gv, ga, None, None
        ga = None
        if need_a:
            ga = _ew_by_alpha(un, pu, lu, *gx["u"], kind) + _ew_by_alpha(vn, pv, lv, *gx["v"], kind)
            if kind == "lse":  # r = den^(1/a) also through its exponent
                ga = ga + _ew_lse_exponent(g, out, dens, ok, a)
        gu = gv = None
        if ctx.needs_input_grad[0]:
            gu = _ew_through(un, pu, lu, *gx["u"], a, kind)
        if ctx.needs_input_grad[1]:
            gv = _ew_through(vn, pv, lv, *gx["v"], a, kind)
        return gu, gv, ga, None, None


def branch(u: torch.Tensor, v: torch.Tensor, op: MaxOp, *, generic: bool = False) -> torch.Tensor:
    """``exp(op_i(ln u_i + ln v_oi))`` for inputs ``u >= 0`` and weights ``v >= 0``.

    ``u``: ``(B, C, H, W)`` with ``v``: ``(O, C, k, k)`` (valid conv, stride 1), or ``u``:
    ``(B, n)`` with ``v``: ``(O, n)``. Returns ``(B, O, H-k+1, W-k+1)`` or ``(B, O)``.

    Smooth kinds: inputs are divided by each sample's largest input and weights by each output
    channel's largest weight (both detached: the result does not depend on them), raised to alpha,
    convolved, and the scale multiplied back. A window whose terms are all zero (or underflow)
    gives 0 with a zero gradient instead of ``0 * inf``. Above alpha = 4 the arithmetic is float64.
    The normalisation is per sample, not per window (a convolution cannot divide each window by
    its own max), so a window whose largest product is below ``exp(-708 / alpha)`` of the sample's
    ``max u * max v`` underflows to 0: an absolute error below that bound (``1.6e-5`` of the scale
    at alpha = 64, but ``0.25`` at alpha = 512; use the hard max beyond alpha ~ 100). A window
    whose sum of powers is below ``1e-290`` (float64) keeps its value but passes no gradient,
    which would overflow.

    The smooth kinds run through :class:`_SmoothBranch` (hand-written backward, alpha's gradient
    included when it is learnable); ``generic=True`` takes plain autograd instead, the definition
    the tests hold the fused path to.
    """
    if torch.is_autocast_enabled(u.device.type):  # mixed precision: the branch stays exact
        with torch.autocast(u.device.type, enabled=False):
            return branch(_full(u), _full(v), op, generic=generic)
    if op.kind == "max":
        hard = maxtimes_conv(u, v)
        ga = getattr(op, "grad_alpha", 0.0)
        if ga and torch.is_grad_enabled() and (u.requires_grad or v.requires_grad):
            # hard max forward, the LSE's gradient at alpha = grad_alpha backward (training only:
            # the value is the hard max's exactly, so the integer datapath is unchanged)
            soft = branch(u, v, MaxOp("lse", alpha=ga))
            return hard + (soft - soft.detach())
        return hard
    dtype = u.dtype
    a = op.alpha
    if float(a.detach()) > _F64_ALPHA and dtype != torch.float64:
        u, v = u.double(), v.double()
    a = a.to(u.dtype)
    tiny = torch.finfo(u.dtype).tiny
    red_u = tuple(range(1, u.dim()))
    red_v = tuple(range(1, v.dim()))
    mu = u.detach().amax(red_u, keepdim=True).clamp(min=tiny)
    mv = v.detach().amax(red_v, keepdim=True).clamp(min=tiny)
    scale = mu * mv.reshape((1, -1) + (1,) * (u.dim() - 2))
    un, vn = u / mu, v / mv
    if not generic:
        return _SmoothBranch.apply(un, vn, a, op.kind, scale).to(dtype)
    pu, pv = _safe_pow(un, a), _safe_pow(vn, a)
    if op.kind == "smorph":  # one convolution of pu against both pv and pv ln vn
        o = v.shape[0]
        den, num_v = _conv(pu, torch.cat([pv, _safe_xlogx_pow(vn, a)], 0)).split(o, 1)
    else:
        den = _conv(pu, pv)
    ok = den > 0
    # a window far below the sample's scale: ``den ** (1/a)`` has a gradient ``r / (a den)``
    # that overflows (then inf * 0 = NaN further back); such windows keep their value but pass
    # no gradient (their share of the output is below ``_DEN_MIN ** (1/a)`` of the scale)
    tiny_den = den < (_DEN_MIN_F64 if den.dtype == torch.float64 else _DEN_MIN_F32)
    dens = torch.where(ok, torch.where(tiny_den, den.detach(), den), torch.ones_like(den))
    if op.kind == "lse":
        r = dens ** (1 / a)
    else:
        if op.kind == "lmorph":
            num = _conv(_safe_pow(un, a + 1), _safe_pow(vn, a + 1))
        else:  # smorph: exp(sum z e^{az} / sum e^{az})
            num = _conv(_safe_xlogx_pow(un, a), pv) + num_v
        num = torch.where(tiny_den, num.detach(), num)
        r = num / dens if op.kind == "lmorph" else torch.exp(num / dens)
    out = torch.where(ok, r * scale, torch.zeros_like(r))
    return out.to(dtype)


def branch_naive(u: torch.Tensor, v: torch.Tensor, op: MaxOp) -> torch.Tensor:
    """Direct definition of :func:`branch` by unfolding (slow; for tests and small shapes)."""
    lu = torch.log(u)
    lv = torch.log(v)
    if u.dim() == 2:
        z = lu[:, None, :] + lv[None]
        r = op.reduce(z, -1)
        return torch.exp(r)
    b, c, h, w = u.shape
    o, _, k, _ = v.shape
    cols = F.unfold(u, k)  # (B, C*k*k, P)
    z = torch.log(cols)[:, None, :, :] + lv.reshape(1, o, -1, 1)
    r = torch.exp(op.reduce(z, 2))
    return r.view(b, o, h - k + 1, w - k + 1)
