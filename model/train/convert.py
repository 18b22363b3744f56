"""Converting a classical layer to BM, with the least-squares refit of gain, bias, correction."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import BM15Layer, BMLayer
from ..maxops import MaxOp
from ..nets import LeNet
from .config import CORR_MIN, TrainConfig
from .run import Run, load_model

__all__ = ["make_op", "converted", "convert_layer", "refit_layer", "refit_to", "load_teacher",
           "refit_all", "scale_to_init"]


def make_op(cfg: TrainConfig, kind: str | None = None, alpha: float | None = None) -> MaxOp:
    return MaxOp(
        kind or cfg.op, alpha=cfg.alpha if alpha is None else alpha, learnable=cfg.learn_alpha
    )


def converted(cfg: TrainConfig, net: LeNet) -> list[int]:
    """The layers a method converts to BM: all but ``cfg.keep`` (the authors' protocol keeps
    the classifier classical, ``--keep`` its index)."""
    return [i for i in range(len(net.layers)) if i not in cfg.keep]


def convert_layer(cfg: TrainConfig, net: LeNet, i: int, src: nn.Module | None = None):
    op = make_op(cfg)
    op.grad_alpha = cfg.grad_alpha
    kw = {"op": op}
    if cfg.form == "bm15":
        kw.update(dx=cfg.dx, learn_corr=cfg.learn_corr, corr_channels=cfg.corr_channels)
    return net.convert_layer(i, cfg.form, src=src, **kw)


@torch.no_grad()
def refit_layer(
    cfg: TrainConfig, layer: nn.Module, h_in: torch.Tensor, target: torch.Tensor, log=None
) -> None:
    """Least-squares refit of a freshly converted layer to the teacher's pre-activations.

    For a 1.5-BM layer, ``target ~ g_c * E - c * S + b_c`` per output channel ``c`` with ``E`` the
    branch and ``S`` the window sum; ``c`` is shared by the layer (it becomes one shift) and, with
    ``snap_corr``, rounded to a power of two before ``g_c, b_c`` are refitted. The gain ``g_c > 0``
    multiplies the positive weights ``w + dw`` (the max is homogeneous in them), ``b_c`` becomes
    the folded bias. For a 4-BM layer only ``g_c`` and ``b_c`` are fitted. A channel whose
    least-squares gain is ``<= 0`` gets ``1e-3`` (``cfg.refit_gain == "floor"``), which leaves it
    nearly constant and passes almost no gradient to its weights, or the gain that gives its
    branch the target's spread (``"spread"``), which keeps it trainable. ``"auto"`` is ``spread``
    in a layer where most channels have no positive fit (``floor`` would flatten the layer, and
    it could not train), else ``floor`` (its few flattened channels cost less than opposed ones
    kept at full spread).
    """
    bs = 250
    es, ss, ts = [], [], []
    for i in range(0, len(h_in), bs):
        hb = h_in[i : i + bs]
        if isinstance(layer, BM15Layer):
            if layer.kind == "linear":
                hb = hb.flatten(1)
            _, e, s = layer(hb, return_parts=True)
            s = s.expand_as(e)
        else:
            if getattr(layer, "kind", "conv") == "linear":
                hb = hb.flatten(1)
            e = layer(hb) - layer._bias_shape(layer.bias)
            s = torch.zeros_like(e)
        t = target[i : i + bs]
        if e.dim() == 4:
            e, s, t = (a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]) for a in (e, s, t))
        es.append(e.double())
        ss.append(s.double())
        ts.append(t.double())
    e, s, t = torch.cat(es), torch.cat(ss), torch.cat(ts)
    if not bool(torch.isfinite(e).all() and torch.isfinite(t).all()):
        if log:
            log("  refit skipped: non-finite branch outputs or targets")
        return
    if len(e) > 400_000:
        sel = torch.randperm(len(e), generator=torch.Generator().manual_seed(0))[:400_000]
        sel = sel.to(e.device)
        e, s, t = e[sel], s[sel], t[sel]
    is15 = isinstance(layer, BM15Layer)

    def fit_gb(c):
        """Gain and bias per channel for the correction ``c``; also the fraction of channels
        without a positive fit and the rule applied to them."""
        y = t + c * s
        em, ym = e.mean(0), y.mean(0)
        cov = ((e - em) * (y - ym)).mean(0)
        var = ((e - em) ** 2).mean(0).clamp(min=1e-12)
        g = (cov / var).clamp(min=1e-3)
        unfit = float((cov <= 0).double().mean())
        rule = cfg.refit_gain
        if rule == "auto":
            rule = "spread" if unfit > 0.5 else "floor"
        if rule == "spread":  # no positive fit: keep the branch, at the target's spread
            spread = (((y - ym) ** 2).mean(0) / var).sqrt()
            g = torch.where(cov > 0, g, spread.clamp(min=1e-3))
        return g, ym - g * em, unfit, rule

    c = float(layer.corr_x) if is15 else 0.0
    if is15:
        # joint least squares: project t and s off span(e_c, 1) per channel, then solve for c
        em = e.mean(0)
        ec = e - em
        var = (ec * ec).sum(0).clamp(min=1e-12)

        def resid(a):
            a = a - a.mean(0)
            return a - ec * ((ec * a).sum(0) / var)

        tr, sr = resid(t), resid(s)
        c_fit = float(-(tr * sr).sum() / (sr * sr).sum().clamp(min=1e-12))
        # the datapath can only subtract a power of two times S; a fit <= 0 means "as little
        # as possible": the floor CORR_MIN
        c = c_fit if math.isfinite(c_fit) else c
        c = max(c, CORR_MIN)
        if cfg.snap_corr:
            c = 2.0 ** round(math.log2(c))
    g, b, unfit, rule = fit_gb(c)
    err0 = float(((t - e - (-c * s if is15 else 0)) ** 2).mean())
    err = float(((t - g * e + c * s - b) ** 2).mean())
    if is15:
        wp = layer.w_pos()
        shape = (-1,) + (1,) * (wp.dim() - 1)
        layer.weight.copy_(wp * g.float().view(shape) - layer.dw)
        layer.corr_x.fill_(c)
        layer.bias.zero_()
        layer.bias.copy_(b.float() - layer.folded_bias())
    else:
        layer.weight.mul_(g.float().view((-1,) + (1,) * (layer.weight.dim() - 1)))
        layer.bias.copy_(b.float())
    if log:
        log(
            f"  refit: corr_x={c:.4g} gain median={float(g.median()):.3g} "
            f"mse {err0:.4g} -> {err:.4g} (target var {float(t.var()):.4g}); no positive fit "
            f"{unfit:.0%} of channels ({rule})"
        )


@torch.no_grad()
def refit_to(cfg: TrainConfig, net: LeNet, i: int, ref: LeNet, x: torch.Tensor, log=None) -> None:
    """:func:`refit_layer` for layer ``i`` of ``net``: its inputs are ``net``'s own on ``x``,
    its targets the pre-activations of layer ``i`` of ``ref`` (the teacher or the tutor)."""
    refit_layer(
        cfg, net.layers[i], net.run(x, 0, i), ref.run_layer(i, ref.run(x, 0, i), pre=True), log
    )


@torch.no_grad()
def scale_to_init(net: LeNet, ref: LeNet, x: torch.Tensor, log=None) -> None:
    """Scale every 4-BM layer of ``net``, in order, so that its output (before the bias) has the
    spread of ``ref``'s layer (the classical random init it was converted from) on ``net``'s own
    inputs ``x``: one gain per layer on its weights, which a 4-BM branch is homogeneous in. A
    data-driven init in the manner of LSUV (Mishkin and Matas, 2016), with no teacher."""
    h = x
    for i, layer in enumerate(net.layers):
        if isinstance(layer, BMLayer) and not isinstance(layer, BM15Layer):
            target = float(ref.run_layer(i, h, pre=True).std())
            own = float((net.run_layer(i, h, pre=True) - layer._bias_shape(layer.bias)).std())
            if math.isfinite(own) and own > 0 and math.isfinite(target):
                layer.weight.mul_(target / own)
                if log:
                    log(f"  layer {i}: gain {target / own:.3g} (output std {own:.3g} -> "
                        f"{target:.3g})")
            elif log:
                log(f"  layer {i}: no spread to scale (output std {own:.3g}); left as it is")
        h = net.run_layer(i, h)  # the next layer's input, after this one's scaling


def load_teacher(cfg: TrainConfig) -> LeNet:
    if not cfg.teacher:
        raise ValueError(f"method {cfg.method!r} needs --teacher (a model.pt of a classical run)")
    t = load_model(cfg.teacher, cfg.device)
    if any(f != "classical" for f in t.forms):
        raise ValueError(f"teacher {cfg.teacher} is not classical: {t.forms}")
    return t


@torch.no_grad()
def refit_all(run: Run, student: LeNet, teacher: LeNet, data) -> None:
    """Refit every BM layer in order on the student's own inputs (teacher pre-activations)."""
    x = data[0][: run.cfg.refit_images]
    h = x
    for i, layer in enumerate(student.layers):
        t_pre = teacher.run_layer(i, teacher.run(x, 0, i), pre=True)
        if isinstance(layer, BMLayer):
            run.log(f"refit layer {i}")
            refit_layer(run.cfg, layer, h, t_pre, run.log)
        h = student.run_layer(i, h)
