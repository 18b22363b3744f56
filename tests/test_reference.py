"""The integer reference: every stage against a direct float evaluation within a stated bound,
the batched fast path against the per-image definition, and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.params import PRESETS, BMParams, LayerSpec, MACParams
from model.reference import (
    im2col,
    ref_bm_layer,
    ref_branch,
    ref_correction,
    ref_exp,
    ref_log,
    ref_mac_layer,
    ref_network,
    ref_network_batch,
    ref_requant,
    ref_window_sum,
)

BM_PRESETS = [k for k, v in PRESETS.items() if isinstance(v, BMParams)]
MAC_PRESETS = [k for k, v in PRESETS.items() if isinstance(v, MACParams)]


def log_bounds(p: BMParams) -> tuple[float, float]:
    """``Lx / 2**f - log2(u)`` lies in ``[-lo, hi]``.

    Truncating the bits below ``mant_bits`` lowers the mantissa by less than one unit in
    ``2**-mant_bits`` of a value in ``[1, 2)``, i.e. by less than ``log2(1 + 2**-mant_bits)``;
    rounding the table entry moves it by at most half an LSB, ``2**-(f+1)``.
    """
    half = 2.0 ** -(p.log_frac + 1)
    return math.log2(1 + 2.0**-p.mant_bits) + half, half


def exp_bound(p: BMParams, m: np.ndarray) -> np.ndarray:
    """``|E - 2**(M / 2**f)|`` is at most ``2**(q - t - 1) + 1`` below saturation (``q = M >> f``).

    The table entry is within 1/2 of ``2**t * 2**(r / 2**f)``; a left shift by ``q - t`` scales
    that half LSB, a right shift floors (at most one more unit).
    """
    q = np.asarray(m) >> p.log_frac
    return 2.0 ** (q - p.exp_table_bits - 1) + np.where(q < p.exp_table_bits, 1.0, 0.0)


# -- stages ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BM_PRESETS)
@pytest.mark.parametrize("dx", [0, 1, 5])
def test_log_exhaustive(name, dx):
    d = PRESETS[name].to_dict()
    d.pop("kind")
    p = BMParams(**{**d, "dx": dx})
    x = np.arange(p.a_max + 1)
    lx, zero = ref_log(p, x)
    u = x + p.dx
    np.testing.assert_array_equal(zero, u == 0)
    assert np.all(lx[zero] == 0)
    lo, hi = log_bounds(p)
    err = lx[~zero] / 2**p.log_frac - np.log2(u[~zero])
    assert err.min() >= -lo - 1e-12 and err.max() <= hi + 1e-12
    assert lx.min() >= 0 and lx.max() < 1 << p.lx_bits
    # exact where no mantissa bit is dropped: u below 2**(mant_bits + 1)
    small = (~zero) & (u < 1 << (p.mant_bits + 1))
    assert np.abs(lx[small] / 2**p.log_frac - np.log2(u[small])).max() <= hi + 1e-12


def test_log_rejects_out_of_range():
    p = PRESETS["bm8"]
    with pytest.raises(ValueError):
        ref_log(p, [256])
    with pytest.raises(ValueError):
        ref_log(p, [-1])


@pytest.mark.parametrize("name", BM_PRESETS)
def test_exp_exhaustive(name):
    p = PRESETS[name]
    lx_max = (1 << p.lx_bits) - 1
    m = np.arange(p.w_log_min, lx_max + p.w_log_max + 1)
    e = ref_exp(p, m)
    exact = 2.0 ** (m / 2**p.log_frac)
    ok = exact + exp_bound(p, m) < p.exp_max
    assert np.all(np.abs(e[ok] - exact[ok]) <= exp_bound(p, m[ok]) + 1e-9)
    assert np.all(e <= p.exp_max) and np.all(e >= 0)
    assert np.all(e[exact > p.exp_max + exp_bound(p, m)] == p.exp_max)
    assert np.all(np.diff(e) >= 0)  # monotone
    np.testing.assert_array_equal(ref_exp(p, m, np.ones_like(m)), 0)


@pytest.mark.parametrize("name", ["bm8", "bm4", "bm12"])
def test_branch_against_float_max(name):
    p = PRESETS[name]
    rng = np.random.default_rng(1)
    x = rng.integers(0, p.a_max + 1, (40, 27)) * (rng.random((40, 27)) < 0.6)
    x[0] = 0  # an all-zero window: flagged
    lw = rng.integers(p.w_log_min, p.w_log_max + 1, (6, 27))
    lx, zx = ref_log(p, x)
    m, zm = ref_branch(p, lx, zx, lw)
    u = (x + p.dx).astype(float)
    with np.errstate(divide="ignore"):
        fl = np.log2(u)[:, None, :] + lw[None] / 2**p.log_frac  # -inf where u == 0
    want = fl.max(-1)
    np.testing.assert_array_equal(zm, np.isneginf(want))
    lo, hi = log_bounds(p)
    err = m[~zm] / 2**p.log_frac - want[~zm]
    assert err.min() >= -lo - 1e-12 and err.max() <= hi + 1e-12
    # and exactly the integer max-plus
    direct = np.where(zx[:, None, :], -(10**9), lx[:, None, :] + lw[None]).max(-1)
    np.testing.assert_array_equal(m[~zm], direct[~zm])


def test_branch_rejects_bad_weights():
    p = PRESETS["bm8"]
    with pytest.raises(ValueError):
        ref_branch(p, [[1]], [[False]], [[p.w_log_max + 1]])


@given(
    s=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    c_shift=st.integers(0, 15),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=50, deadline=None)
def test_correction_exact(s, c_shift, seed):
    p = PRESETS["bm8"]
    rng = np.random.default_rng(seed)
    e = rng.integers(0, p.exp_max + 1, (len(s), 3))
    bias = rng.integers(-(1 << 23), 1 << 23, 3)
    acc = ref_correction(p, e, s, bias, c_shift)
    for i, si in enumerate(s):
        for c in range(3):
            assert acc[i, c] == int(e[i, c]) - si * 2**c_shift + int(bias[c])


def test_correction_rejects_large_shift():
    p = PRESETS["bm8"]
    with pytest.raises(ValueError):
        ref_correction(p, [[0]], [0], [0], p.max_c_shift + 1)


@given(
    acc=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20),
    shift=st.integers(0, 20),
    relu=st.booleans(),
)
@settings(max_examples=100, deadline=None)
def test_requant_against_float(acc, shift, relu):
    """Round half up of ``acc / 2**shift`` (exact in floats at these sizes), then saturation."""
    p = PRESETS["bm8"]
    y = ref_requant(p, acc, shift, relu)
    for a, got in zip(acc, y, strict=True):
        want = math.floor(a / 2**shift + 0.5)
        if relu:
            want = min(max(want, 0), p.a_max)
        else:
            lim = 2 ** (p.acc_bits - 1)
            want = min(max(want, -lim), lim - 1)
        assert got == want


def test_window_sum():
    x = np.arange(24).reshape(2, 12)
    np.testing.assert_array_equal(ref_window_sum(x), x.sum(1))


# -- layers --------------------------------------------------------------------------------------
def random_bm_layer(p, spec, rng, density=0.7):
    lw = rng.integers(p.w_log_min // 2, p.w_log_max // 2, spec.weight_shape)
    bias = rng.integers(-(1 << 16), 1 << 16, spec.out_ch)
    return lw, bias


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_bm_layer_against_float(kind):
    """The whole layer: ``acc`` against ``max_i (x_i + dx) 2**(Lw_i/2**f) - S 2**c + bias`` in
    float64, within the product of the log and exp bounds (no saturation in this range)."""
    p = PRESETS["bm8"]
    rng = np.random.default_rng(2)
    if kind == "conv":
        spec = LayerSpec("conv", 3, 5, 3, c_shift=4, out_shift=6)
        x = rng.integers(0, 256, (3, 7, 6)) * (rng.random((3, 7, 6)) < 0.7)
        cols, _ = im2col(x, 3)
    else:
        spec = LayerSpec("linear", 20, 4, c_shift=4, out_shift=6, relu=False)
        x = rng.integers(0, 256, 20)
        cols = x[None]
    lw = rng.integers(-200, 300, spec.weight_shape)
    bias = rng.integers(-(1 << 16), 1 << 16, spec.out_ch)
    y, acc = ref_bm_layer(p, spec, x, lw, bias, return_acc=True)
    u = (cols + p.dx).astype(float)
    wv = 2.0 ** (lw.reshape(spec.out_ch, -1) / 2**p.log_frac)
    e_float = (u[:, None, :] * wv[None]).max(-1)
    acc_float = e_float - cols.sum(1)[:, None] * 2.0**spec.c_shift + bias
    lo, hi = log_bounds(p)
    t = 2.0**-p.exp_table_bits
    e_int = acc - bias + cols.sum(1)[:, None] * 2**spec.c_shift
    assert np.all(e_int <= e_float * 2**hi * (1 + t) + 1)
    assert np.all(e_int >= e_float * 2**-lo * (1 - t) - 1)
    assert np.abs(acc - acc_float).max() <= (e_float * (2 ** max(lo, hi) * (1 + t) - 1) + 1).max()
    want = np.clip(
        np.floor(acc / 2**spec.out_shift + 0.5),
        0 if spec.relu else -(2**27),
        p.a_max if spec.relu else 2**27 - 1,
    )
    if kind == "conv":
        want = want.T.reshape(y.shape)
    else:
        want = want[0]
    np.testing.assert_array_equal(y, want)


def test_mac_layer_against_float():
    p = PRESETS["mac8"]
    rng = np.random.default_rng(3)
    spec = LayerSpec("conv", 2, 3, 3, out_shift=5)
    x = rng.integers(0, 256, (2, 6, 6))
    w = rng.integers(-128, 128, spec.weight_shape)
    bias = rng.integers(-1000, 1000, 3)
    y, acc = ref_mac_layer(p, spec, x, w, bias, return_acc=True)
    direct = np.zeros((3, 4, 4))
    for o in range(3):
        for i in range(4):
            for j in range(4):
                direct[o, i, j] = (x[:, i : i + 3, j : j + 3] * w[o]).sum() + bias[o]
    np.testing.assert_array_equal(acc.T.reshape(3, 4, 4), direct)
    np.testing.assert_array_equal(y, np.clip(np.floor(direct / 32 + 0.5), 0, 255))


def test_mac_overflow_raises():
    p = MACParams(acc_bits=16, bias_bits=16)
    spec = LayerSpec("linear", 4, 1)
    with pytest.raises(OverflowError):
        ref_mac_layer(p, spec, [255] * 4, [[127] * 4], [0])


# -- networks ------------------------------------------------------------------------------------
def small_net(arith: str, name: str, rng):
    p = PRESETS[name]
    specs = [
        LayerSpec("conv", 1, 4, 3, c_shift=3 if arith == "bm" else 0, out_shift=9),
        LayerSpec("conv", 4, 3, 3, c_shift=2 if arith == "bm" else 0, out_shift=8, pool=2),
        LayerSpec(
            "linear", 3 * 3 * 3, 5, c_shift=1 if arith == "bm" else 0, out_shift=3, relu=False
        ),
    ]
    tensors = []
    for s in specs:
        if arith == "bm":
            w = rng.integers(p.w_log_min // 2, p.w_log_max // 2 + 1, s.weight_shape)
        else:
            w = rng.integers(p.w_min, p.w_max + 1, s.weight_shape)
        tensors.append({"w": w, "bias": rng.integers(-(1 << 12), 1 << 12, s.out_ch)})
    return p, specs, tensors


@pytest.mark.parametrize(
    "arith,name", [("bm", n) for n in BM_PRESETS] + [("mac", n) for n in MAC_PRESETS]
)
@pytest.mark.parametrize("chunk", [500, 5])
def test_batch_equals_per_image(arith, name, chunk, monkeypatch):
    """Also in chunks of 5 images (the last one short): the batch is split transparently."""
    import model.reference.batch as batch

    monkeypatch.setattr(batch, "CHUNK", chunk)
    rng = np.random.default_rng(4)
    p, specs, tensors = small_net(arith, name, rng)
    imgs = rng.integers(0, p.a_max + 1, (12, 1, 10, 10)) * (rng.random((12, 1, 10, 10)) < 0.5)
    imgs[0] = 0
    imgs[1] = p.a_max
    got = ref_network_batch(p, specs, tensors, imgs, trace=True)
    for i, im in enumerate(imgs):
        want = ref_network(p, specs, tensors, im, trace=True)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g[i], w)


@given(
    seed=st.integers(0, 2**32 - 1),
    hw=st.integers(5, 9),
    c=st.integers(1, 3),
    o=st.integers(1, 4),
    pool=st.sampled_from([1, 2]),
    bm=st.booleans(),
)
@settings(max_examples=25, deadline=None)
def test_batch_equals_per_image_random_shapes(seed, hw, c, o, pool, bm):
    rng = np.random.default_rng(seed)
    p = PRESETS["bm8" if bm else "mac8"]
    ho = (hw - 2) // pool
    specs = [
        LayerSpec(
            "conv",
            c,
            o,
            3,
            c_shift=int(rng.integers(0, 8)) if bm else 0,
            out_shift=int(rng.integers(0, 14)),
            pool=pool,
        ),
        LayerSpec(
            "linear",
            o * ho * ho,
            3,
            c_shift=int(rng.integers(0, 8)) if bm else 0,
            out_shift=int(rng.integers(0, 6)),
            relu=False,
        ),
    ]
    tensors = []
    for s in specs:
        if bm:
            w = rng.integers(p.w_log_min, p.w_log_max + 1, s.weight_shape)
        else:
            w = rng.integers(p.w_min, p.w_max + 1, s.weight_shape)
        tensors.append({"w": w, "bias": rng.integers(-(1 << 20), 1 << 20, s.out_ch)})
    imgs = rng.integers(0, 256, (4, c, hw, hw)) * (rng.random((4, c, hw, hw)) < 0.5)
    got = ref_network_batch(p, specs, tensors, imgs)
    for i, im in enumerate(imgs):
        np.testing.assert_array_equal(got[i], ref_network(p, specs, tensors, im))


@pytest.mark.parametrize("arith", ["bm", "mac"])
def test_deterministic(arith):
    rng = np.random.default_rng(5)
    p, specs, tensors = small_net(arith, "bm8" if arith == "bm" else "mac8", rng)
    imgs = rng.integers(0, 256, (6, 1, 10, 10))
    a = [ref_network(p, specs, tensors, im) for im in imgs]
    b = [ref_network(p, specs, tensors, im.copy()) for im in imgs]
    np.testing.assert_array_equal(a, b)
    c = ref_network_batch(p, specs, tensors, imgs)
    d = ref_network_batch(p, specs, tensors, imgs.copy())
    np.testing.assert_array_equal(c, d)
    np.testing.assert_array_equal(c, np.stack(a))
    # inputs are not modified
    imgs2 = imgs.copy()
    ref_network_batch(p, specs, tensors, imgs2)
    np.testing.assert_array_equal(imgs, imgs2)


def test_shipped_exports_batch_equals_per_image():
    """The shipped networks: the fast path equals the definition on a few real-looking inputs."""
    from pathlib import Path

    from model.export import load_export

    files = sorted((Path(__file__).resolve().parent.parent / "model" / "weights").glob("*.npz"))
    if not files:
        pytest.skip("no shipped exports yet")
    rng = np.random.default_rng(6)
    for f in files:
        exp = load_export(f)
        imgs = rng.integers(0, 256, (3,) + exp.input_shape) * (
            rng.random((3,) + exp.input_shape) < 0.2
        )
        codes = exp.codes(imgs)
        got = ref_network_batch(exp.params, exp.layers, exp.tensors, codes)
        for i in range(len(codes)):
            np.testing.assert_array_equal(
                got[i], ref_network(exp.params, exp.layers, exp.tensors, codes[i])
            )
