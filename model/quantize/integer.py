"""The integer layers: BM (log weights, shifts, biases, the heads) and the int8 MAC baseline."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..export import NetworkExport
from ..layers import BM15Layer, BMLayer
from ..params import BMParams, LayerSpec, MACParams
from .stages import LayerStats, QuantizeError, Stage, calibrate

__all__ = ["quantize_bm", "head_neuron", "quantize_mac", "quantize"]


def _clip(stats: LayerStats, pct: float) -> float:
    if pct >= 100 or not stats.act:
        return max(stats.act_max, 1e-12)
    return max(float(np.percentile(np.concatenate(stats.act), pct)), 1e-12)


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
    from ..maxops import maxtimes_conv
    from ..reference import batch_bm_layer

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
    sigma = 2.0 ** (pixel_shift - 8)
    layers, tensors, info = [], [], []
    codes = None
    if calib_images is not None:
        x = np.asarray(calib_images)
        codes = (x[:, None] if x.ndim == 3 else x).astype(np.int64) >> pixel_shift
    for li, (st, s) in enumerate(zip(stages, stats, strict=True)):
        m = st.module
        last = li == len(stages) - 1
        if last and head_neuron(st) != "bm15":
            spec, t, inf = _quantize_head(p, st, s, sigma, codes, log_offset=log_offset)
            layers.append(spec)
            tensors.append(t)
            info.append(inf)
            break
        kind, cin, cout, k = st.geometry
        w_pos, fb, cx = _bm_float_layer(li, m, last)
        d = None
        if not last:
            d = math.ceil(math.log2(_clip(s, pct) / (p.a_max * sigma * cx)))
        c, kk, a_acc = _choose_c_shift(p, li, s, w_pos, fb, cx, sigma, d)
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
            codes = _next_codes(p, spec, codes, lw, bias)
        if not last:
            sigma = 2.0**out_shift / a_acc
    return layers, tensors, info


def _bm_float_layer(li: int, m, last: bool):
    """``(w + dw, folded bias, corr_x)`` of a hard-max 1.5-BM layer, or a QuantizeError."""
    if not isinstance(m, BM15Layer):
        raise QuantizeError(
            f"layer {li} is {type(m).__name__}, not a 1.5-BM layer"
            + ("" if last else " (only the classifier may be lns or bm2)")
        )
    if m.op.kind != "max":
        raise QuantizeError(f"layer {li} uses {m.op.kind!r}: the integer datapath is hard max")
    w_pos = m.w_pos().detach().double().numpy().reshape(m.out_ch, -1)
    fb = m.folded_bias().detach().double().numpy()
    cx = float(m.corr_x.detach())
    if not cx > 0:
        raise QuantizeError(f"layer {li}: corr_x must be > 0 for a shift, not {cx}")
    if bool(m.corr_exponents().detach().ne(0).any()):
        raise QuantizeError(
            f"layer {li}: per-channel corrections (--corr-channels) are not in the datapath"
        )
    return w_pos, fb, cx


def _choose_c_shift(p: BMParams, li: int, s, w_pos, fb, cx: float, sigma: float, d):
    """The largest correction shift ``c`` (and its weight scale ``k = 2**c / corr_x`` and
    accumulator scale) whose exp values, weight codes and bias fit their widths."""
    wmax_code = 2.0 ** (p.w_log_max / (1 << p.log_frac))
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
        return c, kk, a_acc
    raise QuantizeError(
        f"layer {li}: no c_shift in 0..{p.max_c_shift} fits exp_bits/w_log_bits/bias_bits"
        f" (e_max={s.e_max:.3g}, corr_x={cx:.3g}, sigma={sigma:.3g}, d={d})"
    )


def _next_codes(p: BMParams, spec: LayerSpec, codes, lw, bias):
    """The integer network's codes after this layer (its calibration inputs for the next)."""
    from ..reference import batch_bm_layer, ref_requant

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
    return np.ascontiguousarray(y)


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
    from ..reference import batch_bm_layer

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
