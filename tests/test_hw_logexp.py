# amaranth: UnusedElaboratable=no
"""Log and exp units against ``ref_log`` / ``ref_exp``: every input code, several presets."""

from __future__ import annotations

import numpy as np
import pytest

from hw.blocks.logexp import ExpUnit, LogUnit
from hw.testing import run_stream
from model.params import PRESETS, BMParams
from model.reference import ref_exp, ref_log

LOG_PARAMS = {
    "bm8": PRESETS["bm8"],
    "bm8f6": PRESETS["bm8f6"],
    "bm4": PRESETS["bm4"],
    "bm12": PRESETS["bm12"],
    "bm8-dx3": BMParams(dx=3),
    "bm6-dx1": BMParams(a_bits=6, dx=1, log_frac=3, mant_bits=6, w_log_bits=9, exp_bits=20),
}
EXP_PARAMS = {
    "bm8": PRESETS["bm8"],
    "bm8f6": PRESETS["bm8f6"],
    "bm4": PRESETS["bm4"],
    "bm6": PRESETS["bm6"],
    "bm8-e12": BMParams(exp_bits=12, exp_table_bits=6),
}


def rtl_log(p: BMParams, codes, *, lanes: int = 1, seed: int = 0, p_valid=1.0, p_ready=1.0):
    codes = list(codes)
    codes += [0] * (-len(codes) % lanes)
    beats = [codes[k : k + lanes] for k in range(0, len(codes), lanes)]
    dut = LogUnit(p, lanes=lanes)
    flow = {"seed": seed, "p_valid": p_valid, "p_ready": p_ready}
    decode = lambda o: [(int(o[j].lx), bool(o[j].zero)) for j in range(lanes)]  # noqa: E731
    run = run_stream(dut, beats, len(beats), decode=decode, **flow)
    flat = [v for beat in run.outputs for v in beat][: len(codes)]
    return np.array([v[0] for v in flat]), np.array([v[1] for v in flat]), run


def rtl_exp(p: BMParams, ms, zeros, *, lanes: int = 1, seed: int = 0, p_valid=1.0, p_ready=1.0):
    items = [{"m": int(m), "zero": int(z)} for m, z in zip(ms, zeros, strict=True)]
    items += [{"m": 0, "zero": 1}] * (-len(items) % lanes)
    beats = [items[k : k + lanes] for k in range(0, len(items), lanes)]
    dut = ExpUnit(p, lanes=lanes)
    flow = {"seed": seed, "p_valid": p_valid, "p_ready": p_ready}
    run = run_stream(dut, beats, len(beats), decode=lambda o: [int(o[j]) for j in range(lanes)],
                     **flow)
    return np.array([v for beat in run.outputs for v in beat][: len(ms)]), run


@pytest.mark.parametrize("name", LOG_PARAMS)
def test_log_exhaustive(name):
    p = LOG_PARAMS[name]
    codes = np.arange(p.a_max + 1)
    lx, zero, run = rtl_log(p, codes)
    ref_lx, ref_zero = ref_log(p, codes)
    np.testing.assert_array_equal(lx, ref_lx)
    np.testing.assert_array_equal(zero, ref_zero)
    # fully pipelined: one code per cycle, first result after `latency` cycles
    assert run.out_cycles[0] - run.in_cycles[0] == LogUnit(p).latency
    assert run.cycles == len(codes) + LogUnit(p).latency


@pytest.mark.parametrize("name", EXP_PARAMS)
def test_exp_exhaustive(name):
    p = EXP_PARAMS[name]
    ms = np.arange(-(1 << (p.m_bits - 1)), 1 << (p.m_bits - 1))
    ms = np.concatenate([ms, ms])
    zeros = np.repeat([0, 1], len(ms) // 2)
    got, run = rtl_exp(p, ms, zeros, lanes=2)
    np.testing.assert_array_equal(got, ref_exp(p, ms, zeros))
    assert run.out_cycles[0] - run.in_cycles[0] == ExpUnit(p).latency


def test_log_backpressure_lanes():
    p = PRESETS["bm8"]
    codes = np.random.default_rng(1).integers(0, p.a_max + 1, size=300)
    lx, zero, _ = rtl_log(p, codes, lanes=3, seed=2, p_valid=0.6, p_ready=0.5)
    ref_lx, ref_zero = ref_log(p, codes)
    np.testing.assert_array_equal(lx, ref_lx)
    np.testing.assert_array_equal(zero, ref_zero)


def test_exp_backpressure_lanes():
    p = PRESETS["bm10"]
    rng = np.random.default_rng(3)
    ms = rng.integers(-(1 << (p.m_bits - 1)), 1 << (p.m_bits - 1), size=300)
    zeros = rng.random(300) < 0.1
    got, _ = rtl_exp(p, ms, zeros, lanes=3, seed=4, p_valid=0.6, p_ready=0.5)
    np.testing.assert_array_equal(got, ref_exp(p, ms, zeros))


def test_log_rejects_mac_params():
    with pytest.raises(TypeError, match="BMParams"):
        LogUnit(PRESETS["mac8"])
    with pytest.raises(ValueError, match="lanes"):
        ExpUnit(PRESETS["bm8"], lanes=0)


def test_log_wide_table_widens_lx():
    """LOG[m] rounds up to 2**f when mant_bits > log_frac; with a_bits = 8 the largest code
    is then 8 * 2**f, so the contract widens lx_bits and the unit still matches exhaustively."""
    p = BMParams(a_bits=8, log_frac=5, mant_bits=6)
    assert p.lx_bits == 9
    x = np.arange(p.a_max + 1)
    lx, zero = ref_log(p, x)
    assert lx.max() == 8 << p.log_frac
    got_lx, got_zero, _ = rtl_log(p, x)
    assert np.array_equal(got_lx, lx) and np.array_equal(got_zero, zero)
