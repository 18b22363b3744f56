"""Bit-exact NumPy reference of integer 1.5-branch BM inference and of the int8 MAC baseline.

NumPy only: no torch. This is the golden model. The RTL in ``hw/`` may only do what these
functions do, and these functions only do what adders, comparators, shifts and two small tables
can do. Every stage is a separate function (``ref_log``, ``ref_exp``, ``ref_branch``,
``ref_correction``, ``ref_requant``, ``ref_bm_layer``) so that tests can compare stage by stage.

Integer 1.5-branch BM inference (``p`` is a :class:`model.params.BMParams`)
--------------------------------------------------------------------------
Activations are unsigned codes ``x`` in ``0 .. 2**a_bits - 1``. A float activation is
``x * 2**-e`` for a per-layer power-of-two scale.

1. **Log unit.** ``u = x + dx``. If ``u == 0`` the zero flag is set (log is minus infinity) and
   ``Lx = 0``. Otherwise ``e`` is the position of the leading one of ``u`` (``u_bits`` wide), the
   bits below it are left-aligned and truncated to ``mant_bits`` bits ``m`` (zero-filled when
   fewer exist), and ``Lx = e * 2**f + LOG[m]`` with
   ``LOG[m] = round(2**f * log2(1 + m/2**mant_bits))``.
   ``Lx`` is unsigned, ``lx_bits`` wide, ``f = log_frac`` fractional bits.
2. **Weights** are stored as signed ``w_log_bits`` codes ``Lw = round(2**f * log2((w + dw) * k))``
   where ``k`` folds the layer's power-of-two scales (chosen by quantization), clamped to the
   code range. The most negative code is an ordinary value, not minus infinity.
3. **Branch.** ``M = max_i (Lx_i + Lw_i)`` over the inputs whose zero flag is clear. If every
   input of the window is flagged, the branch is flagged (its exp is 0).
4. **Exp unit.** ``q = M >> f`` (floor), ``r = M & (2**f - 1)``, ``v = EXP[r]`` with
   ``EXP[r] = round(2**t * 2**(r/2**f))``, ``t = exp_table_bits``. The result is
   ``v << (q - t)`` when ``q >= t`` and ``v >> (t - q)`` (floor) otherwise, saturated to
   ``2**exp_bits - 1``. A flagged branch gives 0.
5. **Correction.** ``S = sum_i x_i`` (the raw codes, over the same window); ``dw`` is a power of
   two, so ``dw * sum x`` in accumulator units is ``S << c_shift``. The terms
   ``dx * sum w + n*dx*dw`` and the float bias fold into one integer bias per output channel:
   ``acc = E - (S << c_shift) + bias[c]``, computed exactly: no intermediate overflow, the
   accumulator holds ``exp_max``, ``fan_in * a_max << c_shift`` and the bias at once.
6. **Requantization.** ``y = (acc + 2**(s-1)) >> s`` (``s = out_shift``; no rounding term when
   ``s == 0``), an arithmetic shift, i.e. round half up. A hidden layer saturates ``y`` to
   ``0 .. 2**a_bits - 1``: the saturation at zero is the ReLU. The last layer outputs ``y``
   saturated to a signed ``acc_bits`` logit. Max-pool, where used, is a comparator over codes.

The network's predicted class is the index of the first maximal logit.

The classifier heads (``LayerSpec.neuron``; linear layers only)
-------------------------------------------------------------
The convolutions are always the 1.5-branch neuron above (``neuron = "bm15"``). The classifier
may be one of two other neurons on the same log and exp units. Both store per weight a sign
``s_ci`` (0: positive, 1: negative; the export's ``layer<i>.sign``) beside a signed
``w_log_bits`` magnitude code ``Lw_ci = round(2**f * log2(|w_ci| * k))``, clamped to the code
range (a zero weight takes the most negative code). There is no window-sum correction
(``c_shift`` is 0).

* ``lns``, the log-domain sum: the 1.5-BM neuron at its classical limit (the max replaced by
  the sum), ``z_c = sum_i w_ci x_i + b_c``, with no multiplier:

  1. each term ``T_ci = EXP(Lx_i + Lw_ci)``: the exp unit of step 4 (floor shift, saturating
     to ``exp_bits``), 0 when ``x_i``'s zero flag is set;
  2. ``acc_c = bias_c + sum_i (-1)**s_ci * T_ci``, exact in a signed accumulator of
     :func:`lns_acc_bits` bits (``fan_in * (2**exp_bits - 1) + 2**(bias_bits - 1)`` fits, so it
     never overflows or saturates);
  3. requantization as in step 6, to a signed ``acc_bits`` logit.

* ``bm2``, the 2-branch max (all-morphological): ``z_c = max_i x_i v+_ci - max_i x_i v-_ci +
  b_c`` with ``v+ = max(w, 0)``, ``v- = max(-w, 0)`` (the 4-branch neuron on inputs >= 0):

  1. ``M+_c = max (Lx_i + Lw_ci)`` over the inputs with ``s_ci = 0`` and the zero flag clear,
     ``M-_c`` likewise over ``s_ci = 1``; an empty branch is flagged;
  2. ``acc_c = EXP(M+_c) - EXP(M-_c) + bias_c`` (a flagged branch's exp is 0), exact in
     :func:`bm2_acc_bits` bits;
  3. requantization as in step 6.

Integer MAC baseline (``p`` is a :class:`model.params.MACParams`)
-----------------------------------------------------------------
``acc = sum_i x_i * w_i + bias[c]`` with unsigned ``a_bits`` activations and signed ``w_bits``
weights, exact in ``acc_bits``, then the same requantization as above.
"""

from __future__ import annotations

import numpy as np

from .params import BMParams, LayerSpec, MACParams

__all__ = [
    "ref_log",
    "ref_exp",
    "ref_branch",
    "ref_window_sum",
    "ref_correction",
    "ref_requant",
    "ref_maxpool",
    "im2col",
    "ref_bm_layer",
    "ref_lns_acc",
    "ref_bm2_acc",
    "ref_mac_layer",
    "ref_network",
    "lns_acc_bits",
    "bm2_acc_bits",
]


def _as_int(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


# -- stages ------------------------------------------------------------------------------------
def ref_log(p: BMParams, x):
    """Log unit: ``(Lx, zero)`` for activation codes ``x`` (any shape)."""
    x = _as_int(x)
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
    m = _as_int(m)
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
        out = np.where(_as_int(zero) != 0, 0, out)
    return out


def ref_branch(p: BMParams, lx, zx, lw):
    """Max-plus branch: ``(M, zero)`` with ``M[..., c] = max_i (lx[..., i] + lw[c, i])``.

    ``lx``, ``zx``: ``(..., n)`` log codes and zero flags; ``lw``: ``(C, n)`` weight codes.
    """
    lx = _as_int(lx)
    zx = np.asarray(zx, dtype=bool)
    lw = _as_int(lw)
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
    return _as_int(x).sum(axis=-1)


def ref_correction(p: BMParams, e, s, bias, c_shift: int):
    """``acc = E - (S << c_shift) + bias``, exact.

    ``e``: (..., C); ``s``: (...,); ``bias``: (C,)."""
    if not 0 <= c_shift <= p.max_c_shift:
        raise ValueError(f"c_shift must be in 0..{p.max_c_shift}, not {c_shift!r}")
    return _as_int(e) - (_as_int(s)[..., None] << c_shift) + _as_int(bias)


def ref_requant(p: BMParams | MACParams, acc, shift: int, relu: bool):
    """Rounding arithmetic right shift, then saturation (ReLU codes, or signed logits)."""
    acc = _as_int(acc)
    if shift < 0:
        raise ValueError(f"shift must be >= 0, not {shift!r}")
    y = (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc
    if relu:
        return np.clip(y, 0, p.a_max)
    lim = 1 << (p.acc_bits - 1)
    return np.clip(y, -lim, lim - 1)


def ref_maxpool(x, k: int):
    """Non-overlapping ``k x k`` max-pool of a ``(C, H, W)`` code map (floor on the edges)."""
    x = _as_int(x)
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
    x = _as_int(x)
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
    x = _as_int(x)
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


def _check_sign(spec: LayerSpec, sign) -> np.ndarray:
    if sign is None:
        raise ValueError(f"a {spec.neuron!r} layer needs a sign per weight")
    sign = _as_int(sign).reshape(spec.out_ch, spec.fan_in)
    if np.any((sign < 0) | (sign > 1)):
        raise ValueError("weight signs must be 0 or 1")
    return sign


def ref_lns_acc(p: BMParams, lx, zx, lw, sign, bias):
    """``lns`` head: ``acc[..., c] = bias[c] + sum_i (-1)**sign[c, i] * EXP(lx_i + lw[c, i])``.

    ``lx``, ``zx``: ``(..., n)`` log codes and zero flags; ``lw``, ``sign``: ``(C, n)``."""
    lx, lw, sign = _as_int(lx), _as_int(lw), _as_int(sign)
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
    acc = acc + _as_int(bias)
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
        lxm = _as_int(lx)[..., None, :] + _as_int(lw)
        big = np.int64(-(1 << 40))
        mm = np.where(mask, big, lxm).max(axis=-1)
        zm = mm < big // 2
        out.append(ref_exp(p, np.where(zm, 0, mm), zm))
    return out[0] - out[1] + _as_int(bias)


def ref_bm_layer(p: BMParams, spec: LayerSpec, x, lw, bias, *, sign=None, return_acc: bool = False):
    """One integer BM layer (``spec.neuron``): codes in, codes (or logits) out."""
    cols, hw = _layer_input(spec, x)
    if np.any((cols < 0) | (cols > p.a_max)):
        raise ValueError(f"activation codes must be in 0..{p.a_max}")
    lw = _as_int(lw).reshape(spec.out_ch, spec.fan_in)
    lx, zx = ref_log(p, cols)
    if spec.neuron == "lns":
        acc = ref_lns_acc(p, lx, zx, lw, _check_sign(spec, sign), bias)
    elif spec.neuron == "bm2":
        if np.any((lw < p.w_log_min) | (lw > p.w_log_max)):
            raise ValueError(f"weight log codes must be in {p.w_log_min}..{p.w_log_max}")
        acc = ref_bm2_acc(p, lx, zx, lw, _check_sign(spec, sign), bias)
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
    w = _as_int(w).reshape(spec.out_ch, spec.fan_in)
    if np.any((w < p.w_min) | (w > p.w_max)):
        raise ValueError(f"weights must be in {p.w_min}..{p.w_max}")
    acc = cols @ w.T + _as_int(bias)
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
    x = _as_int(image)
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


# -- batched fast path -------------------------------------------------------------------------
# Same integer semantics as ``ref_network`` on every image, vectorised over a batch so that the
# full MNIST test set runs in reasonable time. ``tests/test_reference.py`` proves it equal to the
# per-image path; the per-image functions above stay the definition.
def maxplus_dtype(p: BMParams):
    """Narrowest integer type holding ``Lx + Lw`` and the flagged sentinel with room to spare."""
    lx_max = ((p.u_bits - 1) << p.log_frac) + (1 << p.log_frac)
    if lx_max + p.w_log_max < 1 << 13 and -p.w_log_min <= 1 << 13:
        return np.int16, -(1 << 14)
    return np.int32, -(1 << 28)


def maxplus_conv(lxm, lw, dtype):
    """``M[o, b, y, x] = max over (c, ky, kx) of lxm[b, c, y+ky, x+kx] + lw[o, c, ky, kx]``
    (valid, stride 1): one vectorised add and max per weight position, over every output."""
    b, c, h, w = lxm.shape
    o, _, k, _ = lw.shape
    ho, wo = h - k + 1, w - k + 1
    lw = lw.astype(dtype)
    out = np.full((o, b, ho, wo), np.iinfo(dtype).min, dtype=dtype)
    tmp = np.empty_like(out)
    for ci in range(c):
        for ky in range(k):
            for kx in range(k):
                win = lxm[None, :, ci, ky : ky + ho, kx : kx + wo]
                np.add(win, lw[:, ci, ky, kx].reshape(o, 1, 1, 1), out=tmp)
                np.maximum(out, tmp, out=out)
    return out


def window_sums(x, k: int):
    """``S[b, y, x]``: the sum of ``x[b, :, y:y+k, x:x+k]`` (valid, stride 1)."""
    xs = _as_int(x).sum(axis=1)
    ho, wo = xs.shape[1] - k + 1, xs.shape[2] - k + 1
    s = np.zeros((xs.shape[0], ho, wo), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            s += xs[:, ky : ky + ho, kx : kx + wo]
    return s


def _batch_head(p: BMParams, spec: LayerSpec, lx, zx, lw, sign, bias):
    """The ``lns`` and ``bm2`` heads over a batch: the exp unit tabulated over every branch
    sum ``Lx + Lw`` that can occur, then looked up."""
    sign = _check_sign(spec, sign).astype(bool)
    lx = lx.reshape(lx.shape[0], -1)
    zx = zx.reshape(zx.shape[0], -1)
    lo = int(lw.min())
    hi = int(lx.max(initial=0)) + int(lw.max())
    e_tab = ref_exp(p, np.arange(min(lo, 0), max(hi, 0) + 1))
    off = -min(lo, 0)
    acc = np.empty((lx.shape[0], spec.out_ch), dtype=np.int64)
    for o in range(spec.out_ch):
        m = lx + lw[o]  # (B, n)
        if spec.neuron == "lns":
            t = np.where(zx, 0, e_tab[m + off])
            acc[:, o] = np.where(sign[o], -t, t).sum(axis=1)
        else:
            big = np.int64(-(1 << 40))
            e = []
            for neg in (False, True):
                mm = np.where(zx | (sign[o] != neg), big, m).max(axis=1)
                zm = mm < big // 2
                e.append(np.where(zm, 0, e_tab[np.where(zm, 0, mm) + off]))
            acc[:, o] = e[0] - e[1]
    return acc + _as_int(bias)


def batch_bm_layer(p: BMParams, spec: LayerSpec, x, lw, bias, sign=None):
    lw = _as_int(lw).reshape(spec.out_ch, spec.fan_in)
    if np.any((lw < p.w_log_min) | (lw > p.w_log_max)):
        raise ValueError(f"weight log codes must be in {p.w_log_min}..{p.w_log_max}")
    # ref_log and ref_exp tabulated over their whole input ranges: the same function, looked up
    codes = np.arange(p.a_max + 1)
    lx_tab, zx_tab = ref_log(p, codes)
    lx, zx = lx_tab[x], zx_tab[x]
    if spec.neuron != "bm15":
        return _batch_head(p, spec, lx, zx, lw, sign, bias)
    dtype, neg = maxplus_dtype(p)
    lxm = np.where(zx, neg, lx).astype(dtype)
    if spec.kind == "conv":
        lw4 = lw.reshape(spec.out_ch, spec.in_ch, spec.k, spec.k)
        m = maxplus_conv(lxm, lw4, dtype).transpose(1, 2, 3, 0).astype(np.int64)
        s = window_sums(x, spec.k)
    else:
        flat = lxm.reshape(x.shape[0], -1).astype(np.int64)
        m = np.empty((x.shape[0], spec.out_ch), dtype=np.int64)
        for o in range(spec.out_ch):
            m[:, o] = (flat + lw[o]).max(axis=1)
        s = x.reshape(x.shape[0], -1).sum(axis=1)
    zm = m < neg // 2
    m = np.where(zm, 0, m)
    lo = min(int(m.min()), 0)
    e_tab = ref_exp(p, np.arange(lo, int(m.max()) + 1))
    e = np.where(zm, 0, e_tab[m - lo])
    return ref_correction(p, e, s, bias, spec.c_shift)


def _batch_mac_layer(p: MACParams, spec: LayerSpec, x, w, bias):
    w = _as_int(w).reshape(spec.out_ch, spec.fan_in)
    if np.any((w < p.w_min) | (w > p.w_max)):
        raise ValueError(f"weights must be in {p.w_min}..{p.w_max}")
    # float64 products and sums are exact while every partial sum stays below 2**53
    if spec.fan_in * p.a_max * max(-p.w_min, p.w_max) >= 1 << 52:
        raise OverflowError("layer too wide for the exact float64 fast path")
    wf = w.T.astype(np.float64)
    if spec.kind == "conv":
        bsz, c, h, wd = x.shape
        k = spec.k
        ho, wo = h - k + 1, wd - k + 1
        xf = np.ascontiguousarray(x, dtype=np.float64)
        s = xf.strides
        view = np.lib.stride_tricks.as_strided(
            xf,
            shape=(bsz, ho, wo, c, k, k),
            strides=(s[0], s[2], s[3], s[1], s[2], s[3]),
            writeable=False,
        )
        acc = np.empty((bsz, ho, wo, spec.out_ch), dtype=np.int64)
        step = max(1, (1 << 21) // (ho * wo * spec.fan_in))  # about 16 MB of patches at a time
        for i in range(0, bsz, step):
            cols = view[i : i + step].reshape(-1, spec.fan_in)
            acc[i : i + step] = (cols @ wf).astype(np.int64).reshape(-1, ho, wo, spec.out_ch)
    else:
        acc = (x.reshape(x.shape[0], -1).astype(np.float64) @ wf).astype(np.int64)
    acc = acc + _as_int(bias)
    lim = 1 << (p.acc_bits - 1)
    if np.any((acc < -lim) | (acc >= lim)):
        raise OverflowError(f"accumulator exceeds {p.acc_bits} bits")
    return acc


def ref_network_batch(p, layers, tensors, images, *, trace: bool = False):
    """:func:`ref_network` over a batch of ``(N, C, H, W)`` code images: ``(N, classes)`` logits.

    Bit-identical to calling :func:`ref_network` on each image (proved by the tests).
    """
    x = _as_int(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), not {x.shape}")
    bm = isinstance(p, BMParams)
    outs = []
    for spec, t in zip(layers, tensors, strict=True):
        if spec.kind == "conv" and (x.ndim != 4 or x.shape[1] != spec.in_ch):
            raise ValueError(f"conv layer expects (N, {spec.in_ch}, H, W) codes, not {x.shape}")
        if spec.kind == "linear" and x[0].size != spec.in_ch:
            raise ValueError(f"linear layer expects {spec.in_ch} inputs, not {x[0].size}")
        if np.any((x < 0) | (x > p.a_max)):
            raise ValueError(f"activation codes must be in 0..{p.a_max}")
        if bm:
            acc = batch_bm_layer(p, spec, x, t["w"], t["bias"], t.get("sign"))
        else:
            acc = _batch_mac_layer(p, spec, x, t["w"], t["bias"])
        y = ref_requant(p, acc, spec.out_shift, spec.relu)
        if spec.kind == "conv":
            y = y.transpose(0, 3, 1, 2)
            if spec.pool > 1:
                n, c, h, w = y.shape
                h2, w2 = h // spec.pool, w // spec.pool
                k = spec.pool
                y = y[:, :, : h2 * k, : w2 * k].reshape(n, c, h2, k, w2, k).max(axis=(3, 5))
            y = np.ascontiguousarray(y)
        x = y
        outs.append(x)
    return outs if trace else x
