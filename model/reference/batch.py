"""The batched fast path of :mod:`model.reference`: the same integer semantics as
:func:`model.reference.ref_network` on every image, vectorised over a batch so that the full test
set runs in reasonable time. ``tests/test_reference.py`` proves it equal to the per-image path,
which stays the definition."""

from __future__ import annotations

import numpy as np

from ..params import BMParams, LayerSpec, MACParams
from .core import as_int, check_sign, ref_correction, ref_exp, ref_log, ref_requant


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
    xs = as_int(x).sum(axis=1)
    ho, wo = xs.shape[1] - k + 1, xs.shape[2] - k + 1
    s = np.zeros((xs.shape[0], ho, wo), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            s += xs[:, ky : ky + ho, kx : kx + wo]
    return s


def _batch_head(p: BMParams, spec: LayerSpec, lx, zx, lw, sign, bias):
    """The ``lns`` and ``bm2`` heads over a batch: the exp unit tabulated over every branch
    sum ``Lx + Lw`` that can occur, then looked up."""
    sign = check_sign(spec, sign).astype(bool)
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
    return acc + as_int(bias)


def batch_bm_layer(p: BMParams, spec: LayerSpec, x, lw, bias, sign=None):
    lw = as_int(lw).reshape(spec.out_ch, spec.fan_in)
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
        m = maxplus_conv(lxm, lw4, dtype)  # (O, B, H, W): each channel's plane contiguous
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
    # one gather: a flagged maximum reads the 0 appended after the table
    e = np.append(e_tab, 0)[np.where(zm, len(e_tab), m.astype(np.int32) - lo)]
    if spec.kind != "conv":
        return ref_correction(p, e, s, bias, spec.c_shift)
    # channel by channel on the contiguous planes; (B, H, W, O) is returned as a view of the
    # (O, B, H, W) result, whose memory order the caller's elementwise steps keep
    bias = as_int(bias)
    acc = np.empty(e.shape, dtype=np.int64)
    for o in range(spec.out_ch):
        acc[o] = ref_correction(p, e[o][..., None], s, bias[o : o + 1], spec.c_shift)[..., 0]
    return acc.transpose(1, 2, 3, 0)


def _batch_mac_layer(p: MACParams, spec: LayerSpec, x, w, bias):
    w = as_int(w).reshape(spec.out_ch, spec.fan_in)
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
    acc = acc + as_int(bias)
    lim = 1 << (p.acc_bits - 1)
    if np.any((acc < -lim) | (acc >= lim)):
        raise OverflowError(f"accumulator exceeds {p.acc_bits} bits")
    return acc


def ref_network_batch(p, layers, tensors, images, *, trace: bool = False):
    """:func:`ref_network` over a batch of ``(N, C, H, W)`` code images: ``(N, classes)`` logits.

    Bit-identical to calling :func:`ref_network` on each image (proved by the tests). Runs
    :data:`CHUNK` images at a time: the intermediate tensors then stay a few tens of MB (on the
    whole MNIST test set at once this was 3.6x slower for every image).
    """
    x = as_int(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), not {x.shape}")
    if len(x) > CHUNK:
        parts = [
            _network_batch(p, layers, tensors, x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)
        ]
        outs = [np.concatenate(layer_outs) for layer_outs in zip(*parts, strict=True)]
        return outs if trace else outs[-1]
    outs = _network_batch(p, layers, tensors, x)
    return outs if trace else outs[-1]


CHUNK = 500  # images per pass of ref_network_batch


def _network_batch(p, layers, tensors, x):
    """Every layer's output on the batch ``x`` (see :func:`ref_network_batch`)."""
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
    return outs
