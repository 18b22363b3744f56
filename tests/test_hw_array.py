# amaranth: UnusedElaboratable=no
"""Processing elements and the systolic array against ``ref_branch`` and the MAC dot product."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.blocks.array import DATAFLOWS, SystolicArray, predict_cycles
from hw.blocks.pe import BMPE, MACPE, pe_class
from hw.testing import run_stream
from model.params import PRESETS, BMParams
from model.reference import ref_branch, ref_log

ARITH = {
    "bm8": PRESETS["bm8"],
    "mac8": PRESETS["mac8"],
    "bm4": PRESETS["bm4"],
    "mac4": PRESETS["mac4"],
}
HYP = settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _operands(p, rng, rows: int, cols: int, k: int, p_zero: float = 0.3):
    """Random im2col codes ``x`` (rows, k) with some zeros, and weights (cols, k)."""
    x = rng.integers(0, p.a_max + 1, size=(rows, k))
    x[rng.random((rows, k)) < p_zero] = 0
    if isinstance(p, BMParams):
        w = rng.integers(p.w_log_min, p.w_log_max + 1, size=(cols, k))
    else:
        w = rng.integers(p.w_min, p.w_max + 1, size=(cols, k))
    return x, w


def ref_tile(p, x, w):
    """What the array must report for one tile: BM ``[(M, zero)]``, MAC ``[sum]``, (rows, cols)."""
    if isinstance(p, BMParams):
        lx, zx = ref_log(p, x)
        m, z = ref_branch(p, lx, zx, w)
        return [
            [(int(m[r, c]), bool(z[r, c])) for c in range(w.shape[0])] for r in range(x.shape[0])
        ]
    acc = x @ w.T
    return [[int(v) for v in row] for row in acc]


def _a_values(p, x_col):
    if isinstance(p, BMParams):
        lx, zx = ref_log(p, x_col)
        return [{"lx": int(a), "zero": int(z)} for a, z in zip(lx, zx, strict=True)]
    return [int(v) for v in x_col]


# -- processing elements ---------------------------------------------------------------------
def rtl_pe(p, tiles):
    """Run (x, w) vector pairs through one PE back to back; returns each tile's accumulator."""
    dut = pe_class(p)(p)
    bm = isinstance(p, BMParams)
    results = []

    def read(ctx):
        acc = ctx.get(dut.acc)
        if bm:
            return (int(acc.m) if not acc.zero else 0, bool(acc.zero))
        return int(acc)

    async def tb(ctx):
        for t, (x, w) in enumerate(tiles):
            a = _a_values(p, x)
            for k in range(len(x)):
                if k == 0 and t > 0:
                    results.append(read(ctx))
                ctx.set(dut.a, a[k])
                ctx.set(dut.b, int(w[k]))
                ctx.set(dut.first, int(k == 0))
                await ctx.tick()
        ctx.set(dut.first, 0)
        ctx.set(dut.a, BMPE.neutral_a if bm else 0)  # a bubble changes nothing
        await ctx.tick()
        results.append(read(ctx))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return results


@pytest.mark.parametrize("name", ARITH)
@HYP
@given(data=st.data())
def test_pe_random(name, data):
    p = ARITH[name]
    ks = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=5), label="fan-ins")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    tiles = []
    for k in ks:
        x, w = _operands(p, rng, 1, 1, k, p_zero=data.draw(st.sampled_from([0.0, 0.3, 1.0])))
        tiles.append((x[0], w[0]))
    expect = [ref_tile(p, x[None, :], w[None, :])[0][0] for x, w in tiles]
    assert rtl_pe(p, tiles) == expect


def test_pe_extremes():
    """Largest and smallest operands: the BM sum and the MAC product are exact."""
    p = PRESETS["mac8"]
    x = np.full(64, p.a_max)
    for wv in (p.w_min, p.w_max):
        assert rtl_pe(p, [(x, np.full(64, wv))]) == [64 * p.a_max * wv]
    p = PRESETS["bm8"]
    for xv, wv in ((p.a_max, p.w_log_max), (1, p.w_log_min), (p.a_max, p.w_log_min)):
        x, w = np.full(5, xv), np.full(5, wv)
        assert rtl_pe(p, [(x, w)]) == [ref_tile(p, x[None, :], w[None, :])[0][0]]


# -- systolic array --------------------------------------------------------------------------
def rtl_array(
    p, rows: int, cols: int, tiles, *, dataflow="broadcast", seed=0, p_valid=1.0, p_ready=1.0
):
    """Stream tiles ``[(x (rows, K), w (cols, K)), ...]`` through the array.

    Returns the per-tile results shaped like :func:`ref_tile` and the :class:`StreamRun`.
    """
    dut = SystolicArray(p, rows=rows, cols=cols, dataflow=dataflow)
    bm = isinstance(p, BMParams)
    beats = []
    for x, w in tiles:
        k_len = x.shape[1]
        for k in range(k_len):
            beats.append(
                {
                    "a": _a_values(p, x[:, k]),
                    "b": [int(v) for v in w[:, k]],
                    "last": int(k == k_len - 1),
                }
            )

    def decode(o):
        if bm:
            acc = [(int(o.acc[c].m), bool(o.acc[c].zero)) for c in range(cols)]
        else:
            acc = [int(o.acc[c]) for c in range(cols)]
        return acc, int(o.last)

    run = run_stream(
        dut, beats, rows * len(tiles), seed=seed, p_valid=p_valid, p_ready=p_ready, decode=decode
    )
    lasts = [last for _, last in run.outputs]
    assert lasts == ([0] * (rows - 1) + [1]) * len(tiles)
    outs = [acc for acc, _ in run.outputs]
    return [outs[t * rows : (t + 1) * rows] for t in range(len(tiles))], run, dut


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("name", ["bm8", "mac8"])
@HYP
@given(data=st.data())
def test_array_random(name, dataflow, data):
    """Random shapes, fan-ins (also shorter than the rows), input gaps and back-pressure."""
    p = ARITH[name]
    rows = data.draw(st.integers(1, 4), label="rows")
    cols = data.draw(st.integers(1, 4), label="cols")
    ks = data.draw(st.lists(st.integers(1, 10), min_size=1, max_size=4), label="fan-ins")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    p_valid = data.draw(st.sampled_from([1.0, 0.7]), label="p_valid")
    p_ready = data.draw(st.sampled_from([1.0, 0.5]), label="p_ready")
    rng = np.random.default_rng(seed)
    tiles = [_operands(p, rng, rows, cols, k) for k in ks]
    got, _, _ = rtl_array(
        p, rows, cols, tiles, dataflow=dataflow, seed=seed, p_valid=p_valid, p_ready=p_ready
    )
    assert got == [ref_tile(p, x, w) for x, w in tiles]


# (rows, cols, pixels, out_ch, fan_in): scaled-down LeNet layers
CYCLE_SHAPES = {
    "conv-k9": (4, 4, 12, 8, 9),  # 3 x 2 tiles, fan-in longer than the rows
    "conv1-like": (8, 4, 16, 8, 3),  # fan-in shorter than the rows: drain-bound
    "linear": (1, 10, 1, 10, 40),  # one output pixel
}


@pytest.mark.parametrize("shape", CYCLE_SHAPES)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("name", ["bm8", "mac8"])
def test_array_cycle_model(name, dataflow, shape):
    """With no gaps and no back-pressure the simulator takes exactly the predicted cycles."""
    p = ARITH[name]
    rows, cols, pixels, out_ch, fan_in = CYCLE_SHAPES[shape]
    rng = np.random.default_rng(7)
    n_tiles = -(-pixels // rows) * -(-out_ch // cols)
    tiles = [_operands(p, rng, rows, cols, fan_in) for _ in range(n_tiles)]
    got, run, dut = rtl_array(p, rows, cols, tiles, dataflow=dataflow)
    assert got == [ref_tile(p, x, w) for x, w in tiles]
    pred = predict_cycles(
        rows, cols, pixels=pixels, out_ch=out_ch, fan_in=fan_in, dataflow=dataflow
    )
    assert run.cycles == pred == dut.predict_cycles(pixels=pixels, out_ch=out_ch, fan_in=fan_in)
    # first output row: `latency` cycles after the first tile's last beat
    assert run.out_cycles[0] - run.in_cycles[fan_in - 1] == dut.latency


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_array_zero_windows(dataflow):
    """BM: a window whose inputs are all zero codes is flagged, and reports M = 0."""
    p = PRESETS["bm8"]
    x = np.zeros((2, 5), dtype=np.int64)
    x[1, 3] = 7
    w = np.arange(10).reshape(2, 5) - 100
    got, _, _ = rtl_array(p, 2, 2, [(x, w)], dataflow=dataflow)
    assert got == [ref_tile(p, x, w)]
    assert got[0][0] == [(0, True), (0, True)]


def test_constructor_errors():
    with pytest.raises(ValueError, match="rows"):
        SystolicArray(PRESETS["bm8"], rows=0, cols=2)
    with pytest.raises(TypeError, match="params"):
        SystolicArray(object(), rows=1, cols=1)
    with pytest.raises(TypeError, match="MACParams"):
        MACPE(PRESETS["bm8"])
    with pytest.raises(ValueError, match="fan_in"):
        predict_cycles(4, 4, fan_in=0)
    with pytest.raises(ValueError, match="dataflow"):
        predict_cycles(4, 4, fan_in=1, dataflow="diagonal")
