"""RTL: the FC engine alone (each classifier head) in Icarus or Verilator (``SIM``): random
layers and maps, every logit against :mod:`model.reference`, exactly, and the cycles against
:func:`hw.blocks.fc.fc_cycles`."""

import zlib

import numpy as np
import pytest
from amaranth.hdl import unsigned
from amaranth.lib import data

from hw.blocks.fc import FCEngine, fc_cycles
from hw.testing import fc_buffer_words
from model.params import PRESETS, BMParams, LayerSpec
from model.reference import ref_bm_layer, ref_mac_layer
from sim.runner import run_cocotb

pytestmark = pytest.mark.rtl


def _layer(p, neuron, n_ch, n_pix, n_out, seed):
    """A random layer over the whole code range, its engine and four maps (one all zero)."""
    rng = np.random.default_rng(seed)
    bm = isinstance(p, BMParams)
    spec = LayerSpec("linear", n_ch * n_pix, n_out, relu=False, neuron=neuron,
                     c_shift=2 if bm and neuron == "bm15" else 0,
                     out_shift=int(rng.integers(0, 10)))
    lo, hi = (p.w_log_min, p.w_log_max) if bm else (p.w_min, p.w_max)
    t = {"w": rng.integers(lo, hi + 1, size=spec.weight_shape),
         "bias": rng.integers(-(1 << (p.bias_bits - 1)), 1 << (p.bias_bits - 1), size=n_out)}
    if spec.signed_weights:
        t["sign"] = rng.integers(0, 2, size=spec.weight_shape)
    maps = [rng.integers(0, p.a_max + 1, size=(n_ch, n_pix)) for _ in range(4)]
    maps[1][rng.random(maps[1].shape) < 0.5] = 0  # zero flags
    maps[2][:] = 0  # every input flagged: lns sums nothing, bm2's branches are empty
    maps[3][:] = p.a_max  # the largest terms
    word = data.StructLayout({"x": unsigned(p.a_bits), "lx": unsigned(p.lx_bits)} if bm
                             else {"x": unsigned(p.a_bits)})
    dut = FCEngine(p, word, n_ch=n_ch, n_pix=n_pix, cols=4, weight=t["w"], bias=t["bias"],
                   c_shift=spec.c_shift, out_shift=spec.out_shift, neuron=neuron,
                   sign=t.get("sign"))
    if bm:
        want = [ref_bm_layer(p, spec, x.reshape(-1), t["w"], t["bias"], sign=t.get("sign"))
                for x in maps]
    else:
        want = [ref_mac_layer(p, spec, x.reshape(-1), t["w"], t["bias"]) for x in maps]
    return spec, dut, maps, [w.tolist() for w in want]


@pytest.mark.parametrize("backpressure", [0.0, 0.4])
@pytest.mark.parametrize("preset,neuron", [("bm8", "lns"), ("bm8", "bm2"), ("bm4", "lns"),
                                           ("bm4", "bm2"), ("bm8", "bm15"), ("mac8", "bm15")])
def test_fc_engine(preset, neuron, backpressure):
    p = PRESETS[preset]
    seed = zlib.crc32(f"{preset}-{neuron}".encode())
    spec, dut, maps, want = _layer(p, neuron, n_ch=6, n_pix=9, n_out=5, seed=seed)
    cfg = {"maps": [fc_buffer_words(p, x, dut.cols) for x in maps], "expected": want,
           "cycles": fc_cycles(p, spec.fan_in, spec.out_ch, neuron),
           "backpressure": backpressure}
    run_cocotb(dut, toplevel="fc_engine", module="tb_fc", params=cfg,
               tag=f"{preset}-{neuron}-{backpressure}")
