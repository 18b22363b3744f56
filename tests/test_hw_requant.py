# amaranth: UnusedElaboratable=no
"""Window sum, correction + requantization, and max-pool against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.blocks.requant import MaxPool, Requant, WindowSum, window_sum_bits
from hw.testing import run_stream
from model.params import PRESETS, BMParams, MACParams
from model.reference import ref_correction, ref_maxpool, ref_requant, ref_window_sum

HYP = settings(
    max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def rtl_window_sum(p, windows, *, lanes: int, max_fan_in: int, seed=0, p_valid=1.0, p_ready=1.0):
    """Each window (a list of codes, length a multiple of ``lanes``) -> its sum."""
    dut = WindowSum(p, lanes=lanes, max_fan_in=max_fan_in)
    beats = []
    for win in windows:
        for k in range(0, len(win), lanes):
            beats.append(
                {"x": [int(v) for v in win[k : k + lanes]], "last": int(k + lanes >= len(win))}
            )
    run = run_stream(
        dut, beats, len(windows), seed=seed, p_valid=p_valid, p_ready=p_ready, decode=int
    )
    return run.outputs


@HYP
@given(
    lanes=st.integers(1, 9),
    beats=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["bm8", "mac4", "bm12"]),
)
def test_window_sum(lanes, beats, seed, name):
    p = PRESETS[name]
    rng = np.random.default_rng(seed)
    windows = [rng.integers(0, p.a_max + 1, size=n * lanes) for n in beats]
    windows[0][:] = p.a_max  # the largest sum
    got = rtl_window_sum(
        p, windows, lanes=lanes, max_fan_in=max(beats) * lanes, seed=seed, p_valid=0.8, p_ready=0.6
    )
    assert got == [int(ref_window_sum(w)) for w in windows]


def rtl_requant(
    p,
    items,
    *,
    lanes: int,
    out_shift: int,
    relu: bool,
    c_shift: int = 0,
    max_fan_in: int = 5184,
    sum_bits: int | None = None,
    seed=0,
    p_valid=1.0,
    p_ready=1.0,
):
    """``items``: BM ``(e (lanes,), s, bias (lanes,))``, or MAC (or any with ``sum_bits``)
    ``(acc (lanes,), bias)``."""
    dut = Requant(p, lanes=lanes, max_fan_in=max_fan_in, sum_bits=sum_bits)
    setup = [(dut.out_shift, out_shift), (dut.relu, int(relu))]
    if isinstance(p, BMParams) and sum_bits is None:
        setup.append((dut.c_shift, c_shift))
        beats = [
            {"e": [int(v) for v in e], "s": int(s), "bias": [int(v) for v in b]}
            for e, s, b in items
        ]
    else:
        beats = [{"acc": [int(v) for v in a], "bias": [int(v) for v in b]} for a, b in items]
    flow = {"seed": seed, "p_valid": p_valid, "p_ready": p_ready}
    run = run_stream(dut, beats, len(beats), setup=setup,
                     decode=lambda o: [int(o[j]) for j in range(lanes)], **flow)
    return np.array(run.outputs), dut


@pytest.mark.parametrize("name", ["bm8", "bm4"])
@HYP
@given(
    lanes=st.integers(1, 4),
    out_shift=st.sampled_from([0, 1, 5, 13, 24, 60]),
    c_shift=st.integers(0, 15),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_requant_bm(name, lanes, out_shift, c_shift, relu, seed):
    p = PRESETS[name]
    max_fan_in = 300
    rng = np.random.default_rng(seed)
    n = 24
    s_max = max_fan_in * p.a_max
    e = rng.integers(0, p.exp_max + 1, size=(n, lanes))
    s = rng.integers(0, s_max + 1, size=n)
    bias = rng.integers(-(1 << (p.bias_bits - 1)), 1 << (p.bias_bits - 1), size=(n, lanes))
    # the extremes of every operand
    e[0], s[0], bias[0] = p.exp_max, 0, (1 << (p.bias_bits - 1)) - 1
    e[1], s[1], bias[1] = 0, s_max, -(1 << (p.bias_bits - 1))
    e[2] //= 1 << 12
    s[2] //= 1 << 8
    got, dut = rtl_requant(p, list(zip(e, s, bias, strict=True)), lanes=lanes,
                           out_shift=out_shift, relu=relu, c_shift=c_shift,
                           max_fan_in=max_fan_in, seed=seed, p_valid=0.8, p_ready=0.7)
    acc = ref_correction(p, e, s, bias, c_shift)
    np.testing.assert_array_equal(got, ref_requant(p, acc, out_shift, relu))


@pytest.mark.parametrize("name", ["mac8", "mac12"])
@HYP
@given(
    lanes=st.integers(1, 4),
    out_shift=st.sampled_from([0, 1, 7, 20, 33, 63]),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_requant_mac(name, lanes, out_shift, relu, seed):
    p: MACParams = PRESETS[name]
    rng = np.random.default_rng(seed)
    n = 24
    lim = 1 << (p.acc_bits - 1)
    acc = rng.integers(-lim, lim, size=(n, lanes)) >> rng.integers(0, p.acc_bits, size=(n, 1))
    bias = rng.integers(-(1 << (p.bias_bits - 1)), 1 << (p.bias_bits - 1), size=(n, lanes))
    bias >>= rng.integers(0, p.bias_bits, size=(n, 1))
    got, _ = rtl_requant(p, list(zip(acc, bias, strict=True)), lanes=lanes, out_shift=out_shift,
                         relu=relu, seed=seed, p_valid=0.8, p_ready=0.7)
    np.testing.assert_array_equal(got, ref_requant(p, acc + bias, out_shift, relu))


@pytest.mark.parametrize("neuron", ["lns", "bm2"])
@HYP
@given(
    out_shift=st.sampled_from([0, 1, 9, 17, 40, 63]),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_requant_head_sums(neuron, out_shift, relu, seed):
    """The ``sum_bits`` form that the classifier heads use: a finished signed sum (as wide as
    ``lns_acc_bits`` of the paper classifier) plus the bias, then the same requantization."""
    from hw.blocks.fc import head_acc_bits

    p = PRESETS["bm8"]
    width = head_acc_bits(p, 5184, 10, neuron)
    rng = np.random.default_rng(seed)
    n, lanes = 24, 3
    blim = 1 << (p.bias_bits - 1)
    lim = (1 << (width - 1)) - blim  # the sum without the bias stays inside this
    acc = rng.integers(-lim, lim, size=(n, lanes)) >> rng.integers(0, width, size=(n, 1))
    bias = rng.integers(-blim, blim, size=(n, lanes))
    acc[0], bias[0] = lim - 1, blim - 1  # the extremes
    acc[1], bias[1] = -lim, -blim
    got, _ = rtl_requant(p, list(zip(acc, bias, strict=True)), lanes=lanes, out_shift=out_shift,
                         relu=relu, sum_bits=width, seed=seed, p_valid=0.8, p_ready=0.7)
    np.testing.assert_array_equal(got, ref_requant(p, acc + bias, out_shift, relu))


def test_requant_latency():
    p = PRESETS["bm8"]
    got, dut = rtl_requant(p, [([5], 1, [0])], lanes=1, out_shift=0, relu=True, c_shift=2)
    assert got.tolist() == [[1]]
    assert dut.latency == 3


def rtl_maxpool(p, windows, *, lanes: int, seed=0, p_valid=1.0, p_ready=1.0):
    """``windows``: list of (n, lanes) code arrays -> (len, lanes) maxima."""
    dut = MaxPool(p, lanes=lanes)
    beats = [
        {"x": [int(v) for v in row], "last": int(k == len(win) - 1)}
        for win in windows
        for k, row in enumerate(win)
    ]
    run = run_stream(
        dut,
        beats,
        len(windows),
        seed=seed,
        p_valid=p_valid,
        p_ready=p_ready,
        decode=lambda o: [int(o[j]) for j in range(lanes)],
    )
    return np.array(run.outputs)


@HYP
@given(
    ch=st.integers(1, 3),
    h=st.integers(2, 7),
    w=st.integers(2, 7),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_maxpool(ch, h, w, k, seed):
    p = PRESETS["bm8"]
    if k > min(h, w):
        k = min(h, w)
    x = np.random.default_rng(seed).integers(0, p.a_max + 1, size=(ch, h, w))
    ref = ref_maxpool(x, k)
    # stream the pool windows in raster order, one beat per position, channels as lanes
    windows = [
        x[:, i * k : (i + 1) * k, j * k : (j + 1) * k].reshape(ch, -1).T
        for i in range(h // k)
        for j in range(w // k)
    ]
    got = rtl_maxpool(p, windows, lanes=ch, seed=seed, p_valid=0.8, p_ready=0.6)
    np.testing.assert_array_equal(got.T.reshape(ref.shape), ref)


def test_widths():
    assert window_sum_bits(PRESETS["bm8"], 5184) == (5184 * 255).bit_length()
    with pytest.raises(ValueError, match="max_fan_in"):
        WindowSum(PRESETS["bm8"], max_fan_in=0)
