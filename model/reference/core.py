"""The per-image integer reference: one function per stage (see :mod:`model.reference`, whose
documentation is the specification)."""

from __future__ import annotations

import numpy as np

from ..params import BMParams, LayerSpec, MACParams


def as_int(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


# -- stages ------------------------------------------------------------------------------------
def ref_log(p: BMParams, x):
    """Log unit: ``(Lx, zero)`` for activation codes ``x`` (any shape)."""
    x = as_int(x)
    if np.any((x < 0) | (x > p.a_max)):
        raise ValueError(f"activation codes must be in 0..{p.a_max}")
    u = x + p.dx
    zero = u == 0
    uu = np.where(zero, 1, u)
    e = np.floor(np.log2(uu)).astype(np.int64)
    # guard against float rounding of log2 near powers of two
    e = np.where((1 << e) > uu, e - 1, e)
    e = np.where((1 << (e + 1)) <= uu, e + 1, e)
    frac = uu - (1 << e)  # bits below the leading one, e of them
    mb = p.mant_bits
    m = np.where(e >= mb, frac >> np.maximum(e - mb, 0), frac << np.maximum(mb - e, 0))
    table = np.asarray(p.log_table, dtype=np.int64)
    lx = (e << p.log_frac) + table[m]
    lx = np.where(zero, 0, lx)
    return lx, zero


def ref_exp(p: BMParams, m, zero=None):
    """Exp unit: ``2**(M / 2**f)`` as an unsigned, saturating ``exp_bits`` integer."""
    m = as_int(m)
    q = m >> p.log_frac
    r = m & ((1 << p.log_frac) - 1)
    v = np.asarray(p.exp_table, dtype=np.int64)[r]
    s = q - p.exp_table_bits
    # v < 2**(t+1): a left shift beyond exp_bits saturates for sure; clip to keep int64 safe
    # every entry is >= 2**t, so a shift of exp_bits - t or more already saturates
    left = v << np.clip(s, 0, max(0, p.exp_bits - p.exp_table_bits) + 1)
    right = v >> np.clip(-s, 0, 62)
    out = np.where(s >= 0, left, right)
    out = np.minimum(out, p.exp_max)
    if zero is not None:
        out = np.where(as_int(zero) != 0, 0, out)
    return out


def ref_branch(p: BMParams, lx, zx, lw):
    """Max-plus branch: ``(M, zero)`` with ``M[..., c] = max_i (lx[..., i] + lw[c, i])``.

    ``lx``, ``zx``: ``(..., n)`` log codes and zero flags; ``lw``: ``(C, n)`` weight codes.
    """
    lx = as_int(lx)
    zx = np.asarray(zx, dtype=bool)
    lw = as_int(lw)
    if np.any((lw < p.w_log_min) | (lw > p.w_log_max)):
        raise ValueError(f"weight log codes must be in {p.w_log_min}..{p.w_log_max}")
    neg = np.int64(-(1 << 40))
    lxm = np.where(zx, neg, lx)
    # (..., 1, n) + (C, n) -> (..., C, n), chunked over the leading rows to bound memory
    flat = lxm.reshape(-1, lxm.shape[-1])
    out = np.empty((flat.shape[0], lw.shape[0]), dtype=np.int64)
    step = max(1, (1 << 22) // max(1, lw.size))
    for i in range(0, flat.shape[0], step):
        out[i : i + step] = (flat[i : i + step, None, :] + lw[None, :, :]).max(axis=-1)
    out = out.reshape(lxm.shape[:-1] + (lw.shape[0],))
    zero = out < neg // 2
    return np.where(zero, 0, out), zero


def ref_window_sum(x):
    """Input-window sum ``S = sum_i x_i`` over the last axis."""
    return as_int(x).sum(axis=-1)


def ref_correction(p: BMParams, e, s, bias, c_shift: int):
    """``acc = E - (S << c_shift) + bias``, exact.

    ``e``: (..., C); ``s``: (...,); ``bias``: (C,)."""
    if not 0 <= c_shift <= p.max_c_shift:
        raise ValueError(f"c_shift must be in 0..{p.max_c_shift}, not {c_shift!r}")
    return as_int(e) - (as_int(s)[..., None] << c_shift) + as_int(bias)


def ref_requant(p: BMParams | MACParams, acc, shift: int, relu: bool):
    """Rounding arithmetic right shift, then saturation (ReLU codes, or signed logits)."""
    acc = as_int(acc)
    if shift < 0:
        raise ValueError(f"shift must be >= 0, not {shift!r}")
    y = (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc
    if relu:
        return np.clip(y, 0, p.a_max)
    lim = 1 << (p.acc_bits - 1)
    return np.clip(y, -lim, lim - 1)


def ref_maxpool(x, k: int):
    """Non-overlapping ``k x k`` max-pool of a ``(C, H, W)`` code map (floor on the edges)."""
    x = as_int(x)
    if k == 1:
        return x
    c, h, w = x.shape
    h2, w2 = h // k, w // k
    return x[:, : h2 * k, : w2 * k].reshape(c, h2, k, w2, k).max(axis=(2, 4))


def im2col(x, k: int):
    """``(C, H, W)`` -> ``(Ho*Wo, C*k*k)`` patches, valid padding, stride 1.

    Patch order is ``(c, ky, kx)``, matching a flattened ``(O, C, k, k)`` weight; patches go row
    by row. This is the order in which the accelerator streams windows.
    """
    x = as_int(x)
    c, h, w = x.shape
    ho, wo = h - k + 1, w - k + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} is smaller than the kernel {k}x{k}")
    s = x.strides
    view = np.lib.stride_tricks.as_strided(
        x, shape=(ho, wo, c, k, k), strides=(s[1], s[2], s[0], s[1], s[2]), writeable=False
    )
    return view.reshape(ho * wo, c * k * k), (ho, wo)


def _layer_input(spec: LayerSpec, x):
    x = as_int(x)
    if spec.kind == "conv":
        if x.ndim != 3 or x.shape[0] != spec.in_ch:
            raise ValueError(f"conv layer expects ({spec.in_ch}, H, W) codes, not {x.shape}")
        return im2col(x, spec.k)
    flat = x.reshape(-1)
    if flat.size != spec.in_ch:
        raise ValueError(f"linear layer expects {spec.in_ch} inputs, not {flat.size}")
    return flat[None, :], None


def _layer_output(p, spec: LayerSpec, acc, hw):
    y = ref_requant(p, acc, spec.out_shift, spec.relu)
    if spec.kind == "conv":
        ho, wo = hw
        y = y.T.reshape(spec.out_ch, ho, wo)
        if spec.pool > 1:
            y = ref_maxpool(y, spec.pool)
        return y
    return y[0]


def check_sign(spec: LayerSpec, sign) -> np.ndarray:
    if sign is None:
        raise ValueError(f"a {spec.neuron!r} layer needs a sign per weight")
    sign = as_int(sign).reshape(spec.out_ch, spec.fan_in)
    if np.any((sign < 0) | (sign > 1)):
        raise ValueError("weight signs must be 0 or 1")
    return sign


def ref_lns_acc(p: BMParams, lx, zx, lw, sign, bias):
    """``lns`` head: ``acc[..., c] = bias[c] + sum_i (-1)**sign[c, i] * EXP(lx_i + lw[c, i])``.

    ``lx``, ``zx``: ``(..., n)`` log codes and zero flags; ``lw``, ``sign``: ``(C, n)``."""
    lx, lw, sign = as_int(lx), as_int(lw), as_int(sign)
    zx = np.asarray(zx, dtype=bool)
    if np.any((lw < p.w_log_min) | (lw > p.w_log_max)):
        raise ValueError(f"weight log codes must be in {p.w_log_min}..{p.w_log_max}")
    flat_lx = lx.reshape(-1, lx.shape[-1])
    flat_zx = zx.reshape(-1, zx.shape[-1])
    acc = np.empty((flat_lx.shape[0], lw.shape[0]), dtype=np.int64)
    sgn = 1 - 2 * sign  # +1 / -1
    for r in range(flat_lx.shape[0]):
        t = ref_exp(p, flat_lx[r][None, :] + lw, np.broadcast_to(flat_zx[r], lw.shape))
        acc[r] = (sgn * t).sum(axis=1)
    acc = acc + as_int(bias)
    return acc.reshape(lx.shape[:-1] + (lw.shape[0],))


def ref_bm2_acc(p: BMParams, lx, zx, lw, sign, bias):
    """``bm2`` head: ``acc = EXP(M+) - EXP(M-) + bias``, ``M+`` (``M-``) the max-plus branch
    over the weights of sign 0 (1); see the module documentation."""
    sign = np.asarray(sign).astype(bool)
    zx = np.asarray(zx, dtype=bool)
    out = []
    for neg in (False, True):
        # a weight of the other sign is excluded as if its input were flagged
        mask = zx[..., None, :] | (sign != neg)
        lxm = as_int(lx)[..., None, :] + as_int(lw)
        big = np.int64(-(1 << 40))
        mm = np.where(mask, big, lxm).max(axis=-1)
        zm = mm < big // 2
        out.append(ref_exp(p, np.where(zm, 0, mm), zm))
    return out[0] - out[1] + as_int(bias)


def ref_bm_layer(p: BMParams, spec: LayerSpec, x, lw, bias, *, sign=None, return_acc: bool = False):
    """One integer BM layer (``spec.neuron``): codes in, codes (or logits) out."""
    cols, hw = _layer_input(spec, x)
    if np.any((cols < 0) | (cols > p.a_max)):
        raise ValueError(f"activation codes must be in 0..{p.a_max}")
    lw = as_int(lw).reshape(spec.out_ch, spec.fan_in)
    lx, zx = ref_log(p, cols)
    if spec.neuron == "lns":
        acc = ref_lns_acc(p, lx, zx, lw, check_sign(spec, sign), bias)
    elif spec.neuron == "bm2":
        if np.any((lw < p.w_log_min) | (lw > p.w_log_max)):
            raise ValueError(f"weight log codes must be in {p.w_log_min}..{p.w_log_max}")
        acc = ref_bm2_acc(p, lx, zx, lw, check_sign(spec, sign), bias)
    else:
        m, zm = ref_branch(p, lx, zx, lw)
        e = ref_exp(p, m, zm)
        s = ref_window_sum(cols)
        acc = ref_correction(p, e, s, bias, spec.c_shift)
    y = _layer_output(p, spec, acc, hw)
    return (y, acc) if return_acc else y


def ref_mac_layer(p: MACParams, spec: LayerSpec, x, w, bias, *, return_acc: bool = False):
    """One integer MAC layer: ``sum x*w + bias``, then requantization."""
    cols, hw = _layer_input(spec, x)
    if np.any((cols < 0) | (cols > p.a_max)):
        raise ValueError(f"activation codes must be in 0..{p.a_max}")
    w = as_int(w).reshape(spec.out_ch, spec.fan_in)
    if np.any((w < p.w_min) | (w > p.w_max)):
        raise ValueError(f"weights must be in {p.w_min}..{p.w_max}")
    acc = cols @ w.T + as_int(bias)
    lim = 1 << (p.acc_bits - 1)
    if np.any((acc < -lim) | (acc >= lim)):
        raise OverflowError(f"accumulator exceeds {p.acc_bits} bits")
    y = _layer_output(p, spec, acc, hw)
    return (y, acc) if return_acc else y


def ref_network(p, layers, tensors, image, *, trace: bool = False):
    """Run a whole integer network on one ``(C, H, W)`` code image.

    ``layers``: sequence of :class:`LayerSpec`; ``tensors``: per layer a dict with ``"w"``
    (log codes for BM, int weights for MAC) and ``"bias"``. Returns the logits, or with
    ``trace`` the list of every layer's output.
    """
    bm = isinstance(p, BMParams)
    x = as_int(image)
    outs = []
    for spec, t in zip(layers, tensors, strict=True):
        if bm:
            x = ref_bm_layer(p, spec, x, t["w"], t["bias"], sign=t.get("sign"))
        else:
            x = ref_mac_layer(p, spec, x, t["w"], t["bias"])
        outs.append(x)
    return outs if trace else x


def lns_acc_bits(p: BMParams, spec: LayerSpec) -> int:
    """Signed width of the ``lns`` head's accumulator: ``fan_in`` terms of up to ``exp_max``
    either sign, plus the bias, exactly."""
    bound = spec.fan_in * p.exp_max + (1 << (p.bias_bits - 1))
    return bound.bit_length() + 1


def bm2_acc_bits(p: BMParams, spec: LayerSpec) -> int:
    """Signed width of the ``bm2`` head's ``EXP(M+) - EXP(M-) + bias``, exactly."""
    bound = p.exp_max + (1 << (p.bias_bits - 1))
    return bound.bit_length() + 1
