"""From a trained float network to the integer exports that ``hw/`` builds.

Two targets, both read by :mod:`model.reference`:

- ``bm``: the integer 1.5-branch BM network (a :class:`~model.params.BMParams` preset) from a
  network of :class:`~model.layers.BM15Layer` s with the hard max.
- ``mac``: the int8 multiply-accumulate baseline (a :class:`~model.params.MACParams` preset) from
  the classical teacher (``nn.Conv2d`` / ``nn.Linear``).

Scales
------
Layer ``l`` reads unsigned codes ``x`` standing for float activations ``x * sigma_l``. The input
image's codes are the pixels (``uint8 >> pixel_shift``) and ``sigma_0 = 2**(pixel_shift - 8)``,
since the float nets read ``pixel / 256``. Every layer's accumulator stands for its float
pre-activation ``z`` times ``A_l``; the rounding shift ``out_shift = s`` gives codes
``z * A_l / 2**s``, so ``sigma_{l+1} = 2**s / A_l``.

BM layer. The float layer computes ``z = max_i (x_i + dx) w_pos_i - corr_x * sum_i x_i + fb``
(``fb`` = :meth:`~model.layers.BM15Layer.folded_bias`). With ``k = 2**c_shift / corr_x`` and
``A = k / sigma_l``:

- ``Lw = round(2**f * log2(w_pos * k))`` (clamped to ``w_log_bits``), so the exp unit gives
  ``2**((Lx + Lw) / 2**f) ~ x * w_pos * k = (x * sigma_l) * w_pos * A``;
- the correction ``corr_x * sigma_l * S * A = S << c_shift`` is a shift for any ``corr_x > 0``
  (``k`` absorbs it; a power-of-two ``corr_x`` makes every ``sigma`` a power of two);
- ``bias = round(fb * A)``;
- ``sigma_{l+1} = 2**(s - c_shift) * corr_x * sigma_l``: calibration picks the power of two
  ``d = s - c_shift`` so that the chosen activation percentile on training images maps to
  ``a_max``, then the largest ``c_shift`` (the most accumulator precision) for which the branch
  output, the log weights and the bias stay inside ``exp_bits``, ``w_log_bits`` and ``bias_bits``
  with a factor-2 margin over the calibration maxima.

The float ``dx`` is replaced by the preset's integer ``dx`` (0: a zero code is the log unit's
zero flag); the ``n*dx*dw`` and ``corr_w * sum w`` terms are already in ``fb``.

MAC layer. Weights ``w_int = round(w * 2**q)`` with the per-layer power of two ``2**q`` that maps
``max|w|`` into ``w_bits``; ``A = 2**q / sigma_l``; ``bias = round(b * A)``; the same
activation calibration picks ``d`` with ``sigma_{l+1} = 2**d * sigma_l`` and ``s = q + d``.

The last layer outputs logits with the smallest ``out_shift`` that keeps them inside ``acc_bits``.

If post-training quantization loses more than ``--qat-threshold`` (0.1 pp) of accuracy on the
calibration-held-out images, :func:`qat_finetune` fine-tunes the float network through a
fake-quantized forward (straight-through estimators for rounding, the log unit and the weight
codes), then quantizes again.

CLI: ``python -m model.quantize --checkpoint C --out F --arith bm|mac [--preset P] ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .export import NetworkExport, save_export
from .layers import BM15Layer, BMLayer
from .params import PRESETS, BMParams, LayerSpec, MACParams
from .reference import ref_log, ref_network_batch

__all__ = [
    "QuantizeError",
    "Stage",
    "stages_of",
    "float_forward",
    "calibrate",
    "check_stages",
    "to_float_input",
    "float_logits",
    "quantize_bm",
    "quantize_mac",
    "quantize",
    "int_logits",
    "qat_finetune",
    "main",
]


class QuantizeError(ValueError):
    """The float network cannot be mapped onto the integer datapath as asked."""


# -- the float network as a chain of stages -----------------------------------------------------
@dataclass
class Stage:
    """One weighted layer of the float net and what follows it before the next weighted layer."""

    module: nn.Module
    relu: bool = False
    pool: int = 1

    @property
    def bm(self) -> bool:
        return isinstance(self.module, BMLayer)

    @property
    def geometry(self) -> tuple[str, int, int, int]:
        m = self.module
        if isinstance(m, BMLayer):
            return m.kind, m.in_ch, m.out_ch, m.k
        if isinstance(m, nn.Conv2d):
            if m.stride != (1, 1) or m.padding not in ((0, 0), "valid") or m.groups != 1:
                raise QuantizeError("only valid, stride-1, ungrouped convolutions are supported")
            return "conv", m.in_channels, m.out_channels, m.kernel_size[0]
        return "linear", m.in_features, m.out_features, 1


def _leaves(module: nn.Module):
    children = list(module.children())
    if not children or isinstance(module, (BMLayer, nn.Conv2d, nn.Linear)):
        yield module
        return
    for c in children:
        yield from _leaves(c)


def stages_of(net: nn.Module) -> list[Stage]:
    """The chain of weighted layers of a float net.

    A :class:`model.nets.LeNet` (``net.layers`` and ``net.run_layer``) is read directly. Any
    other net is read as a sequence of leaves in registration order.
    Understood leaves: conv / linear (classical or BM), ``ReLU``, ``MaxPool2d`` (non-overlapping),
    ``Flatten``, ``Identity``, ``Dropout``. Anything else raises :class:`QuantizeError`;
    :func:`check_stages` then proves the chain equal to ``net(x)`` on real inputs.
    """
    layers = getattr(net, "layers", None)
    if isinstance(layers, nn.ModuleList) and hasattr(net, "run_layer"):
        # model.nets.LeNet: ReLU after every layer but the last, flatten before the classifier
        stages = [Stage(m, relu=i < len(layers) - 1) for i, m in enumerate(layers)]
        return stages
    stages = []
    for m in _leaves(net):
        if isinstance(m, (BMLayer, nn.Conv2d, nn.Linear)):
            stages.append(Stage(m))
        elif isinstance(m, nn.ReLU):
            if not stages:
                raise QuantizeError("a ReLU before the first weighted layer")
            stages[-1].relu = True
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            stride = m.stride if isinstance(m.stride, int) else m.stride[0]
            if stride != k or m.padding not in (0, (0, 0)):
                raise QuantizeError("only non-overlapping, unpadded max-pools are supported")
            stages[-1].pool = k
        elif isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)) or type(m) is nn.Module:
            continue
        elif isinstance(m, nn.Module) and not list(m.parameters()) and not list(m.buffers()):
            # parameter-free helper modules (e.g. a MaxOp already reached through its layer)
            raise QuantizeError(f"unsupported layer {type(m).__name__} in the float net")
    if not stages:
        raise QuantizeError("no conv or linear layers found")
    for st in stages[:-1]:
        if not st.relu:
            raise QuantizeError("every hidden layer must end in a ReLU (the integer saturation)")
    if stages[-1].relu or stages[-1].pool != 1:
        raise QuantizeError("the last layer must output raw logits")
    return stages


def _apply(st: Stage, x: torch.Tensor, *, parts: bool = False):
    kind = st.geometry[0]
    if kind == "linear" and x.dim() > 2:
        x = x.flatten(1)
    if isinstance(st.module, BM15Layer):
        z, e, s = st.module(x, return_parts=True)
    else:
        z, e = st.module(x), None
    a = F.relu(z) if st.relu else z
    if st.pool > 1:
        a = F.max_pool2d(a, st.pool)
    return (a, z, e) if parts else a


@torch.no_grad()
def float_forward(stages, x: torch.Tensor) -> torch.Tensor:
    """Run the stage chain on float inputs ``pixel / 256`` ``(B, C, H, W)``."""
    for st in stages:
        x = _apply(st, x)
    return x


def to_float_input(images, pixel_shift: int = 0) -> torch.Tensor:
    """uint8 ``(N, H, W)`` images -> the float net's input ``(N, 1, H, W)``, ``pixel / 256``.

    With ``pixel_shift`` the pixels are first truncated as the integer input is.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    x = (x.astype(np.int64) >> pixel_shift) << pixel_shift
    return torch.from_numpy(x.astype(np.float32) / 256.0)


@torch.no_grad()
def check_stages(net: nn.Module, stages, x: torch.Tensor, tol: float = 1e-4) -> None:
    """Raise :class:`QuantizeError` unless the stage chain reproduces ``net(x)``."""
    want = net(x)
    got = float_forward(stages, x)
    err = float((want - got).abs().max())
    scale = float(want.abs().max()) + 1e-12
    if err > tol * scale:
        raise QuantizeError(f"the stage chain differs from net(x) by {err:.3g} (scale {scale:.3g})")


# -- calibration ---------------------------------------------------------------------------------
@dataclass
class LayerStats:
    act: list = field(default_factory=list)  # subsampled positive activations (hidden layers)
    act_max: float = 0.0
    e_max: float = 0.0  # largest BM branch output
    z_absmax: float = 0.0  # largest |pre-activation|


@torch.no_grad()
def calibrate(stages, images, *, batch: int = 250, sample: int = 20000, seed: int = 0):
    """Float statistics of every layer over calibration images (uint8 ``(N, H, W)``)."""
    rng = np.random.default_rng(seed)
    stats = [LayerStats() for _ in stages]
    for i in range(0, len(images), batch):
        x = to_float_input(images[i : i + batch])
        for st, s in zip(stages, stats, strict=True):
            a, z, e = _apply(st, x, parts=True)
            s.z_absmax = max(s.z_absmax, float(z.abs().max()))
            if e is not None:
                s.e_max = max(s.e_max, float(e.max()))
            if st.relu:
                flat = a.flatten()
                s.act_max = max(s.act_max, float(flat.max()))
                pos = flat[flat > 0].numpy()
                if pos.size:
                    take = min(pos.size, sample)
                    s.act.append(rng.choice(pos, take, replace=False))
            x = a
    return stats


def _clip(stats: LayerStats, pct: float) -> float:
    if pct >= 100 or not stats.act:
        return max(stats.act_max, 1e-12)
    return max(float(np.percentile(np.concatenate(stats.act), pct)), 1e-12)


# -- BM ------------------------------------------------------------------------------------------
def _log_codes(p: BMParams, w_pos: np.ndarray, k: float) -> np.ndarray:
    lw = np.floor((1 << p.log_frac) * np.log2(w_pos * k) + 0.5)
    return np.clip(lw, p.w_log_min, p.w_log_max).astype(np.int64)


def _last_shift(bound: float, acc_bits: int) -> int:
    """Smallest rounding shift keeping ``|acc| <= bound`` inside half the logit range."""
    s = 0
    while bound / 2**s >= 2 ** (acc_bits - 2):
        s += 1
    return s


def _window_sums(spec: LayerSpec, codes: np.ndarray) -> np.ndarray:
    """``S`` per output position, laid out as the reference's accumulators ``(B, Ho, Wo)``."""
    if spec.kind == "linear":
        return codes.reshape(len(codes), -1).sum(1)
    k = spec.k
    xs = codes.sum(1)
    ho, wo = xs.shape[1] - k + 1, xs.shape[2] - k + 1
    s = np.zeros((len(codes), ho, wo), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            s += xs[:, ky : ky + ho, kx : kx + wo]
    return s


@torch.no_grad()
def _branch_gain(p: BMParams, spec: LayerSpec, m: BM15Layer, codes, lw, sigma, a_acc):
    """Per channel ``sum E_int / sum E_float`` of the branch on the layer's integer inputs."""
    from .maxops import maxtimes_conv
    from .reference import batch_bm_layer

    x = torch.from_numpy(codes.astype(np.float64) * sigma)
    if spec.kind == "linear":
        x = x.flatten(1)
    e_f = maxtimes_conv(x, m.w_pos().detach().double()).numpy() * a_acc
    zero_bias = np.zeros(spec.out_ch, dtype=np.int64)
    acc = batch_bm_layer(p, spec, codes, lw, zero_bias)
    s = _window_sums(spec, codes)
    e_i = acc + (s[..., None] << spec.c_shift)  # the exp unit's output E
    if spec.kind == "conv":
        e_f = e_f.transpose(0, 2, 3, 1)
    red = tuple(range(e_i.ndim - 1))
    num, den = e_i.sum(red).astype(np.float64), e_f.sum(red)
    return np.where((den > 0) & (num > 0), num / np.maximum(den, 1e-300), 1.0)


def quantize_bm(
    stages,
    stats,
    p: BMParams,
    *,
    pct: float = 99.99,
    pixel_shift: int = 0,
    calib_images=None,
    log_offset: bool = True,
    offset_iters: int = 2,
):
    """Integer 1.5-BM layers, tensors and per-layer scales from a BM15 float net (hard max).

    With ``log_offset`` and ``calib_images``, each output channel's log weight codes are offset
    by the measured mean log-domain error of the branch on the integer network's own inputs
    (the log unit truncates, so its products are biased low): ``Lw = round(2**f * (log2(w_pos
    * k) - log2 g_c))`` with ``g_c = sum E_int / sum E_float``, still a code of ``w_pos * k'``.
    """
    from .reference import batch_bm_layer, ref_requant

    sigma = 2.0 ** (pixel_shift - 8)
    layers, tensors, info = [], [], []
    codes = None
    if calib_images is not None:
        x = np.asarray(calib_images)
        codes = (x[:, None] if x.ndim == 3 else x).astype(np.int64) >> pixel_shift
    wmax_code = 2.0 ** (p.w_log_max / (1 << p.log_frac))
    for li, (st, s) in enumerate(zip(stages, stats, strict=True)):
        m = st.module
        last = li == len(stages) - 1
        if last and head_neuron(st) != "bm15":
            spec, t, inf = _quantize_head(p, st, s, sigma, codes, log_offset=log_offset)
            layers.append(spec)
            tensors.append(t)
            info.append(inf)
            break
        if not isinstance(m, BM15Layer):
            raise QuantizeError(
                f"layer {li} is {type(m).__name__}, not a 1.5-BM layer"
                + ("" if last else " (only the classifier may be lns or bm2)")
            )
        if m.op.kind != "max":
            raise QuantizeError(f"layer {li} uses {m.op.kind!r}: the integer datapath is hard max")
        kind, cin, cout, k = st.geometry
        w_pos = m.w_pos().detach().double().numpy().reshape(cout, -1)
        fb = m.folded_bias().detach().double().numpy()
        cx = float(m.corr_x.detach())
        if not cx > 0:
            raise QuantizeError(f"layer {li}: corr_x must be > 0 for a shift, not {cx}")
        if bool(m.corr_exponents().detach().ne(0).any()):
            raise QuantizeError(
                f"layer {li}: per-channel corrections (--corr-channels) are not in the datapath"
            )
        last = li == len(stages) - 1
        d = None
        if not last:
            d = math.ceil(math.log2(_clip(s, pct) / (p.a_max * sigma * cx)))
        chosen = None
        for c in range(p.max_c_shift, -1, -1):
            if d is not None and c + d < 0:
                break
            kk = 2.0**c / cx
            a_acc = kk / sigma
            if s.e_max * a_acc * 2 > p.exp_max:
                continue
            if float(w_pos.max()) * kk * 2 ** (1 / (1 << p.log_frac)) > wmax_code:
                continue
            if float(np.abs(fb).max(initial=0)) * a_acc * 2 >= 2 ** (p.bias_bits - 1):
                continue
            chosen = (c, kk, a_acc)
            break
        if chosen is None:
            raise QuantizeError(
                f"layer {li}: no c_shift in 0..{p.max_c_shift} fits exp_bits/w_log_bits/bias_bits"
                f" (e_max={s.e_max:.3g}, corr_x={cx:.3g}, sigma={sigma:.3g}, d={d})"
            )
        c, kk, a_acc = chosen
        if last:
            bound = (s.z_absmax + s.e_max) * a_acc * 2
            out_shift = _last_shift(bound, p.acc_bits)
        else:
            out_shift = c + d
        lw = _log_codes(p, w_pos, kk).reshape(m.weight.shape)
        bias = np.floor(fb * a_acc + 0.5).astype(np.int64)
        spec = LayerSpec(
            kind, cin, cout, k, c_shift=c, out_shift=out_shift, relu=not last, pool=st.pool
        )
        gain = np.ones(cout)
        if log_offset and codes is not None:
            for _ in range(offset_iters):
                g = _branch_gain(p, spec, m, codes, lw, sigma, a_acc)
                gain = gain * g
                lw = _log_codes(p, w_pos / gain[:, None], kk).reshape(m.weight.shape)
        layers.append(spec)
        tensors.append({"w": lw, "bias": bias})
        clipped = int(((w_pos * kk) < 2.0 ** (p.w_log_min / (1 << p.log_frac))).sum())
        info.append(
            {
                "sigma_in": sigma,
                "acc_scale": a_acc,
                "k": kk,
                "corr_x": cx,
                "dx_float": float(m.dx.detach()),
                "w_codes_clamped_low": clipped,
                "log_offset_gain": [float(v) for v in gain],
            }
        )
        if codes is not None and not last:
            acc = batch_bm_layer(p, spec, codes, lw, bias)
            y = ref_requant(p, acc, spec.out_shift, spec.relu).transpose(0, 3, 1, 2)
            if spec.pool > 1:
                n_, c_, h_, w_ = y.shape
                h2, w2 = h_ // spec.pool, w_ // spec.pool
                y = (
                    y[:, :, : h2 * spec.pool, : w2 * spec.pool]
                    .reshape(n_, c_, h2, spec.pool, w2, spec.pool)
                    .max(axis=(3, 5))
                )
            codes = np.ascontiguousarray(y)
        if not last:
            sigma = 2.0**out_shift / a_acc
    return layers, tensors, info


def head_neuron(st: Stage) -> str:
    """The integer neuron of a float classifier: a classical ``nn.Linear`` is the ``lns`` head
    (the log-domain sum computes ``sum w x`` exactly up to the log and exp tables), a 4-branch
    linear layer with the hard max is ``bm2`` (on inputs >= 0 only its two positive-input
    branches are nonzero), a 1.5-branch one is ``bm15``."""
    m = st.module
    if isinstance(m, BM15Layer):
        return "bm15"
    if isinstance(m, BMLayer) and st.geometry[0] == "linear":
        if m.op.kind != "max":
            raise QuantizeError(f"the bm2 classifier uses {m.op.kind!r}: the datapath is hard max")
        return "bm2"
    if isinstance(m, nn.Linear):
        return "lns"
    raise QuantizeError(f"no integer classifier head for {type(m).__name__}")


def _head_terms(p: BMParams, spec: LayerSpec, codes, lw, sign):
    """Integer ``sum_i T_ci`` (lns) or the two branch exps summed (bm2) with every sign
    positive and no bias: the magnitude the head computes, for the log-offset gain."""
    from .reference import batch_bm_layer

    pos = np.zeros_like(sign)
    bias0 = np.zeros(spec.out_ch, dtype=np.int64)
    if spec.neuron == "lns":
        return batch_bm_layer(p, spec, codes, lw, bias0, pos).astype(np.float64)
    # bm2: EXP(M+) + EXP(M-), each branch alone (the other sign's codes pushed to the floor)
    total = 0.0
    for neg in (0, 1):
        lw_b = np.where(sign == neg, lw, p.w_log_min)
        total = total + batch_bm_layer(p, spec, codes, lw_b, bias0, pos).astype(np.float64)
    return total


def _quantize_head(
    p: BMParams, st: Stage, s: LayerStats, sigma: float, codes, *, log_offset: bool = True
):
    """The ``lns`` or ``bm2`` classifier (see :mod:`model.reference`) from a float ``Linear``
    or 4-branch linear layer reading codes of scale ``sigma``.

    Weights become a sign and the log code ``Lw = round(2**f * log2(|w| * k))``. ``k`` is the
    largest power of two for which the largest possible term, ``a_max * max|w| * k``, stays
    below half of ``exp_max`` (no term can saturate) and the log codes and the bias fit their
    widths. The accumulator stands for the float logit times ``A = k / sigma``. With
    ``log_offset``, each class's codes are offset by the measured gain of its integer terms
    against the float products on the calibration codes (the log unit truncates).
    """
    neuron = head_neuron(st)
    m = st.module
    kind, cin, cout, k = st.geometry
    w = m.weight.detach().double().numpy().reshape(cout, -1)
    b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(cout)
    wabs = np.abs(w)
    f = 1 << p.log_frac
    q = math.floor(math.log2((p.exp_max / 2) / (p.a_max * max(float(wabs.max()), 1e-30))))
    q = min(q, math.floor(p.w_log_max / f - math.log2(max(float(wabs.max()), 1e-30))) - 1)
    b_max = float(np.abs(b).max(initial=0))
    while q > -60 and b_max * 2.0**q / sigma * 2 >= 2 ** (p.bias_bits - 1):
        q -= 1
    kk = 2.0**q
    a_acc = kk / sigma
    spec = LayerSpec("linear", cin, cout, 1, c_shift=0, out_shift=0, relu=False, neuron=neuron)
    sign = (w < 0).astype(np.int64)

    def codes_for(gain):
        mag = np.maximum(wabs * kk / gain[:, None], 1e-300)
        return np.clip(np.floor(f * np.log2(mag) + 0.5), p.w_log_min, p.w_log_max).astype(np.int64)

    gain = np.ones(cout)
    lw = codes_for(gain)
    if log_offset and codes is not None:
        flat = codes.reshape(len(codes), -1).astype(np.float64)
        for _ in range(2):
            got = _head_terms(p, spec, codes, lw, sign).sum(0)
            if neuron == "lns":
                want = (flat @ (wabs * kk).T).sum(0)
            else:
                x3 = flat[:, None, :]
                wp, wn = np.where(w > 0, wabs, 0) * kk, np.where(w < 0, wabs, 0) * kk
                want = ((x3 * wp).max(-1) + (x3 * wn).max(-1)).sum(0)
            g = np.where((want > 0) & (got > 0), got / np.maximum(want, 1e-300), 1.0)
            gain = gain * g
            lw = codes_for(gain)
    bias = np.floor(b * a_acc + 0.5).astype(np.int64)
    bound = (s.z_absmax * 2 + float(np.abs(b).max(initial=0))) * a_acc * 2
    spec = LayerSpec(
        "linear",
        cin,
        cout,
        1,
        c_shift=0,
        out_shift=_last_shift(bound, p.acc_bits),
        relu=False,
        neuron=neuron,
    )
    info = {
        "sigma_in": sigma,
        "acc_scale": a_acc,
        "k": kk,
        "neuron": neuron,
        "log_offset_gain": [float(v) for v in gain],
    }
    return spec, {"w": lw, "bias": bias, "sign": sign}, info


# -- MAC -----------------------------------------------------------------------------------------
def quantize_mac(stages, stats, p: MACParams, *, pct: float = 99.99, pixel_shift: int = 0):
    """Integer MAC layers from a classical float net: power-of-two weight and activation scales."""
    sigma = 2.0 ** (pixel_shift - 8)
    layers, tensors, info = [], [], []
    for li, (st, s) in enumerate(zip(stages, stats, strict=True)):
        m = st.module
        if isinstance(m, BMLayer):
            raise QuantizeError(
                f"layer {li} is a BM layer; the MAC baseline needs the classical net"
            )
        kind, cin, cout, k = st.geometry
        w = m.weight.detach().double().numpy()
        b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(cout)
        q = math.floor(math.log2(p.w_max / max(float(np.abs(w).max()), 1e-30)))
        last = li == len(stages) - 1
        d = None
        if not last:
            d = math.ceil(math.log2(_clip(s, pct) / (p.a_max * sigma)))
            q = max(q, -d) if q + d < 0 else q
            if q + d < 0:
                raise QuantizeError(f"layer {li}: negative out_shift")
        while True:
            a_acc = 2.0**q / sigma
            w_int = np.clip(np.floor(w * 2.0**q + 0.5), p.w_min, p.w_max).astype(np.int64)
            bias = np.floor(b * a_acc + 0.5).astype(np.int64)
            w2 = w_int.reshape(cout, -1)
            worst = p.a_max * np.maximum(
                np.where(w2 > 0, w2, 0).sum(1), np.where(w2 < 0, -w2, 0).sum(1)
            ) + np.abs(bias)
            if worst.max() < 2 ** (p.acc_bits - 1) and np.abs(bias).max() < 2 ** (p.bias_bits - 1):
                break
            q -= 1
            if d is not None and q + d < 0:
                raise QuantizeError(f"layer {li}: the accumulator cannot hold this layer")
        if last:
            out_shift = _last_shift(float(worst.max()), p.acc_bits)
        else:
            out_shift = q + d
        layers.append(
            LayerSpec(kind, cin, cout, k, out_shift=out_shift, relu=not last, pool=st.pool)
        )
        tensors.append({"w": w_int, "bias": bias})
        info.append({"sigma_in": sigma, "acc_scale": a_acc, "w_scale_log2": q})
        if not last:
            sigma = 2.0**out_shift / a_acc
    return layers, tensors, info


# -- evaluation helpers ------------------------------------------------------------------------
def int_logits(exp: NetworkExport, images, *, batch: int = 500) -> np.ndarray:
    """Integer logits of uint8 images through the batched reference."""
    codes = exp.codes(images)
    out = [
        ref_network_batch(exp.params, exp.layers, exp.tensors, codes[i : i + batch])
        for i in range(0, len(codes), batch)
    ]
    return np.concatenate(out)


@torch.no_grad()
def float_logits(stages, images, *, batch: int = 500) -> np.ndarray:
    out = [
        float_forward(stages, to_float_input(images[i : i + batch])).numpy()
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out)


# -- quantization-aware fine-tuning ---------------------------------------------------------------
class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx, g):
        return g


def _fq_codes(x, sigma, a_max):
    """Float activations -> codes (rounded, saturated), gradient straight through inside."""
    return _RoundSTE.apply(x / sigma).clamp(0, a_max)


class _LogUnitSTE(torch.autograd.Function):
    """codes -> ``2**(Lx / 2**f)`` from the log unit (exact table), gradient straight through."""

    @staticmethod
    def forward(ctx, codes, table):
        idx = codes.detach().long().clamp(0, table.numel() - 1)
        return table[idx]

    @staticmethod
    def backward(ctx, g):
        return g, None


def fq_forward(stages, spec_layers, infos, p: BMParams, x: torch.Tensor) -> torch.Tensor:
    """Fake-quantized BM forward: codes, log-unit values and log-weight codes as in the reference.

    The max-times branch of the float layer sees ``sigma * 2**(Lx/2**f)`` and
    ``2**(Lw/2**f) / k``, so its product is ``2**((Lx+Lw)/2**f) / A`` exactly; the correction
    sees the codes. Only the exp table's rounding and floor are not modelled.
    """
    codes_all = np.arange(p.a_max + 1)
    lx, zx = ref_log(p, codes_all)
    table = torch.tensor(np.where(zx, 0.0, 2.0 ** (lx / (1 << p.log_frac))), dtype=torch.float32)
    from .maxops import branch

    for st, spec, inf in zip(stages, spec_layers, infos, strict=True):
        m = st.module
        sigma, kk = inf["sigma_in"], inf["k"]
        if spec.kind == "linear" and x.dim() > 2:
            x = x.flatten(1)
        codes = _fq_codes(x, sigma, p.a_max)
        u = _LogUnitSTE.apply(codes, table) * sigma
        if spec.neuron != "bm15":  # the lns / bm2 classifier: signed log-coded weights
            gain = torch.tensor(inf["log_offset_gain"], dtype=m.weight.dtype)[:, None]
            lw = _RoundSTE.apply((1 << p.log_frac) * torch.log2(m.weight.abs() * kk / gain))
            lw = lw.clamp(p.w_log_min, p.w_log_max)
            wq = torch.sign(m.weight) * 2.0 ** (lw / (1 << p.log_frac)) / kk
            if spec.neuron == "lns":
                x = F.linear(u, wq, m.bias)
            else:
                o = wq.shape[0]
                wpn = torch.cat([wq.clamp(min=0), (-wq).clamp(min=0)], 0)
                bp = branch(u, wpn, m.op)
                x = bp[:, :o] - bp[:, o:] + m.bias
            continue
        lw = _RoundSTE.apply((1 << p.log_frac) * torch.log2(m.w_pos() * kk))
        lw = lw.clamp(p.w_log_min, p.w_log_max)
        wq = 2.0 ** (lw / (1 << p.log_frac)) / kk
        e = branch(u, wq, m.op)
        s = m.window_sum(codes * sigma)
        z = e - m.corr_x * s + m._bias_shape(m.folded_bias())
        a = F.relu(z) if st.relu else z
        if st.pool > 1:
            a = F.max_pool2d(a, st.pool)
        x = a
    return x


def qat_finetune(
    stages,
    layers,
    infos,
    p: BMParams,
    x_train,
    y_train,
    *,
    epochs: float = 1.0,
    lr: float = 1e-4,
    batch: int = 64,
    seed: int = 0,
    log=print,
    time_limit: float | None = None,
):
    """Fine-tune the float BM net through the fake-quantized forward (scales held fixed)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [q for st in stages for q in st.module.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps = int(epochs * len(x_train) / batch)
    t0 = time.time()
    for step in range(steps):
        idx = rng.integers(0, len(x_train), batch)
        x = to_float_input(x_train[idx])
        y = torch.from_numpy(y_train[idx].astype(np.int64))
        loss = F.cross_entropy(fq_forward(stages, layers, infos, p, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(
                f"qat step {step}/{steps} loss {float(loss.detach()):.4f} "
                f"({time.time() - t0:.0f} s)"
            )
        if time_limit is not None and time.time() - t0 > time_limit:
            log(f"qat stopped at the time limit after {step + 1} steps")
            break


# -- driver ----------------------------------------------------------------------------------------
def quantize(
    stages,
    x_cal,
    p,
    *,
    preset: str,
    pct: float = 99.99,
    pixel_shift: int = 0,
    metadata: dict | None = None,
    log_offset: bool = True,
    offset_images: int = 500,
) -> NetworkExport:
    stats = calibrate(stages, x_cal)
    if isinstance(p, BMParams):
        layers, tensors, info = quantize_bm(
            stages,
            stats,
            p,
            pct=pct,
            pixel_shift=pixel_shift,
            log_offset=log_offset,
            calib_images=x_cal[:offset_images] if log_offset else None,
        )
    else:
        layers, tensors, info = quantize_mac(stages, stats, p, pct=pct, pixel_shift=pixel_shift)
    meta = dict(metadata or {})
    meta["layer_scales"] = info
    meta["calibration"] = {"images": int(len(x_cal)), "act_percentile": pct}
    return NetworkExport(
        preset=preset,
        params=p,
        layers=tuple(layers),
        tensors=tuple(tensors),
        input_shape=(1,) + tuple(x_cal.shape[1:]),
        pixel_shift=pixel_shift,
        metadata=meta,
    )


def load_float_net(checkpoint: str | Path) -> nn.Module:
    """A trained float net from a checkpoint written by :mod:`model.train`."""
    from .train import load_model

    return load_model(checkpoint)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m model.quantize", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--checkpoint", required=True, help="float checkpoint (model.train)")
    ap.add_argument("--out", required=True, help="export file to write (.npz)")
    ap.add_argument("--arith", choices=("bm", "mac"), required=True)
    ap.add_argument("--preset", default=None,
                    help="params preset (default: bm8f6, the shipped one; mac8)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--calib-images", type=int, default=5000, help="training images to calibrate on"
    )
    ap.add_argument(
        "--val-images",
        type=int,
        default=5000,
        help="held-out training images that decide whether QAT is needed",
    )
    ap.add_argument(
        "--percentiles",
        default="99.9,99.99,100",
        help="activation clip percentiles tried; the best on the held-out images wins",
    )
    ap.add_argument("--qat-threshold", type=float, default=0.1, help="pp of loss that triggers QAT")
    ap.add_argument("--qat-epochs", type=float, default=1.0)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--qat-time-limit", type=float, default=None, help="seconds")
    ap.add_argument("--no-qat", action="store_true")
    ap.add_argument("--test", action="store_true", help="also report the full test set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def _record_test(exp, stages, x_te, y_te) -> None:
    """The float and integer test accuracies and their top-1 agreement, into the export."""
    f_pred = float_logits(stages, x_te).argmax(1)
    i_pred = int_logits(exp, x_te).argmax(1)
    exp.metadata["test"] = {
        "float_accuracy": float((f_pred == y_te).mean()),
        "int_accuracy": float((i_pred == y_te).mean()),
        "agreement": float((f_pred == i_pred).mean()),
        "images": int(len(y_te)),
    }
    exp.aux["float_test_pred"] = f_pred.astype(np.uint8)
    print("test", json.dumps(exp.metadata["test"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from .data import load_mnist

    preset = args.preset or ("bm8f6" if args.arith == "bm" else "mac8")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if (args.arith == "bm") != isinstance(p, BMParams):
        raise ValueError(f"preset {preset!r} is not a {args.arith} preset")
    net = load_float_net(args.checkpoint).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    stages = stages_of(net)
    x_tr, y_tr, x_te, y_te = load_mnist(args.data_dir)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(x_tr))
    cal = x_tr[perm[: args.calib_images]]
    val_idx = perm[args.calib_images : args.calib_images + args.val_images]
    x_val, y_val = x_tr[val_idx], y_tr[val_idx]
    check_stages(net, stages, to_float_input(x_val[:64]))
    pixel_shift = max(0, 8 - p.a_bits)

    def evaluate(exp, xs, ys):
        f_pred = float_logits(stages, xs).argmax(1)
        i_pred = int_logits(exp, xs).argmax(1)
        return (
            float((f_pred == ys).mean()),
            float((i_pred == ys).mean()),
            float((i_pred == f_pred).mean()),
        )

    ck = Path(args.checkpoint).resolve()
    root = Path(__file__).resolve().parent.parent
    ck_name = str(ck.relative_to(root)) if ck.is_relative_to(root) else str(ck)
    meta = {
        "checkpoint": ck_name,
        "arith": args.arith,
        "seed": args.seed,
        "command": "python -m model.quantize " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    best = None
    for pct in (float(v) for v in args.percentiles.split(",")):
        exp = quantize(
            stages, cal, p, preset=preset, pct=pct, pixel_shift=pixel_shift, metadata=meta
        )
        fa, ia, ag = evaluate(exp, x_val, y_val)
        print(f"pct {pct}: held-out float {fa:.4f} integer {ia:.4f} agreement {ag:.4f}")
        if best is None or ia > best[1]:
            best = (pct, ia, fa, exp)
    pct, ia, fa, exp = best
    if args.arith == "bm" and not args.no_qat and (fa - ia) * 100 > args.qat_threshold:
        print(f"PTQ loses {(fa - ia) * 100:.2f} pp > {args.qat_threshold}: QAT fine-tuning")
        for q in net.parameters():
            q.requires_grad_(True)
        for st in stages:
            if hasattr(st.module, "dw"):
                st.module.dx.requires_grad_(False)
        net.train()
        qat_finetune(
            stages,
            exp.layers,
            exp.metadata["layer_scales"],
            p,
            x_tr[perm[args.calib_images + args.val_images :]],
            y_tr[perm[args.calib_images + args.val_images :]],
            epochs=args.qat_epochs,
            lr=args.qat_lr,
            seed=args.seed,
            time_limit=args.qat_time_limit,
        )
        net.eval()
        # the fine-tuned float model is the export's float reference from now on
        from .train import net_to_dict

        qat_ck = Path(args.out).with_suffix(".qat.pt")
        torch.save(net_to_dict(net), qat_ck)
        qat_ck = qat_ck.resolve()
        meta["checkpoint"] = (
            str(qat_ck.relative_to(root)) if qat_ck.is_relative_to(root) else (str(qat_ck))
        )
        meta["qat"] = {"epochs": args.qat_epochs, "lr": args.qat_lr, "from": ck_name}
        exp = quantize(
            stages, cal, p, preset=preset, pct=pct, pixel_shift=pixel_shift, metadata=meta
        )
        fa, ia, ag = evaluate(exp, x_val, y_val)
        print(f"after QAT: held-out float {fa:.4f} integer {ia:.4f} agreement {ag:.4f}")
    exp.metadata["heldout"] = {"float_accuracy": fa, "int_accuracy": ia, "images": len(x_val)}
    if args.test:
        _record_test(exp, stages, x_te, y_te)
    written = save_export(args.out, exp)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes, sha256 {written.checksum})")
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run("model.quantize", main))
