# amaranth: UnusedElaboratable=no
"""The FC engine: its step order (a permutation of the fan-in), its cycle count, and each head
(``bm15``, MAC, ``lns``, ``bm2``) in Amaranth's simulator against :mod:`model.reference`,
exactly: random layers, the widest sums, saturated logits, zero inputs and empty branches."""

import zlib

import numpy as np
import pytest
from amaranth.hdl import unsigned
from amaranth.lib import data

from hw.blocks.fc import (
    EXP_LATENCY,
    REQUANT_LATENCY,
    FCEngine,
    fc_cycles,
    fc_step_order,
    head_acc_bits,
)
from hw.testing import fc_buffer_words
from model.params import PRESETS, BMParams, LayerSpec
from model.reference import (
    bm2_acc_bits,
    lns_acc_bits,
    ref_bm_layer,
    ref_exp,
    ref_log,
    ref_mac_layer,
)


@pytest.mark.parametrize("n_ch,n_pix,cols", [(16, 324, 16), (3, 5, 2), (5, 4, 4), (1, 7, 4)])
def test_step_order_is_a_permutation(n_ch, n_pix, cols):
    order = fc_step_order(n_ch, n_pix, cols)
    assert sorted(order.tolist()) == list(range(n_ch * n_pix))
    # consecutive steps are the channels of one pixel, as the buffer word holds them
    first = order[: min(cols, n_ch)]
    assert (first == np.arange(min(cols, n_ch)) * n_pix).all()


def test_fc_cycles_counts_the_fan_in():
    bm, mac = PRESETS["bm8"], PRESETS["mac8"]
    assert fc_cycles(bm, 5184, 10) - fc_cycles(bm, 5183, 10) == 1
    assert fc_cycles(bm, 100, 10) - fc_cycles(mac, 100, 10) == 2  # the exp unit
    for head in ("lns", "bm2"):
        assert fc_cycles(bm, 5184, 10, head) - fc_cycles(bm, 5183, 10, head) == 1
    # the paper LeNet's classifier
    assert [fc_cycles(bm, 5184, 10, h) for h in ("bm15", "lns", "bm2")] == [5205, 5203, 5203]
    with pytest.raises(ValueError, match="builds the heads"):
        fc_cycles(bm, 10, 2, "bm4")
    with pytest.raises(ValueError, match="needs BM params"):
        fc_cycles(mac, 10, 2, "lns")


def test_unit_latencies_match_the_cycle_model():
    from hw.blocks.logexp import ExpUnit
    from hw.blocks.requant import Requant

    p = PRESETS["bm8"]
    assert ExpUnit(p).latency == EXP_LATENCY
    assert Requant(p, sum_bits=40).latency == REQUANT_LATENCY


def test_head_widths_follow_the_reference():
    p = PRESETS["bm8"]
    spec = LayerSpec("linear", 5184, 10, relu=False, neuron="lns")
    assert head_acc_bits(p, 5184, 10, "lns") == lns_acc_bits(p, spec)
    assert head_acc_bits(p, 5184, 10, "bm2") == bm2_acc_bits(p, spec)


# -- the engine in the simulator ----------------------------------------------------------------
def word_layout(p):
    if isinstance(p, BMParams):
        return data.StructLayout({"x": unsigned(p.a_bits), "lx": unsigned(p.lx_bits)})
    return data.StructLayout({"x": unsigned(p.a_bits)})


def rtl_fc(dut, maps, *, p_ready=1.0, seed=0):
    """Run each ``(n_ch, n_pix)`` code map through ``dut``: write the buffer, pulse ``start``,
    take the logits. Returns (logits per map, cycles per map from ``start`` to the last logit
    taken, both included)."""
    from amaranth.sim import Simulator

    rng = np.random.default_rng(seed)
    logits, cycles = [], []

    async def testbench(ctx):
        for x in maps:
            for a, w in enumerate(fc_buffer_words(dut.params, x, dut.cols)):
                ctx.set(dut.wr_en, 1)
                ctx.set(dut.wr_addr, a)
                ctx.set(dut.wr_data.as_value(), w)
                await ctx.tick()
            ctx.set(dut.wr_en, 0)
            ctx.set(dut.start, 1)
            out, cycle, last = [], 0, None
            while len(out) < dut.n_out:
                ready = p_ready >= 1.0 or rng.random() < p_ready
                ctx.set(dut.o.ready, ready)
                if ready and ctx.get(dut.o.valid):
                    out.append(ctx.get(dut.o.payload))
                    last = cycle
                await ctx.tick()
                ctx.set(dut.start, 0)
                cycle += 1
                if cycle > 10 * dut.cycles + 1000:
                    raise TimeoutError(f"{len(out)} of {dut.n_out} logits after {cycle} cycles")
            ctx.set(dut.o.ready, 0)
            logits.append(out)
            cycles.append(last + 1)
            await ctx.tick()
            assert not ctx.get(dut.busy), "busy after the last logit"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return logits, cycles


def ref_fc(p, spec, x, t):
    """The reference logits of the layer ``spec`` on a ``(n_ch, n_pix)`` code map."""
    if isinstance(p, BMParams):
        return ref_bm_layer(p, spec, x.reshape(-1), t["w"], t["bias"],
                            sign=t.get("sign")).tolist()
    return ref_mac_layer(p, spec, x.reshape(-1), t["w"], t["bias"]).tolist()


def make_engine(p, spec, t, *, n_ch, cols):
    return FCEngine(p, word_layout(p), n_ch=n_ch, n_pix=spec.fan_in // n_ch, cols=cols,
                    weight=t["w"], bias=t["bias"], c_shift=spec.c_shift,
                    out_shift=spec.out_shift, neuron=spec.neuron, sign=t.get("sign"))


def random_layer(p, rng, neuron, n_ch, n_pix, n_out, *, out_shift=4):
    c_shift = 2 if neuron == "bm15" and isinstance(p, BMParams) else 0
    spec = LayerSpec("linear", n_ch * n_pix, n_out, relu=False, neuron=neuron,
                     out_shift=out_shift, c_shift=c_shift)
    if isinstance(p, BMParams):
        t = {"w": rng.integers(p.w_log_min, p.w_log_max + 1, size=spec.weight_shape)}
    else:
        t = {"w": rng.integers(p.w_min, p.w_max + 1, size=spec.weight_shape)}
    t["bias"] = rng.integers(-(1 << (p.bias_bits - 1)), 1 << (p.bias_bits - 1), size=n_out)
    if spec.signed_weights:
        t["sign"] = rng.integers(0, 2, size=spec.weight_shape)
    return spec, t


def check(p, spec, t, maps, *, n_ch, cols, p_ready=1.0):
    dut = make_engine(p, spec, t, n_ch=n_ch, cols=cols)
    got, cycles = rtl_fc(dut, maps, p_ready=p_ready)
    for n, (x, g) in enumerate(zip(maps, got, strict=True)):
        want = ref_fc(p, spec, x, t)
        assert g == want, f"map {n}: logits {g} != reference {want}"
    if p_ready >= 1.0:
        assert cycles == [fc_cycles(p, spec.fan_in, spec.out_ch, spec.neuron)] * len(maps)
    return got


HEADS = [("bm8", "lns"), ("bm8", "bm2"), ("bm4", "lns"), ("bm4", "bm2"), ("bm8", "bm15"),
         ("mac8", "bm15")]


@pytest.mark.parametrize("preset,neuron", HEADS)
@pytest.mark.parametrize("n_ch,n_pix,cols", [(5, 9, 4), (3, 4, 3)])
def test_fc_random_layers(preset, neuron, n_ch, n_pix, cols):
    """Random layers (weights over the whole code range, random signs and biases), random maps
    with zero codes; every logit equal to the reference, cycles equal to the model."""
    p = PRESETS[preset]
    rng = np.random.default_rng(zlib.crc32(f"{preset}-{neuron}-{n_ch}".encode()))
    spec, t = random_layer(p, rng, neuron, n_ch, n_pix, 5,
                           out_shift=int(rng.integers(0, 12)))
    maps = [rng.integers(0, p.a_max + 1, size=(n_ch, n_pix)) for _ in range(3)]
    maps[0][rng.random(maps[0].shape) < 0.5] = 0  # zero flags
    check(p, spec, t, maps, n_ch=n_ch, cols=cols)


@pytest.mark.parametrize("neuron", ["lns", "bm2"])
def test_fc_backpressure(neuron):
    p = PRESETS["bm8"]
    rng = np.random.default_rng(3)
    spec, t = random_layer(p, rng, neuron, 4, 6, 3)
    maps = [rng.integers(0, 256, size=(4, 6)) for _ in range(2)]
    check(p, spec, t, maps, n_ch=4, cols=4, p_ready=0.3)


def _largest_term(p):
    """The largest ``EXP(Lx + Lw)``: the largest code's log plus the largest weight code."""
    return int(ref_exp(p, int(ref_log(p, p.a_max)[0]) + p.w_log_max))


# exp_bits 16: the largest term saturates to exp_max, so that every term of the widest sum is
# 2**exp_bits - 1 and the accumulator's bound lns_acc_bits is met exactly; 20-bit logits, so
# that a 40-input sum saturates them
SAT = BMParams(exp_bits=16, bias_bits=16, acc_bits=20)


@pytest.mark.parametrize("p", [SAT, PRESETS["bm8"]], ids=["exp16", "bm8"])
@pytest.mark.parametrize("negative", [False, True])
def test_lns_widest_sum(p, negative):
    """Every term at its largest, all of one sign, with the extreme bias of that sign: the
    accumulator holds ``fan_in * largest + |bias|`` exactly (``out_shift`` brings it into the
    logit range), and with ``out_shift = 0`` the logit saturates to that sign's limit."""
    n_ch, n_pix, n_out = 4, 10, 2
    fan_in = n_ch * n_pix
    big = _largest_term(p)
    if p is SAT:
        assert big == p.exp_max
    s = int(negative)
    bmax = -(1 << (p.bias_bits - 1)) if negative else (1 << (p.bias_bits - 1)) - 1
    t = {"w": np.full((n_out, fan_in), p.w_log_max), "sign": np.full((n_out, fan_in), s),
         "bias": np.array([bmax, 0])}
    spec = LayerSpec("linear", fan_in, n_out, relu=False, neuron="lns")
    width = lns_acc_bits(p, spec)
    total = (-1) ** s * fan_in * big + bmax
    assert abs(total) < 1 << (width - 1)
    shift = max(0, width - p.acc_bits + 1)
    x = np.full((n_ch, n_pix), p.a_max)
    got = check(p, LayerSpec("linear", fan_in, n_out, relu=False, neuron="lns", out_shift=shift),
                t, [x], n_ch=n_ch, cols=4)
    assert got[0][0] == (total + (1 << shift - 1 if shift else 0)) >> shift
    # no shift: the logit saturates at the signed acc_bits limit of the sum's sign
    got = check(p, spec, t, [x], n_ch=n_ch, cols=4)
    lim = 1 << (p.acc_bits - 1)
    assert got[0][0] == (-lim if negative else lim - 1)


def test_lns_widest_sum_paper_fan_in():
    """The paper LeNet's classifier width (5,184 inputs on a 16-channel map): every term
    saturated and positive, in a 2-output engine."""
    p = SAT
    n_ch, n_pix = 16, 324
    fan_in = n_ch * n_pix
    spec = LayerSpec("linear", fan_in, 2, relu=False, neuron="lns")
    width = lns_acc_bits(p, spec)
    shift = width - p.acc_bits + 1
    spec = LayerSpec("linear", fan_in, 2, relu=False, neuron="lns", out_shift=shift)
    sign = np.zeros((2, fan_in), dtype=np.int64)
    sign[1] = 1
    t = {"w": np.full((2, fan_in), p.w_log_max), "sign": sign, "bias": np.array([5, -5])}
    got = check(p, spec, t, [np.full((n_ch, n_pix), p.a_max)], n_ch=n_ch, cols=16)
    rnd = 1 << (shift - 1)
    assert got[0] == [(fan_in * p.exp_max + 5 + rnd) >> shift,
                      (-fan_in * p.exp_max - 5 + rnd) >> shift]


@pytest.mark.parametrize("negative", [False, True])
def test_bm2_saturated_logit(negative):
    """``bm2``: the largest term on one side, the other side empty, the extreme bias: the
    exact sum, then the saturated logit."""
    p = SAT
    n_ch, n_pix = 2, 5
    fan_in = n_ch * n_pix
    s = int(negative)
    bmax = -(1 << (p.bias_bits - 1)) if negative else (1 << (p.bias_bits - 1)) - 1
    t = {"w": np.full((1, fan_in), p.w_log_max), "sign": np.full((1, fan_in), s),
         "bias": np.array([bmax])}
    x = np.full((n_ch, n_pix), p.a_max)
    total = (-1) ** s * p.exp_max + bmax
    got = check(p, LayerSpec("linear", fan_in, 1, relu=False, neuron="bm2"), t, [x],
                n_ch=n_ch, cols=2)
    assert got[0][0] == total  # fits acc_bits: no saturation
    tiny = BMParams(exp_bits=16, bias_bits=16, acc_bits=12)
    got = check(tiny, LayerSpec("linear", fan_in, 1, relu=False, neuron="bm2"), t, [x],
                n_ch=n_ch, cols=2)
    assert got[0][0] == (-(1 << 11) if negative else (1 << 11) - 1)


@pytest.mark.parametrize("neuron", ["lns", "bm2"])
def test_zero_inputs_and_empty_branches(neuron):
    """Output 0 has only positive weights (bm2: ``M-`` empty), output 1 only negative (``M+``
    empty), outputs 2 and 3 mixed; map 0 is all zero codes (every term flagged: ``lns`` sums
    nothing, every ``bm2`` branch is empty), map 1 zero on every positive weight's inputs."""
    p = PRESETS["bm8"]
    rng = np.random.default_rng(17)
    n_ch, n_pix, n_out = 3, 6, 4
    fan_in = n_ch * n_pix
    sign = rng.integers(0, 2, size=(n_out, fan_in))
    sign[0], sign[1] = 0, 1
    sign[2, : fan_in // 2], sign[2, fan_in // 2 :] = 0, 1
    t = {"w": rng.integers(p.w_log_min, p.w_log_max + 1, size=(n_out, fan_in)), "sign": sign,
         "bias": rng.integers(-1000, 1000, size=n_out)}
    spec = LayerSpec("linear", fan_in, n_out, relu=False, neuron=neuron, out_shift=3)
    x1 = rng.integers(1, 256, size=(n_ch, n_pix))
    x1.reshape(-1)[: fan_in // 2] = 0  # output 2's positive branch sees only zero codes
    maps = [np.zeros((n_ch, n_pix), dtype=np.int64), x1]
    got = check(p, spec, t, maps, n_ch=n_ch, cols=2)
    # all inputs flagged: the logits are the requantized biases
    assert got[0] == [(int(b) + 4) >> 3 for b in t["bias"]]


def test_engine_checks():
    p = PRESETS["bm8"]
    w = word_layout(p)
    kw = {"n_ch": 2, "n_pix": 2, "cols": 2, "weight": np.zeros((1, 4)), "bias": [0],
          "out_shift": 0}
    with pytest.raises(ValueError, match="builds the heads"):
        FCEngine(p, w, c_shift=0, neuron="bm4", **kw)
    with pytest.raises(ValueError, match="needs a sign per weight"):
        FCEngine(p, w, c_shift=0, neuron="lns", **kw)
    with pytest.raises(ValueError, match="has no c_shift"):
        FCEngine(p, w, c_shift=2, neuron="bm2", sign=np.zeros((1, 4)), **kw)
    with pytest.raises(ValueError, match="signs of 0 or 1"):
        FCEngine(p, w, c_shift=0, neuron="bm2", sign=np.full((1, 4), 2), **kw)
    with pytest.raises(ValueError, match="needs BM params"):
        FCEngine(PRESETS["mac8"], word_layout(PRESETS["mac8"]), c_shift=0, neuron="lns",
                 sign=np.zeros((1, 4)), **kw)
